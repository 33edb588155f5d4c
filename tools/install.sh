#!/usr/bin/env bash
# Install everything scbridge needs on a fresh Debian / Ubuntu machine:
#   R and the R packages from the distribution (CRAN is not needed),
#   a Python virtual environment in .venv with scbridge and its extras (editable).
# Re-running it is cheap: apt and pip skip what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

# R 4.2+ with Seurat, SeuratObject, SingleCellExperiment and what the R package and tests use.
R_PACKAGES=(
  r-base-core r-base-dev
  r-cran-matrix r-cran-seuratobject r-cran-seurat
  r-bioc-singlecellexperiment r-bioc-delayedarray r-bioc-hdf5array r-bioc-singler
  r-cran-testthat r-cran-reticulate r-cran-httr2 r-cran-jsonlite r-cran-roxygen2
  r-cran-processx r-cran-callr r-cran-cli r-cran-withr
  # the R package's vignette, built during R CMD check
  r-cran-knitr r-cran-rmarkdown pandoc
)
# The R package's python engine (reticulate) loads libpython: python3-dev brings the shared
# library for the distribution's Python (a pyenv / python.org build ships its own).
PYTHON_PACKAGES=(python3 python3-venv python3-dev)
# The workspace's browser tests drive Debian's Chromium with Playwright (no browser download).
BROWSER_PACKAGES=(chromium)
echo "scbridge install: apt packages (R ${#R_PACKAGES[@]} packages, Python headers and libpython, chromium)"
$SUDO apt-get update -q
$SUDO apt-get install -y -q "${R_PACKAGES[@]}" "${PYTHON_PACKAGES[@]}" "${BROWSER_PACKAGES[@]}" >/dev/null

# The R package's Arrow transport needs the R package nanoarrow (>= 0.6.0) or arrow, which
# Debian does not package: nanoarrow is tried from CRAN, quietly. Where CRAN cannot be reached
# the R package goes on without it (.rds for the cli engine, JSON for the http engine).
echo "scbridge install: R package nanoarrow from CRAN (optional: the R package's Arrow transport)"
$SUDO Rscript -e '
  if (requireNamespace("nanoarrow", quietly = TRUE) &&
      utils::packageVersion("nanoarrow") >= "0.6.0") quit(status = 0)
  repos <- getOption("repos")
  if (is.null(repos) || !length(repos) || "@CRAN@" %in% repos) {
    repos <- c(CRAN = "https://cloud.r-project.org")
  }
  options(timeout = 60)
  suppressWarnings(try(utils::install.packages("nanoarrow", repos = repos, quiet = TRUE),
                       silent = TRUE))
' >/dev/null 2>&1 || true

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  # Not 3.11+ with venv / ensurepip: use the distribution's python3 (installed above).
  PYTHON=/usr/bin/python3
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
echo "scbridge install: Python packages into .venv"
.venv/bin/python -m pip install -q --upgrade pip
# numpy < 2 and pyarrow < 22 are pinned in pyproject.toml: Debian's reticulate 1.28 needs numpy < 2.
.venv/bin/python -m pip install -q -e ".[all,peers]"
# numba compiles the 2-D layout's kernels once and keeps them on disk: do it now, not in a
# user's first report.
.venv/bin/python -c "from bridge._layout import warm_kernels; warm_kernels()"
.venv/bin/python - <<'PY'
import numpy, pyarrow, rpy2, bridge
print(f"scbridge install: scbridge {bridge.__version__}, numpy {numpy.__version__}, "
      f"pyarrow {pyarrow.__version__}, rpy2 {rpy2.__version__}")
PY

# The R package, into R's site library, for library(scbridge) in any R session.
echo "scbridge install: R package scbridge"
$SUDO R CMD INSTALL --no-test-load r-package >/dev/null 2>.venv/r-install.log || {
  cat .venv/r-install.log >&2; echo "scbridge install: R CMD INSTALL r-package failed" >&2; exit 1; }
echo "scbridge install: the R package will use: $(Rscript -e 'cat(scbridge:::arrow_transport_summary())' 2>/dev/null || echo "unknown (library(scbridge) failed)")"
echo "scbridge install: done. In R, point the package at this Python core with"
echo "  options(scbridge.python = \"$(pwd)/.venv/bin/python\", scbridge.cli = \"$(pwd)/.venv/bin/scbridge\")"

# A 30,000-cell Seurat object annotated from R through each engine of the scbridge R package,
# printed side by side with the python engine (and the Python core alone: bridge.call_cells on
# the same matrix, already in Python memory, timed in the same process).
# Targets: the cli engine <= 2x the python engine (issue 13); the python engine <= 1.5x the
# core alone.
#
# --data FILE takes the cells of a Seurat .rds (e.g. ../shared/data/sorted_pbmc_seurat.rds,
# real PBMCs) instead of simulated ones, repeated (renamed) up to --cells.
#
# Usage (from the repository root; the R package must be installed, e.g.
#   R CMD INSTALL -l /tmp/scb_lib r-package):
#   SCBRIDGE_PYTHON=.venv/bin/python Rscript benchmarks/r_annotate.R [--cells 30000]
#     [--genes 2000] [--repeats 5] [--lib /tmp/scb_lib] [--small] [--data FILE]
# The core, python and cli runs are interleaved (each repeat runs all three), so they share the
# load of a busy machine; each row gives the best and the median wall time and the CPU time
# (R and its subprocesses). The cli engine is timed as it runs by default (Arrow CSR, written
# by nanoarrow / arrow where installed, else by the package's own writer, to the session's
# warm `scbridge worker`), with a process per call (options(scbridge.cli_worker = FALSE)), and
# with .rds.
# The http engine is timed per transport against `scbridge serve` on loopback. The calls of
# every row are compared with the python engine's.
`%||%` <- function(x, y) if (is.null(x)) y else x
suppressPackageStartupMessages({
  args <- commandArgs(trailingOnly = TRUE)
  opt <- function(name, default) {
    at <- match(paste0("--", name), args)
    if (is.na(at)) default else args[[at + 1L]]
  }
  lib <- opt("lib", "")
  if (nzchar(lib)) .libPaths(c(lib, .libPaths()))
  library(Matrix)
  library(scbridge)
})
small <- "--small" %in% args
n_cells <- as.integer(opt("cells", if (small) 5000 else 30000))
n_genes <- as.integer(opt("genes", 2000))
repeats <- as.integer(opt("repeats", if (small) 2 else 5))
python <- Sys.getenv("SCBRIDGE_PYTHON", ".venv/bin/python")
# Absolute, but not through symlinks: a venv python is a symlink to the base interpreter.
python <- file.path(normalizePath(dirname(python), mustWork = TRUE), basename(python))
Sys.setenv(RETICULATE_PYTHON = python)
options(scbridge.cli = file.path(dirname(python), "scbridge"), scbridge.verbose = FALSE)

# -- data: real cells repeated (--data), or marker genes of the built-in model + filler genes
# over four simulated blood cell types -----------------------------------------------------
data_file <- opt("data", "")
set.seed(42)
if (nzchar(data_file)) {
  source_counts <- readRDS(data_file)@assays$RNA@counts
  copies <- ceiling(n_cells / ncol(source_counts))
  counts <- do.call(cbind, lapply(seq_len(copies), function(k) {
    x <- source_counts
    colnames(x) <- paste0(colnames(x), "_", k)
    x
  }))[, seq_len(n_cells)]
  n_genes <- nrow(counts)
} else {
  marker_sets <- list(
    T = c("CD3D", "CD3E", "IL7R", "CD2"), B = c("MS4A1", "CD79A", "CD79B", "CD19"),
    NK = c("NKG7", "GNLY", "KLRD1", "PRF1"), Mono = c("LYZ", "CD14", "S100A8", "S100A9"))
  markers <- c(unlist(marker_sets, use.names = FALSE), "PTPRC")
  model_genes <- readLines("r-package/tests/testthat/fixtures/model_genes.txt")
  genes <- unique(c(markers, model_genes, sprintf("FILLER%05d", seq_len(n_genes))))[seq_len(n_genes)]
  types <- sample(names(marker_sets), n_cells, replace = TRUE)
  background <- rsparsematrix(n_genes, n_cells, density = 0.05,
                              rand.x = function(n) as.double(rpois(n, 1) + 1))
  rows <- unlist(lapply(types, function(t) match(c(marker_sets[[t]], "PTPRC"), genes)))
  cols <- rep(seq_len(n_cells), each = 5L)
  strong <- sparseMatrix(i = rows, j = cols, x = as.double(rpois(length(rows), 12) + 3),
                         dims = c(n_genes, n_cells))
  counts <- as(background + strong, "CsparseMatrix")
  dimnames(counts) <- list(genes, sprintf("cell%06d", seq_len(n_cells)))
}
seu <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = counts))
cat(sprintf("Seurat object: %s cells x %s genes, %s non-zeros (%s)\n",
            format(n_cells, big.mark = ","), format(n_genes, big.mark = ","),
            format(length(counts@x), big.mark = ","),
            if (nzchar(data_file)) sprintf("the cells of %s, repeated", data_file) else "simulated"))

# CPU seconds the cli engine's worker (a live subprocess, which proc.time() does not count)
# has used so far; 0 when there is none.
worker_cpu <- function() {
  worker <- scbridge:::the$cli_worker
  if (is.null(worker) || !worker$process$is_alive()) return(0)
  sum(worker$process$get_cpu_times()[c("user", "system")])
}

# Wall and CPU seconds of f() (CPU: this R process, its Python threads, its subprocesses and
# the cli engine's worker).
timed <- function(f) {
  gc()
  before <- proc.time()
  worker_before <- worker_cpu()
  f()
  spent <- proc.time() - before
  worker_spent <- max(0, worker_cpu() - worker_before)
  c(wall = spent[["elapsed"]],
    cpu = sum(spent[c("user.self", "sys.self")]) + sum(spent[c("user.child", "sys.child")],
                                                       na.rm = TRUE) + worker_spent)
}

# -- the three local paths, interleaved ----------------------------------------------------
helper <- scbridge:::python_helper()
core <- reticulate::import("bridge")
cm <- do.call(helper$`_matrix`, scbridge:::python_matrix_args(counts, "benchmark"))
arrow_writer <- scbridge:::arrow_backend() %||% "base R"
runs <- list(
  core = function() core$call_cells(cm, model = "markers", chunk_size = 50000L, progress = FALSE),
  python = function() annotate_cells(seu, engine = "python", overwrite = TRUE),
  cli = function() {
    options(scbridge.cli_transport = "arrow")
    annotate_cells(seu, engine = "cli", overwrite = TRUE)
  },
  cli_once = function() {
    options(scbridge.cli_transport = "arrow", scbridge.cli_worker = FALSE)
    on.exit(options(scbridge.cli_worker = NULL))
    annotate_cells(seu, engine = "cli", overwrite = TRUE)
  },
  cli_rds = function() {
    options(scbridge.cli_transport = "rds")
    on.exit(options(scbridge.cli_transport = NULL))
    annotate_cells(seu, engine = "cli", overwrite = TRUE)
  })
for (f in runs[c("core", "python", "cli")]) invisible(f())  # warm: model load, first imports
results <- list()
times <- lapply(runs, function(f) matrix(numeric(0), ncol = 2, dimnames = list(NULL, c("wall", "cpu"))))
for (r in seq_len(repeats)) {
  for (name in names(runs)) {
    if (name %in% c("cli_once", "cli_rds") && r > 2L) next  # the slow paths: two runs each
    times[[name]] <- rbind(times[[name]], timed(function() results[[name]] <<- runs[[name]]()))
  }
}
options(scbridge.cli_transport = NULL)
ref <- calls(results$python)

# -- http engine against scbridge serve on loopback ------------------------------------------
keyfile <- tempfile()
writeLines("bench-key", keyfile)
port <- sample(20000:45000, 1L)
server <- processx::process$new(python, c("-m", "bridge", "serve", "--host", "127.0.0.1",
                                          "--port", port, "--api-keys", keyfile),
                                stdout = "|", stderr = "|", cleanup = TRUE,
                                env = scbridge:::subprocess_env())
endpoint <- sprintf("http://127.0.0.1:%d", port)
for (i in 1:300) {
  up <- tryCatch(httr2::resp_status(httr2::req_perform(
    httr2::request(paste0(endpoint, "/healthz")))) == 200, error = function(e) FALSE)
  if (up) break
  Sys.sleep(0.2)
}
http_transports <- c("json", if (!is.null(scbridge:::arrow_backend())) "arrow")
for (transport in http_transports) {
  options(scbridge.http_transport = transport)
  name <- paste0("http_", transport)
  http_once <- function() {
    annotate_cells(seu, engine = "http", endpoint = endpoint, api_key = "bench-key",
                   overwrite = TRUE)
  }
  invisible(http_once())  # warm the server's model
  times[[name]] <- rbind(timed(function() results[[name]] <<- http_once()),
                         timed(function() results[[name]] <<- http_once()))
}
options(scbridge.http_transport = NULL)
invisible(server$kill())

same <- function(obj) {
  if (!inherits(obj, "Seurat")) return(NA)
  a <- calls(obj)
  attr(a, "provenance") <- NULL
  b <- ref
  attr(b, "provenance") <- NULL
  if (identical(a, b)) return(TRUE)
  for (column in names(b)) {
    differ <- which(!mapply(identical, a[[column]], b[[column]]))
    if (length(differ)) {
      cat(sprintf("  %s differs in %d cells, e.g. cell %s\n", column, length(differ),
                  b$cell[[differ[[1]]]]))
    }
  }
  FALSE
}

labels <- c(
  core = "Python core alone (call_cells, matrix already in Python)",
  python = "R python engine (reticulate), Seurat -> meta.data",
  cli = sprintf("R cli engine (Arrow CSR by %s -> the session's scbridge worker -> Arrow calls)",
                arrow_writer),
  cli_once = sprintf("R cli engine, a process per call (Arrow CSR by %s, scbridge.cli_worker = FALSE)",
                     arrow_writer),
  cli_rds = "R cli engine (.rds -> the worker, reading it through rpy2 -> Arrow calls)",
  http_json = "R http engine (JSON, scbridge serve on loopback)",
  http_arrow = sprintf("R http engine (Arrow stream by %s, scbridge serve on loopback)",
                       arrow_writer))
shown <- intersect(names(labels), names(times))
best <- function(name, what = "wall") min(times[[name]][, what])
middle <- function(name) stats::median(times[[name]][, "wall"])
rows <- data.frame(
  path = unname(labels[shown]),
  runs = vapply(shown, function(n) nrow(times[[n]]), integer(1)),
  best_s = vapply(shown, best, double(1)),
  median_s = vapply(shown, middle, double(1)),
  cpu_s = vapply(shown, best, double(1), what = "cpu"),
  identical_calls = vapply(shown, function(n) same(results[[n]]), logical(1)),
  row.names = NULL)
rows$x_python_best <- rows$best_s / best("python")
rows$x_python_median <- rows$median_s / middle("python")
rows$x_python_cpu <- rows$cpu_s / best("python", "cpu")
cat(sprintf("%d interleaved repeats (core, python, cli); the other cli paths and http: 2 runs each\n",
            repeats))
print(format(rows, digits = 3), row.names = FALSE)
ratio <- c(best = best("cli") / best("python"), median = middle("cli") / middle("python"),
           cpu = best("cli", "cpu") / best("python", "cpu"))
cat(sprintf("\ncli engine vs python engine on %s cells: %.2fx (best runs), %.2fx (medians), %.2fx (CPU); target <= 2x: %s\n",
            format(n_cells, big.mark = ","), ratio[["best"]], ratio[["median"]], ratio[["cpu"]],
            if (min(ratio[c("best", "median")]) <= 2) "met" else "NOT met"))
cat(sprintf("python engine vs core alone: %.2fx (best runs), %.2fx (medians); target <= 1.5x: %s\n",
            best("python") / best("core"), middle("python") / middle("core"),
            if (best("python") / best("core") <= 1.5) "met" else "NOT met"))

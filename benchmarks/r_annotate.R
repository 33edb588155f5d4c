# A 50,000-cell Seurat object annotated from R through each engine of the scbridge R package,
# printed beside the Python core alone (bridge.call_cells on the same matrix, already
# in Python memory, timed in the same process). Target: the python engine adds <= 1.5x.
#
# Usage (from the repository root; the R package must be installed, e.g.
#   R CMD INSTALL -l /tmp/scb_lib r-package):
#   SCBRIDGE_PYTHON=.venv/bin/python Rscript benchmarks/r_annotate.R [--cells 50000]
#     [--genes 2000] [--repeats 5] [--lib /tmp/scb_lib] [--small]
# The cli and http engines are timed per transport: .rds / JSON always, and Arrow (the rows
# name the backend) whenever the R package nanoarrow or arrow is installed (e.g. in a library
# on R_LIBS); the calls of every row are compared with the python engine's.
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
n_cells <- as.integer(opt("cells", if (small) 5000 else 50000))
n_genes <- as.integer(opt("genes", 2000))
repeats <- as.integer(opt("repeats", if (small) 2 else 5))
python <- Sys.getenv("SCBRIDGE_PYTHON", ".venv/bin/python")
# Absolute, but not through symlinks: a venv python is a symlink to the base interpreter.
python <- file.path(normalizePath(dirname(python), mustWork = TRUE), basename(python))
Sys.setenv(RETICULATE_PYTHON = python)
options(scbridge.cli = file.path(dirname(python), "scbridge"))

# -- data: marker genes of the built-in model + filler genes, four blood cell types ----------
set.seed(42)
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
seu <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = counts))
cat(sprintf("Seurat object: %s cells x %s genes, %s non-zeros\n", format(n_cells, big.mark = ","),
            format(n_genes, big.mark = ","), format(length(counts@x), big.mark = ",")))

best_of <- function(f, n = repeats) {
  times <- vapply(seq_len(n), function(i) {
    gc()
    system.time(f())[["elapsed"]]
  }, double(1))
  min(times)
}

# -- Python core alone, on the matrix already in Python (no R conversion, no results back) ----
helper <- scbridge:::python_helper()
core <- reticulate::import("bridge")
cm <- do.call(helper$`_matrix`, scbridge:::python_matrix_args(counts, "benchmark"))
core_once <- function() core$call_cells(cm, model = "markers", chunk_size = 50000L, progress = FALSE)
python_once <- function() annotate_cells(seu, engine = "python", overwrite = TRUE)
invisible(core_once())  # warm: model load, first-call imports
invisible(python_once())

# -- python engine, end to end from the Seurat object to its meta.data ----------------------
# Interleaved with the core runs, so both see the same load on a shared machine.
timed <- function(f) {
  gc()
  system.time(f())[["elapsed"]]
}
core_times <- python_times <- numeric(0)
for (r in seq_len(repeats + 2L)) {
  core_times <- c(core_times, timed(core_once))
  python_times <- c(python_times, timed(python_once))
}
t_core <- min(core_times)
t_python <- min(python_times)
ref <- calls(annotate_cells(seu, engine = "python"))

# The python engine's own work, part by part (each best of `repeats`): less exposed to the
# load of a shared machine than the difference of two end-to-end timings.
table_py <- core_once()
found <- scbridge:::expression_matrix(seu)
parts <- c(
  `matrix out of the Seurat object` = best_of(function() scbridge:::expression_matrix(seu)),
  `slots to Python + CellMatrix` = best_of(function() {
    do.call(helper$`_matrix`, scbridge:::python_matrix_args(found$matrix, found$source))
  }),
  `calls back to R` = best_of(function() {
    scbridge:::calls_from_columns(helper$calls_columns(table_py), colnames(counts))
  }),
  `columns + calls into the object` = best_of(function() {
    out <- scbridge:::add_cell_columns(seu, list(a = ref$label, b = ref$confidence,
                                                 c = ref$ontology_id), TRUE)
    scbridge:::store_results(out, "cell_type", list(calls = ref))
  }))

# -- cli engine, per transport: .rds always, Arrow CSR when nanoarrow or arrow is installed ----
arrow_backend <- scbridge:::arrow_backend()
arrow_label <- if (is.null(arrow_backend)) NULL else sprintf("Arrow via %s", arrow_backend)
cli_transports <- c("rds", if (!is.null(arrow_backend)) "arrow")
cli_results <- list()
t_cli <- vapply(cli_transports, function(transport) {
  options(scbridge.cli_transport = transport)
  best_of(function() {
    cli_results[[transport]] <<- annotate_cells(seu, engine = "cli", overwrite = TRUE)
  }, n = 2L)
}, double(1))
options(scbridge.cli_transport = NULL)
if (is.null(arrow_backend)) {
  cat(sprintf("no Arrow rows: %s\n", scbridge:::arrow_backend_missing()))
}

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
http_transports <- c("json", if (!is.null(arrow_backend)) "arrow")
http_results <- list()
t_http <- vapply(http_transports, function(transport) {
  options(scbridge.http_transport = transport)
  http_once <- function() {
    http_results[[transport]] <<- annotate_cells(seu, engine = "http", endpoint = endpoint,
                                                 api_key = "bench-key", overwrite = TRUE)
  }
  invisible(http_once())  # warm the server's model
  best_of(http_once, n = 2L)
}, double(1))
options(scbridge.http_transport = NULL)
invisible(server$kill())

same <- function(obj) {
  a <- calls(obj)
  attr(a, "provenance") <- NULL
  b <- ref
  attr(b, "provenance") <- NULL
  if (identical(a, b)) return(TRUE)
  for (column in names(b)) {
    differ <- which(!mapply(identical, a[[column]], b[[column]]))
    if (length(differ)) {
      cat(sprintf("  %s differs in %d cells, e.g. cell %s:\n", column, length(differ),
                  b$cell[[differ[[1]]]]))
      utils::str(list(this = a[[column]][[differ[[1]]]], python = b[[column]][[differ[[1]]]]))
    }
  }
  FALSE
}

cli_paths <- c(rds = "R cli engine (.rds + subprocess + .json)",
               arrow = sprintf("R cli engine (%s file + subprocess + .json)", arrow_label))
http_paths <- c(json = "R http engine (JSON, scbridge serve on loopback)",
                arrow = sprintf("R http engine (%s stream, scbridge serve on loopback)", arrow_label))
rows <- data.frame(
  path = c("Python core alone (call_cells, matrix already in Python)",
           "R python engine (reticulate), Seurat -> meta.data",
           unname(cli_paths[cli_transports]), unname(http_paths[http_transports])),
  seconds = c(t_core, t_python, t_cli, t_http),
  identical_calls = c(NA, TRUE, vapply(cli_results[cli_transports], same, logical(1)),
                      vapply(http_results[http_transports], same, logical(1))))
rows$ratio_vs_core <- rows$seconds / t_core
cat(sprintf("best of %d interleaved runs for core and python engine (medians %.2f s and %.2f s); cli / http best of %d\n",
            repeats + 2L, stats::median(core_times), stats::median(python_times), 2L))
print(format(rows, digits = 3), row.names = FALSE)
cat("\npython engine's own work beside the core, by part (seconds):\n")
print(round(parts, 3))
by_parts <- (t_core + sum(parts)) / t_core
cat(sprintf("\npython engine vs core: %.2fx end to end (best runs), %.2fx of the medians, %.2fx by parts (core + %.3f s); target <= 1.5x: %s\n",
            t_python / t_core, stats::median(python_times) / stats::median(core_times), by_parts,
            sum(parts), if (min(t_python / t_core, by_parts) <= 1.5) "met" else "NOT met"))

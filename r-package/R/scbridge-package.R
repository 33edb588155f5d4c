#' scbridge: cell-type annotation for Seurat and SingleCellExperiment
#'
#' [annotate_cells()] adds cell-type calls to a Seurat object, a
#' SingleCellExperiment or a sparse matrix, through one of three engines that
#' give identical results:
#'
#' * `"python"`: the scbridge Python core in this R session (via reticulate).
#' * `"cli"`: the `scbridge` command line in a subprocess.
#' * `"http"`: `scbridge serve`, or any endpoint of the same contract.
#'
#' Beside it: [calls()] (the full calls, per cell), [cell_qc()] (per-cell QC),
#' [build_reference()] (a reference model from labelled cells),
#' [annotation_markers()] (marker genes per label, as `FindAllMarkers()`),
#' [cell_embedding()] and [scbridge_engines()]. `vignette("annotating-seurat",
#' package = "scbridge")` walks through a Seurat analysis.
#'
#' @section Options:
#' * `scbridge.python`: the Python interpreter of the `python` engine (else env
#'   `RETICULATE_PYTHON`, else env `SCBRIDGE_PYTHON`, else reticulate's own
#'   choice). It must be set before the session's first call that starts
#'   Python: R runs one Python per session, and naming another one later is an
#'   error of class `scbridge_error_python_mismatch` that says to restart R.
#' * `scbridge.cli`: the `scbridge` executable of the `cli` engine (else env
#'   `SCBRIDGE_CLI`, else `scbridge` on the `PATH`, else the `scbridge` beside
#'   env `SCBRIDGE_PYTHON`).
#' * `scbridge.cli_worker` (default `TRUE`): run the `cli` engine's commands
#'   in one `scbridge worker` process per session (kept warm: the Python start
#'   and imports are paid for once), or, with `FALSE`, each in a process of its
#'   own.
#' * `scbridge.cli_transport`: how the `cli` engine hands the matrix over:
#'   `"auto"` / `"arrow"` (an uncompressed Arrow CSR stream, the default) or
#'   `"rds"` (an uncompressed .rds, read through rpy2: slower).
#' * `scbridge.endpoint`: the default endpoint of the `http` engine (else env
#'   `SCBRIDGE_ENDPOINT`).
#' * `scbridge.http_transport`: `"auto"` (Arrow where the R package nanoarrow
#'   or arrow is installed and only `tissue` goes along, else JSON), `"arrow"`
#'   or `"json"`.
#' * `scbridge.arrow_backend`: `"nanoarrow"` (the default where installed: it
#'   builds the Arrow batch on the dgCMatrix slots without a copy) or `"arrow"`
#'   (which copies the matrix once), where both are installed.
#' * `scbridge.http_retries` (default 5): tries per HTTP request; replies 429
#'   and 5xx and failed connections are retried with exponential backoff.
#' * `scbridge.http_timeout` (default 300): seconds per HTTP request.
#' * `scbridge.http_concurrency` (default 4): chunks sent at once by the `http`
#'   engine.
#' * `scbridge.max_request_bytes`: the largest HTTP request body the `http`
#'   engine builds (default 2^31 - 1, R's limit for one string).
#' * `scbridge.max_nnz`: the most non-zeros one matrix may hold for an engine
#'   (default 2^31 - 1, a dgCMatrix's limit).
#' * `scbridge.verbose` (default `TRUE`): the default of every function's
#'   `verbose`: progress steps and the core's notes as messages.
#'
#' @section Conditions:
#' Errors have class `scbridge_error` plus `scbridge_error_<code>` and
#' `scbridge_error_<family>` from the error code (the core's codes,
#' `bridge/_errors.py`; the service's, docs/service.md; and a few of the R
#' package's own), e.g. `scbridge_error_gene_ids`,
#' `scbridge_error_unknown_parameter`, `scbridge_error_clash`; the condition's
#' `code`, `family` and `hint` fields carry them. Warnings have class
#' `scbridge_warning` plus `scbridge_warning_<code>` (`core` for the core's
#' own warnings); messages `scbridge_message`.
#'
#' @keywords internal
#' @importFrom methods is new slot slotNames
#' @importFrom Matrix sparseMatrix
"_PACKAGE"

#' Whether scbridge can annotate here
#'
#' `TRUE` when an engine that runs locally (python or cli) is set up, or
#' `engine` can run. The examples use it to skip where no Python core is
#' configured.
#'
#' @param engine `"local"` (python or cli), `"python"`, `"cli"` or `"http"`.
#' @param endpoint The endpoint the `http` engine would use.
#' @return `TRUE` or `FALSE`.
#' @examples
#' scbridge_available()
#' @export
scbridge_available <- function(engine = c("local", "python", "cli", "http"),
                               endpoint = default_endpoint()) {
  engine <- check_choice(engine, c("local", "python", "cli", "http"), "engine")
  names <- if (engine == "local") c("python", "cli") else engine
  any(vapply(names, function(e) is.null(engine_status(e, endpoint)), logical(1)))
}

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
#' @section Options:
#' * `scbridge.python`: the Python interpreter for the `python` engine
#'   (else `RETICULATE_PYTHON`, else reticulate's own choice).
#' * `scbridge.cli`: the `scbridge` executable (else env `SCBRIDGE_CLI`, else
#'   `Sys.which("scbridge")`).
#' * `scbridge.endpoint`: the default endpoint of the `http` engine (else env
#'   `SCBRIDGE_ENDPOINT`).
#' * `scbridge.verbose`: `TRUE` for progress messages.
#' * `scbridge.http_retries` (default 5): tries per HTTP request; replies 429
#'   and 5xx and failed connections are retried with exponential backoff.
#' * `scbridge.http_timeout` (default 300): seconds per HTTP request.
#' * `scbridge.http_concurrency` (default 4): chunks sent at once by the `http`
#'   engine.
#' * `scbridge.max_request_bytes`: the largest HTTP request body the `http`
#'   engine builds (default 2^31 - 1, R's limit for one string).
#'
#' @keywords internal
#' @importFrom methods is new slot slotNames
#' @importFrom Matrix sparseMatrix
"_PACKAGE"

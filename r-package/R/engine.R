# Choosing an engine. "auto" takes the first available of python, cli, http; when none is,
# the error says exactly how to set each one up.

engine_names <- c("python", "cli", "http")

engine_setup <- c(
  python = paste(
    "python: install the scbridge Python package into a Python environment with numpy < 2",
    "(Debian's reticulate 1.28 needs that), install the R package reticulate, and point R at",
    "that Python before the first call: Sys.setenv(RETICULATE_PYTHON = \"/path/to/bin/python\")",
    "or options(scbridge.python = \"/path/to/bin/python\")."),
  cli = paste(
    "cli: put the `scbridge` command (from the scbridge Python package) on the PATH, or name",
    "it with options(scbridge.cli = \"/path/to/bin/scbridge\") or Sys.setenv(SCBRIDGE_CLI = ...);",
    "reading the .rds it is given needs rpy2 in that Python (pip install 'scbridge[r]')."),
  http = paste(
    "http: start a server with `scbridge serve --api-keys keys.txt` (or use any endpoint of the",
    "Cell Atlas contract) and pass endpoint = \"http://host:port\" (or",
    "options(scbridge.endpoint = ...)) and api_key = ... (or Sys.setenv(SCBRIDGE_API_KEY = ...));",
    "needs the R packages httr2 and jsonlite.")
)

# NULL when `engine` can run here, else why not.
engine_status <- function(engine, endpoint) {
  switch(engine,
    python = python_status(),
    cli = cli_status(),
    http = http_status(endpoint))
}

resolve_engine <- function(engine, endpoint) {
  engine <- match.arg(engine, c("auto", engine_names))
  if (engine != "auto") {
    why <- engine_status(engine, endpoint)
    if (!is.null(why)) {
      kind <- if (engine == "python") "python_missing" else "engine_unavailable"
      abort(c(sprintf("The '%s' engine is not available: %s.", engine, why),
              paste("To set it up:", engine_setup[[engine]])), kind = c(kind, "engine_unavailable"))
    }
    return(engine)
  }
  reasons <- character(0)
  for (candidate in engine_names) {
    why <- engine_status(candidate, endpoint)
    if (is.null(why)) {
      inform("using the ", candidate, " engine")
      return(candidate)
    }
    reasons[[candidate]] <- why
  }
  abort(c(
    "No scbridge engine is available (engine = \"auto\" tried python, cli and http):",
    sprintf("  - %s: %s", names(reasons), reasons),
    "Set up one of them:",
    paste("  -", engine_setup)
  ), kind = c("python_missing", "engine_unavailable"))
}

#' Which annotation engines can run here
#'
#' @param endpoint The endpoint the `http` engine would use.
#' @return A data.frame with one row per engine: `engine`, `available`
#'   (logical) and `reason` (why not, or `NA`).
#' @examples
#' scbridge_engines()
#' @export
scbridge_engines <- function(endpoint = default_endpoint()) {
  why <- lapply(engine_names, engine_status, endpoint = endpoint)
  data.frame(engine = engine_names, available = vapply(why, is.null, logical(1)),
             reason = vapply(why, function(w) w %||% NA_character_, character(1)),
             stringsAsFactors = FALSE)
}

default_endpoint <- function() {
  getOption("scbridge.endpoint") %||% (Sys.getenv("SCBRIDGE_ENDPOINT") %||% "")
}

# The largest number of non-zeros one request / one matrix may carry for an engine.
max_nnz <- function() getOption("scbridge.max_nnz", .Machine$integer.max)

check_nnz <- function(m, engine) {
  nnz <- length(m@x)
  if (nnz > max_nnz()) {
    abort(sprintf(
      "The matrix holds %s non-zeros, more than the %s engine can carry (%s). Annotate a subset of cells at a time (e.g. per sample layer), or use the cli engine with Arrow files.",
      format(nnz, big.mark = ","), engine, format(max_nnz(), big.mark = ",")), kind = c("capacity", "input"))
  }
}

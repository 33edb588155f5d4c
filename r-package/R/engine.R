# The engines: one object per engine (R/engine-python.R, R/engine-cli.R, R/engine-http.R),
# each a list of the operations it can run (annotate, qc, build_reference, embed, markers)
# plus status(), which says why it cannot run here (NULL when it can). Everything else asks
# for an engine by name through choose_engine() and runs an operation through
# run_engine(): no switch() on engine names anywhere else.
#
# Every operation takes (m, source, request): the genes x cells dgCMatrix, where it came from,
# and a list of what was asked (model, atlas, chunk_size, value_kind, params, endpoint,
# api_key, ... as the operation needs).

engine_names <- c("python", "cli", "http")

new_engine <- function(name, label, status, setup, ...) {
  structure(list(name = name, label = label, status = status, setup = setup, ...),
            class = "scbridge_engine")
}

# The registry: engine name -> constructor (defined in engine-<name>.R).
engine_constructors <- list(python = function() python_engine(), cli = function() cli_engine(),
                            http = function() http_engine())

engine_object <- function(name) engine_constructors[[name]]()

#' @export
print.scbridge_engine <- function(x, ...) {
  ops <- setdiff(names(x), c("name", "label", "status", "setup", "where"))
  cat(sprintf("<scbridge engine '%s': %s; runs %s>\n", x$name, x$label,
              paste(ops, collapse = ", ")))
  invisible(x)
}

# The value of a closed-set argument, or a classed error listing the valid values (and the
# nearest one when the value looks like a typo).
check_choice <- function(value, choices, arg) {
  if (is.character(value) && length(value) == length(choices) && identical(value, choices)) {
    return(choices[[1L]])  # the default: c("auto", ...) as in the signature
  }
  if (is.character(value) && length(value) == 1L && !is.na(value) && value %in% choices) {
    return(value)
  }
  shown <- if (is.character(value) && length(value) == 1L) sprintf("\"%s\"", value) else
    paste(format(value), collapse = " ")
  near <- if (is.character(value) && length(value) == 1L) {
    choices[agrepl(value, choices, max.distance = 2)][1L]
  } else {
    NA
  }
  abort(c(sprintf("`%s` must be one of %s, not %s.", arg,
                  paste(sprintf("\"%s\"", choices), collapse = ", "), shown),
          if (!is.na(near)) sprintf("Did you mean %s = \"%s\"?", arg, near)),
        code = "invalid_parameter")
}

# NULL when `engine` can run `operation` here, else why not.
engine_status <- function(engine, endpoint, operation = "annotate") {
  eng <- engine_object(engine)
  if (is.null(eng[[operation]])) {
    return(sprintf("the %s engine does not run %s", engine, operation_label(operation)))
  }
  eng$status(endpoint)
}

operation_label <- function(operation) {
  switch(operation, build_reference = "build_reference()", qc = "cell_qc()",
         embed = "cell_embedding()", markers = "annotation_markers()", "annotation")
}

# The engine object to use. `engine = "auto"` takes the first available of python, cli,
# http that runs `operation` and says once per session which it chose and why.
choose_engine <- function(engine, endpoint, operation = "annotate") {
  engine <- check_choice(engine, c("auto", engine_names), "engine")
  if (engine != "auto") {
    why <- engine_status(engine, endpoint, operation)
    if (!is.null(why)) engine_unavailable(engine, why, operation)
    return(engine_object(engine))
  }
  reasons <- character(0)
  for (candidate in engine_names) {
    why <- engine_status(candidate, endpoint, operation)
    if (is.null(why)) {
      announce_auto(candidate, reasons, endpoint)
      return(engine_object(candidate))
    }
    reasons[[candidate]] <- why
  }
  trap <- python_mismatch()
  abort(c(
    sprintf("No scbridge engine can run %s here (engine = \"auto\" tried %s):",
            operation_label(operation), paste(engine_names, collapse = ", ")),
    sprintf("  - %s: %s", names(reasons), reasons),
    "Set up one of them:",
    paste("  -", vapply(engine_names, function(e) engine_object(e)$setup, ""))
  ), code = if (!is.null(trap)) "python_mismatch" else "python_missing")
}

engine_unavailable <- function(engine, why, operation) {
  if (is.null(engine_object(engine)[[operation]])) {
    abort(sprintf("The %s engine cannot run %s; use engine = \"python\" or \"cli\".", engine,
                  operation_label(operation)), code = "unsupported")
  }
  code <- if (engine != "python") "engine_unavailable" else if (!is.null(python_mismatch())) {
    "python_mismatch"
  } else {
    "python_missing"
  }
  abort(c(sprintf("The '%s' engine is not available: %s.", engine, why),
          paste("To set it up:", engine_object(engine)$setup)), code = code)
}

# "auto" says which engine it chose, and why not the ones before it, once per session and
# choice (whatever `verbose` says: it changes where the work is done).
announce_auto <- function(engine, reasons, endpoint) {
  key <- paste(c(engine, names(reasons), reasons), collapse = "\r")
  if (key %in% the$announced) return(invisible(FALSE))
  the$announced <- c(the$announced, key)
  skipped <- if (length(reasons)) {
    sprintf(" (%s)", paste(sprintf("%s engine: %s", names(reasons), reasons), collapse = "; "))
  } else {
    ""
  }
  eng <- engine_object(engine)
  inform(sprintf("engine = \"auto\" uses the %s engine: %s (%s)%s.", engine, eng$label,
                 eng$where(endpoint), skipped), .always = TRUE)
}

run_engine <- function(engine, operation, ...) {
  fun <- engine[[operation]]
  if (is.null(fun)) {
    abort(sprintf("The %s engine cannot run %s.", engine$name, operation_label(operation)),
          code = "unsupported")
  }
  fun(...)
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
      format(nnz, big.mark = ","), engine, format(max_nnz(), big.mark = ",")), code = "too_large")
  }
}

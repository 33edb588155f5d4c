# Classed conditions (in the style of httr2's req-error.R) and the user interface.
#
# Errors: abort(message, code) signals a condition whose classes come from the code
# (error_classes(), R/codes.R); a Python or HTTP error is kept as `parent`; the call is the
# user's call of the exported function. Tests assert classes, never wording.
# Warnings: warn(message, code) signals c("scbridge_warning_<code>", "scbridge_warning",
# "warning", "condition"); the core's Python warnings arrive as code "core".
# Messages: inform() signals c("scbridge_message", "message", "condition") when the call is
# verbose (`verbose = `, default options(scbridge.verbose), default TRUE), so
# suppressMessages() and tryCatch(message = ) work on everything scbridge says; progress
# goes through the cli package when it is installed.

abort <- function(message, code = NULL, family = NULL, parent = NULL, hint = NULL,
                  call = scbridge_call(), remote = FALSE, kind = NULL, ...) {
  code <- code %||% kind_codes[kind[[1L]] %||% "input"]
  code <- unname(code)
  cond <- errorCondition(paste(message, collapse = "\n"),
                         class = utils::head(error_classes(code, family, remote), -2L),
                         call = call, parent = parent, code = code,
                         family = family %||% code_family(code, remote), hint = hint, ...)
  stop(cond)
}

# `kind =`, the word older code of this package (R/matrix.R) gives instead of a code.
kind_codes <- c(input = "invalid_input", not_found = "not_found", unsupported = "unsupported",
                capacity = "too_large", dependency = "missing_dependency", clash = "clash",
                remote = "remote_error", gene_ids = "gene_ids", engine = "engine_failure",
                arrow_format = "arrow_format", engine_unavailable = "engine_unavailable")

#' @export
conditionMessage.scbridge_error <- function(c) {
  msg <- c$message
  if (length(c$hint) && nzchar(c$hint)) msg <- paste0(msg, "\nHint: ", c$hint)
  # Python exceptions are not repeated: the message already says what the core said.
  if (inherits(c$parent, "condition") && !isTRUE(c$python)) {
    msg <- paste0(msg, "\nCaused by: ", conditionMessage(c$parent))
  }
  msg
}

warn <- function(message, code, call = scbridge_call(), ...) {
  cond <- warningCondition(paste(message, collapse = "\n"),
                           class = c(paste0("scbridge_warning_", code), "scbridge_warning"),
                           call = call, code = code, ...)
  warning(cond)
}

# The call of the exported scbridge function the user called (outermost first), or NULL.
scbridge_call <- function() {
  ns <- asNamespace("scbridge")
  exported <- getNamespaceExports(ns)
  calls <- sys.calls()
  for (k in seq_along(calls)) {
    fn <- calls[[k]][[1L]]
    if (is.call(fn) && as.character(fn[[1L]]) %in% c("::", ":::")) fn <- fn[[3L]]
    if (is.name(fn) && as.character(fn) %in% exported &&
        identical(environment(sys.function(k)), ns)) {
      return(calls[[k]])
    }
  }
  NULL
}

# -- verbosity and messages --------------------------------------------------------------------
the <- new.env(parent = emptyenv())

check_verbose <- function(verbose) {
  if (!is.logical(verbose) || length(verbose) != 1L || is.na(verbose)) {
    abort("`verbose` must be TRUE or FALSE.", code = "invalid_parameter")
  }
  verbose
}

default_verbose <- function() isTRUE(getOption("scbridge.verbose", TRUE))

# Runs `code` with messages on or off (restored afterwards, errors included).
with_verbosity <- function(verbose, code) {
  old <- the$verbose
  the$verbose <- check_verbose(verbose)
  on.exit(the$verbose <- old, add = TRUE)
  force(code)
}

is_verbose <- function() the$verbose %||% default_verbose()

inform <- function(..., .always = FALSE) {
  if (!.always && !is_verbose()) return(invisible(FALSE))
  text <- paste0("scbridge: ", ..., collapse = "")
  cond <- structure(class = c("scbridge_message", "message", "condition"),
                    list(message = paste0(text, "\n"), call = NULL))
  message(cond)
  invisible(TRUE)
}

# A step of a long call ("annotating 3,000 cells with the python engine"): a cli progress
# step (ticked off with its time when the step ends) when cli is installed, else a message.
# Returns a function that closes the step.
progress_step <- function(text) {
  if (!is_verbose()) return(function() invisible())
  if (requireNamespace("cli", quietly = TRUE)) {
    literal <- gsub("}", "}}", gsub("{", "{{", text, fixed = TRUE), fixed = TRUE)
    id <- cli::cli_progress_step(literal, .auto_close = FALSE)
    return(function() cli::cli_progress_done(id = id))
  }
  inform(text)
  function() invisible()
}

# A progress bar over `total` units (chunks): returns a function(done) to update it, which
# closes the bar when done == total.
progress_bar <- function(text, total) {
  if (!is_verbose() || total < 2L || !requireNamespace("cli", quietly = TRUE)) {
    return(function(done) invisible())
  }
  id <- cli::cli_progress_bar(text, total = total, .auto_close = FALSE)
  function(done) {
    cli::cli_progress_update(id = id, set = done)
    if (done >= total) cli::cli_progress_done(id = id)
  }
}

# The core's warnings and log records (from the python or cli engine) as R conditions:
# warnings as scbridge_warning_core (each text once), INFO records as scbridge_message.
signal_core_conditions <- function(records) {
  said <- character(0)
  for (r in records) {
    text <- as.character(r$message %||% "")
    if (!nzchar(text) || text %in% said) next
    said <- c(said, text)
    if (identical(r$level, "warning")) {
      warn(text, code = "core", category = r$category %||% "UserWarning")
    } else {
      inform(text)
    }
  }
  invisible(said)
}

need_package <- function(package, what) {
  if (!requireNamespace(package, quietly = TRUE)) {
    abort(c(
      sprintf("%s needs the R package '%s', which is not installed.", what, package),
      sprintf("Install it with install.packages(\"%s\") (Bioconductor packages: BiocManager::install(\"%s\")).",
              package, package)
    ), code = "missing_dependency")
  }
  invisible(TRUE)
}

`%||%` <- function(x, y) if (is.null(x) || length(x) == 0L) y else x

# Classed conditions (in the style of httr2's req-error.R): every error a user can cause has
# class c("scbridge_error_<kind>", "scbridge_error", "error", "condition"); tests assert the
# class, not the wording. A Python or HTTP error is kept as `parent`.

abort <- function(message, kind = "input", parent = NULL, call = NULL, ...) {
  classes <- unique(c(paste0("scbridge_error_", kind), "scbridge_error"))
  cond <- errorCondition(paste(message, collapse = "\n"), class = classes, call = call,
                         parent = parent, ...)
  stop(cond)
}

#' @export
conditionMessage.scbridge_error <- function(c) {
  msg <- c$message
  if (!is.null(c$parent) && inherits(c$parent, "condition")) {
    msg <- paste0(msg, "\nCaused by: ", conditionMessage(c$parent))
  }
  msg
}

inform <- function(...) {
  if (isTRUE(getOption("scbridge.verbose", FALSE))) message("scbridge: ", ...)
}

need_package <- function(package, what) {
  if (!requireNamespace(package, quietly = TRUE)) {
    abort(c(
      sprintf("%s needs the R package '%s', which is not installed.", what, package),
      sprintf("Install it with install.packages(\"%s\") (Bioconductor packages: BiocManager::install(\"%s\")).",
              package, package)
    ), kind = "dependency")
  }
  invisible(TRUE)
}

`%||%` <- function(x, y) if (is.null(x) || length(x) == 0L) y else x

# Checking what the user passed, before any computation: unknown arguments are refused (with
# the valid ones listed), Seurat's `slot` is taken for `layer`, and every value is checked
# where it comes in, with a classed error that names the argument.

# `...` of a user-facing function must be empty: a misspelt or foreign argument (Seurat's
# `features`, a Python engine parameter) is refused, naming the arguments `fun` takes.
check_dots <- function(dots, fun, call = scbridge_call()) {
  if (!length(dots)) return(invisible(TRUE))
  given <- names(dots) %||% rep("", length(dots))
  valid <- setdiff(names(formals(fun)), c("object", "..."))
  named <- given[nzchar(given)]
  unnamed <- sum(!nzchar(given))
  what <- c(if (length(named)) sprintf("`%s`", named),
            if (unnamed) sprintf("%d unnamed argument%s", unnamed, if (unnamed > 1L) "s" else ""))
  near <- unlist(lapply(named, function(n) {
    hit <- valid[agrepl(n, valid, max.distance = 0.2)][1L]
    if (!is.na(hit)) sprintf("`%s` (for `%s`?)", hit, n)
  }))
  abort(c(sprintf("Unknown argument%s: %s.", if (length(what) > 1L) "s" else "",
                  paste(what, collapse = ", ")),
          if (length(near)) sprintf("Did you mean %s?", paste(near, collapse = ", ")),
          sprintf("Valid arguments: %s.", paste(valid, collapse = ", "))),
        code = "unknown_parameter", call = call, arguments = named)
}

# Seurat 4 names the layer `slot`; Seurat 5 and scbridge `layer`. Either is taken.
layer_argument <- function(layer, slot) {
  if (is.null(slot)) return(layer)
  if (!is.null(layer) && !identical(layer, slot)) {
    abort(sprintf("`slot` (\"%s\") and `layer` (\"%s\") disagree: give one of them (`slot` is Seurat 4's name for `layer`).",
                  slot, layer), code = "invalid_parameter")
  }
  slot
}

check_string <- function(value, arg, null_ok = TRUE, example = NULL) {
  if (is.null(value) && null_ok) return(invisible(NULL))
  if (!is.character(value) || length(value) != 1L || is.na(value) || !nzchar(value)) {
    abort(sprintf("`%s` must be %sone non-empty string%s.", arg, if (null_ok) "NULL or " else "",
                  if (is.null(example)) "" else sprintf(", e.g. \"%s\"", example)),
          code = "invalid_parameter")
  }
  invisible(value)
}

check_flag <- function(value, arg) {
  if (!is.logical(value) || length(value) != 1L || is.na(value)) {
    abort(sprintf("`%s` must be TRUE or FALSE.", arg), code = "invalid_parameter")
  }
  invisible(value)
}

check_chunk_size <- function(chunk_size) {
  if (!is.numeric(chunk_size) || length(chunk_size) != 1L || is.na(chunk_size) ||
      chunk_size < 1 || chunk_size != round(chunk_size)) {
    abort("`chunk_size` must be a positive whole number of cells.", code = "invalid_parameter")
  }
  as.integer(min(chunk_size, .Machine$integer.max))
}

check_fraction <- function(value, arg) {
  if (!is.null(value) &&
      (!is.numeric(value) || length(value) != 1L || is.na(value) || value < 0 || value > 1)) {
    abort(sprintf("`%s` must be NULL or one number in [0, 1].", arg), code = "invalid_parameter")
  }
  invisible(value)
}

# The tissue context of the markers model: "auto" (the model infers it) or a tissue name /
# UBERON id, passed on only when given.
tissue_param <- function(tissue) {
  check_string(tissue, "tissue", example = "lung")
  if (is.null(tissue) || identical(tolower(tissue), "auto")) list() else list(tissue = tissue)
}

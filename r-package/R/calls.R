# The calls data.frame: one row per cell, in the object's cell order, the same whatever engine
# made it. Columns: cell, label, ontology_id, confidence, alternates (list of named numeric
# vectors: runner-up label = score, best first), markers (list of character vectors), then any
# extra columns the engine returned (label_raw when min_confidence was applied).

core_columns <- c("cell", "label", "ontology_id", "confidence", "alternates", "markers")

# Build it from flat pieces: alternates and markers arrive as flat vectors plus per-cell counts.
new_calls <- function(cell, label, ontology_id, confidence, alt_n, alt_label, alt_score,
                      marker_n, marker_gene, extra = list()) {
  n <- length(cell)
  df <- data.frame(cell = as.character(cell), label = as.character(label),
                   ontology_id = as.character(ontology_id), confidence = as.double(confidence),
                   stringsAsFactors = FALSE)
  df$alternates <- split_by_counts(stats_named(as.double(alt_score), as.character(alt_label)),
                                   alt_n, n, numeric(0))
  df$markers <- split_by_counts(as.character(marker_gene), marker_n, n, character(0))
  for (name in names(extra)) df[[name]] <- extra[[name]]
  rownames(df) <- NULL
  df
}

stats_named <- function(values, names) {
  names(values) <- names
  values
}

# values split into n pieces of sizes counts (zero-length pieces kept, typed like `empty`).
split_by_counts <- function(values, counts, n, empty) {
  counts <- as.integer(counts)
  if (length(counts) != n || sum(counts) != length(values)) {
    abort("The engine returned list columns that do not match the number of cells.",
          kind = "engine")
  }
  # A factor built directly (factor() would sort and match 'n' levels it already knows).
  groups <- structure(rep.int(seq_len(n), counts), levels = as.character(seq_len(n)),
                      class = "factor")
  out <- split(values, groups)
  names(out) <- NULL
  if (!length(values)) out <- rep(list(empty), n)
  out
}

# min_confidence: cells below it get "Unknown"; the raw call stays in label_raw. Done in R, once,
# for every engine, so all engines agree exactly.
apply_min_confidence <- function(calls, min_confidence) {
  if (is.null(min_confidence)) return(calls)
  if (!is.numeric(min_confidence) || length(min_confidence) != 1L || is.na(min_confidence) ||
      min_confidence < 0 || min_confidence > 1) {
    abort("`min_confidence` must be one number in [0, 1].")
  }
  calls$label_raw <- calls$label
  low <- !is.na(calls$confidence) & calls$confidence < min_confidence
  calls$label[low] <- "Unknown"
  calls
}

#' The full cell-type calls kept in an object
#'
#' [annotate_cells()] adds three columns to the object's cell metadata and keeps
#' everything else it learned (runner-up labels with scores, the marker genes
#' behind each call, provenance) in the object. `calls()` gives that back.
#'
#' @param object A Seurat object or SingleCellExperiment annotated by
#'   [annotate_cells()].
#' @param prefix The `prefix` the annotation was made with.
#' @return A data.frame, one row per cell in the object's order, with columns
#'   `cell`, `label`, `ontology_id`, `confidence`, `alternates` (a list of named
#'   numeric vectors, best first), `markers` (a list of character vectors), and
#'   any extra columns (`label_raw` when `min_confidence` was set). Its
#'   attribute `"provenance"` holds engine, model, atlas and parameters.
#' @examples
#' \dontrun{
#' seu <- annotate_cells(seu)
#' head(calls(seu))
#' calls(seu)$alternates[[1]]
#' }
#' @export
calls <- function(object, prefix = "cell_type") {
  stored <- stored_results(object)[[prefix]]
  if (is.null(stored)) {
    abort(sprintf(
      "This object holds no scbridge calls under prefix '%s'; run annotate_cells(object, prefix = \"%s\") first.",
      prefix, prefix), kind = "not_found")
  }
  out <- stored$calls
  attr(out, "provenance") <- stored$provenance
  out
}

stored_results <- function(object) {
  if (inherits(object, "Seurat")) return(attr(object, "misc")[["scbridge"]])
  if (methods::is(object, "SummarizedExperiment")) {
    return(S4Vectors::metadata(object)[["scbridge"]])
  }
  abort(sprintf("calls() reads Seurat and SingleCellExperiment objects, not %s.",
                class(object)[[1L]]), kind = "unsupported")
}

store_results <- function(object, prefix, value) {
  if (inherits(object, "Seurat")) {
    misc <- attr(object, "misc") %||% list()
    misc[["scbridge"]][[prefix]] <- value
    attr(object, "misc") <- misc
    return(object)
  }
  md <- S4Vectors::metadata(object)
  md[["scbridge"]][[prefix]] <- value
  S4Vectors::metadata(object) <- md
  object
}

# Cell metadata columns: add, never touching other columns; a clash is an error unless allowed.
check_clash <- function(object, names, overwrite) {
  existing <- if (inherits(object, "Seurat")) {
    colnames(attr(object, "meta.data"))
  } else {
    colnames(SummarizedExperiment::colData(object))
  }
  clash <- intersect(names, existing)
  if (length(clash) && !isTRUE(overwrite)) {
    abort(sprintf(
      "The object already has column(s) %s; pass overwrite = TRUE to replace them, or choose another prefix.",
      paste(sprintf("'%s'", clash), collapse = ", ")), kind = "clash")
  }
  invisible(TRUE)
}

add_cell_columns <- function(object, columns, overwrite) {
  check_clash(object, names(columns), overwrite)
  if (inherits(object, "Seurat")) {
    meta <- attr(object, "meta.data")
    for (name in names(columns)) meta[[name]] <- columns[[name]]
    # attr<- leaves every other slot as it is and needs no class definition (v5 objects).
    attr(object, "meta.data") <- meta
  } else {
    cd <- SummarizedExperiment::colData(object)
    for (name in names(columns)) cd[[name]] <- columns[[name]]
    SummarizedExperiment::colData(object) <- cd
  }
  object
}

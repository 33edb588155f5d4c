# Calls kept in an object, per cell, so that subset(), RenameCells() and merge() keep them
# right.
#
# The per-cell columns go into the cell metadata (meta.data / colData), which Seurat and
# Bioconductor carry through every operation. The full calls (runner-ups, marker genes,
# provenance) are kept once per annotation run in object@misc$scbridge[[prefix]] /
# metadata(object)$scbridge[[prefix]], keyed by "<run>:<cell id at annotation>"; the column
# <prefix>_key holds each cell's key. calls() looks the object's current cells up by their
# keys: a subset or renamed object finds its rows, an SCE combined with cbind() those of every
# run it holds; Seurat's merge() keeps the columns but drops @misc, and calls() then says so
# (as it refuses any cells whose run the object does not hold).

#' The full cell-type calls kept in an object
#'
#' [annotate_cells()] adds columns to the object's cell metadata and keeps
#' everything else it learned (runner-up labels with scores, the marker genes
#' behind each call, provenance) in the object. `calls()` gives that back for
#' the cells the object holds now: after `subset()`, `RenameCells()` or
#' `merge()` the rows follow the cells.
#'
#' @param object A Seurat object or SingleCellExperiment annotated by
#'   [annotate_cells()].
#' @param prefix The `prefix` the annotation was made with.
#' @param flatten `TRUE` for plain columns (alternates as `"label:score;..."`,
#'   markers as `"GENE;GENE"`), e.g. for `write.csv()`.
#' @return A data.frame, one row per cell in the object's current order, row
#'   names the cell ids, with columns `cell`, `label`, `ontology_id`,
#'   `confidence`, `alternates` (a list of named numeric vectors, best first),
#'   `markers` (a list of character vectors), and extra columns: `label_l1`,
#'   `label_l2` and `unknown_reason` where the model reports them, `label_raw`
#'   with `min_confidence`, `label_smoothed` and `smoothed_confidence` with
#'   `groups`, the QC columns with `qc`. Its attribute `"provenance"` holds
#'   engine, model, parameters and timing. An error of class
#'   `scbridge_error_stale_calls` when some cells have no stored calls (cells
#'   merged in from an object annotated separately: annotate the merged object).
#' @examples
#' if (scbridge_available()) {
#'   seu <- annotate_cells(SeuratObject::pbmc_small)
#'   head(calls(seu))
#'   calls(seu)$alternates[[1]]
#'   # the rows follow the cells through subset()
#'   small <- subset(seu, cells = colnames(seu)[1:10])
#'   nrow(calls(small))
#' }
#' @export
calls <- function(object, prefix = "cell_type", flatten = FALSE) {
  check_string(prefix, "prefix", null_ok = FALSE)
  check_flag(flatten, "flatten")
  runs <- stored_runs(object, prefix)
  meta <- cell_metadata(object)
  key_column <- key_column_name(prefix)
  keys <- meta[[key_column]]
  if (!length(runs) && !is.null(keys)) {
    # Seurat's merge() keeps the cell metadata but drops @misc.
    abort(c(sprintf(paste("The cells were annotated (column '%s') but the object no longer holds",
                          "their full calls: merge() keeps the cell metadata (%s, ...), which",
                          "stays right, and drops what Seurat keeps in @misc."), key_column,
                    prefix),
            sprintf("For the runner-ups and marker genes, annotate this object again: annotate_cells(object, prefix = \"%s\", overwrite = TRUE).",
                    prefix)), code = "stale_calls")
  }
  if (!length(runs)) {
    abort(sprintf(
      "This object holds no scbridge calls under prefix '%s'; run annotate_cells(object, prefix = \"%s\") first.",
      prefix, prefix), code = "not_found")
  }
  if (is.null(keys)) {
    abort(sprintf("The object has scbridge calls under prefix '%s' but no '%s' column to find them by; annotate it again.",
                  prefix, key_column), code = "stale_calls")
  }
  table <- if (length(runs) == 1L) runs[[1L]]$calls else
    do.call(rbind, unname(lapply(runs, `[[`, "calls")))
  rows <- match(keys, rownames(table))
  if (anyNA(rows)) {
    missing <- which(is.na(rows))
    abort(c(sprintf(paste("%d of the %d cells have no stored calls under prefix '%s' (e.g. '%s'):",
                          "they come from an object annotated separately (merge()?) or were",
                          "not annotated."), length(missing), length(rows), prefix,
                    rownames(meta)[[missing[[1L]]]]),
            sprintf("Annotate this object again: annotate_cells(object, prefix = \"%s\", overwrite = TRUE).",
                    prefix)), code = "stale_calls")
  }
  out <- table[rows, , drop = FALSE]
  out$cell <- rownames(meta)
  rownames(out) <- rownames(meta)
  attr(out, "provenance") <- if (length(runs) == 1L) runs[[1L]]$provenance else
    lapply(runs, `[[`, "provenance")
  if (flatten) flatten_calls(out) else out
}

key_column_name <- function(prefix) paste0(prefix, "_key")

cell_metadata <- function(object) {
  if (inherits(object, "Seurat")) return(attr(object, "meta.data"))
  if (methods::is(object, "SummarizedExperiment")) {
    return(as.data.frame(SummarizedExperiment::colData(object), optional = TRUE))
  }
  abort(sprintf("calls() reads Seurat and SingleCellExperiment objects, not %s.",
                class(object)[[1L]]), code = "unsupported")
}

# Every stored run under `prefix`: an SCE combined with cbind() holds one `scbridge` entry per
# object it was made of; a merged Seurat object holds what merge() kept of @misc.
stored_runs <- function(object, prefix) {
  holders <- if (inherits(object, "Seurat")) {
    list(attr(object, "misc")[["scbridge"]])
  } else if (methods::is(object, "SummarizedExperiment")) {
    md <- S4Vectors::metadata(object)
    md[names(md) == "scbridge"]
  } else {
    cell_metadata(object)  # the unsupported-class error
  }
  runs <- lapply(holders, function(h) h[[prefix]])
  runs <- Filter(Negate(is.null), runs)
  unname(runs[!duplicated(vapply(runs, function(r) r$run %||% "", ""))])
}

store_results <- function(object, prefix, value) {
  if (inherits(object, "Seurat")) {
    misc <- attr(object, "misc") %||% list()
    misc[["scbridge"]][[prefix]] <- value
    attr(object, "misc") <- misc
    return(object)
  }
  md <- S4Vectors::metadata(object)
  holders <- which(names(md) == "scbridge")
  # cbind() may have left several entries: the new run replaces `prefix` in all of them.
  for (h in holders) md[[h]][[prefix]] <- NULL
  if (length(holders)) {
    md[[holders[[1L]]]][[prefix]] <- value
  } else {
    md[["scbridge"]] <- stats::setNames(list(value), prefix)
  }
  S4Vectors::metadata(object) <- md
  object
}

# A run id that does not touch the random number generator (set.seed() stays meaningful).
new_run_id <- function() {
  stamp <- as.numeric(Sys.time()) * 1e6
  sprintf("%s%04x", format(as.hexmode(floor(stamp %% 2^31))), Sys.getpid() %% 65536L)
}

# Cell metadata columns: added, never touching other columns; a clash is an error unless
# allowed.
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
      paste(sprintf("'%s'", clash), collapse = ", ")), code = "clash")
  }
  invisible(TRUE)
}

# Sets `columns` (a named list of per-cell vectors, in the object's cell order) and drops
# `drop` (columns an earlier run under the same prefix added that this one does not).
add_cell_columns <- function(object, columns, overwrite, drop = character(0)) {
  check_clash(object, names(columns), overwrite)
  if (inherits(object, "Seurat")) {
    meta <- attr(object, "meta.data")
    meta <- meta[, setdiff(colnames(meta), drop), drop = FALSE]
    for (name in names(columns)) meta[[name]] <- columns[[name]]
    # attr<- leaves every other slot as it is and needs no class definition (v5 objects).
    attr(object, "meta.data") <- meta
  } else {
    cd <- SummarizedExperiment::colData(object)
    cd <- cd[, setdiff(colnames(cd), drop), drop = FALSE]
    for (name in names(columns)) cd[[name]] <- columns[[name]]
    SummarizedExperiment::colData(object) <- cd
  }
  object
}

# The columns an annotation adds under `prefix`, in this order (those the run has).
result_columns <- function(prefix) {
  suffix <- c(label = "", confidence = "_confidence", ontology = "_ontology", l1 = "_l1",
              l2 = "_l2", reason = "_reason", fine = "_label", smoothed = "_smoothed",
              smoothed_confidence = "_smoothed_confidence", key = "_key")
  stats::setNames(paste0(prefix, suffix), names(suffix))
}

# The per-cell columns of one run (level: which depth goes in the main column).
object_columns <- function(calls, prefix, level, run) {
  names <- result_columns(prefix)
  main <- level_values(calls, level)
  out <- list(main, calls$confidence, calls$ontology_id)
  names(out) <- names[c("label", "confidence", "ontology")]
  if (!is.null(calls$label_l1)) out[[names[["l1"]]]] <- as.character(calls$label_l1)
  if (!is.null(calls$label_l2)) out[[names[["l2"]]]] <- as.character(calls$label_l2)
  if (!is.null(calls$unknown_reason)) out[[names[["reason"]]]] <- as.character(calls$unknown_reason)
  if (level != "label") out[[names[["fine"]]]] <- calls$label
  if (!is.null(calls$label_smoothed)) {
    out[[names[["smoothed"]]]] <- calls$label_smoothed
    out[[names[["smoothed_confidence"]]]] <- calls$smoothed_confidence
  }
  out[[names[["key"]]]] <- paste0(run, ":", calls$cell)
  out
}

# Idents (Seurat) / colLabels (SingleCellExperiment) from a column of calls.
set_identities <- function(object, values, cells) {
  values <- factor(values, levels = sort(unique(values), method = "radix"))
  if (inherits(object, "Seurat")) {
    names(values) <- cells
    attr(object, "active.ident") <- values
    return(object)
  }
  need_package("SingleCellExperiment", "set_ident = TRUE for a SingleCellExperiment")
  SingleCellExperiment::colLabels(object) <- values
  object
}

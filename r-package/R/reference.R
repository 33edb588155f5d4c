#' Build a reference from labelled cells
#'
#' Fits the core's reference model (`bridge.build_reference`, `scbridge
#' build-reference`: informative genes per label and a calibrated logistic
#' model) to the cells of a labelled Seurat object, SingleCellExperiment or
#' matrix, as SingleR users train on a labelled data set. Annotate with it by
#' `annotate_cells(object, reference = ref)`.
#'
#' @inheritParams annotate_cells
#' @param object The labelled cells: a Seurat object, a SingleCellExperiment,
#'   or a genes x cells matrix.
#' @param label_column The cell metadata column holding the labels; for a
#'   matrix, one label per cell.
#' @param file Where to write the reference (Parquet; `.parquet` is added to a
#'   name without it). `NULL` (default): a temporary file, kept for this R
#'   session.
#' @param genes_per_label Informative genes kept per label.
#' @param min_cells_per_label Labels with fewer cells are refused.
#' @param max_cells_per_label Larger labels are subsampled.
#' @param engine `"auto"` (python, then cli), `"python"` or `"cli"`.
#' @return An object of class `scbridge_reference`: a list with `file`,
#'   `labels` (the labels the model learned; `NULL` from the cli engine, whose
#'   command does not report them), `n_genes`, `label_column`, `n_cells`,
#'   `source`.
#' @examples
#' if (scbridge_available()) {
#'   ref <- build_reference(SeuratObject::pbmc_small, "RNA_snn_res.1",
#'                          min_cells_per_label = 5)
#'   ref
#'   seu <- annotate_cells(SeuratObject::pbmc_small, reference = ref)
#'   table(seu$cell_type, SeuratObject::pbmc_small$RNA_snn_res.1)
#' }
#' @export
build_reference <- function(object, label_column, file = NULL, ..., genes_per_label = 200,
                            min_cells_per_label = 10, max_cells_per_label = 5000,
                            assay = NULL, layer = NULL, slot = NULL, value_kind = NULL,
                            engine = c("auto", "python", "cli", "http"),
                            verbose = default_verbose()) {
  check_dots(list(...), build_reference)
  with_verbosity(verbose, {
    check_string(file, "file")
    for (arg in c("genes_per_label", "min_cells_per_label", "max_cells_per_label")) {
      value <- get(arg)
      if (!is.numeric(value) || length(value) != 1L || is.na(value) || value < 1 ||
          value != round(value)) {
        abort(sprintf("`%s` must be a positive whole number.", arg), code = "invalid_parameter")
      }
    }
    value_kind <- check_value_kind(value_kind)
    layer <- layer_argument(layer, slot)
    is_object <- inherits(object, "Seurat") || methods::is(object, "SummarizedExperiment")
    found <- if (is_object) find_matrix(object, assay, layer) else expression_matrix(object)
    m <- found$matrix
    labels <- reference_labels(object, label_column, colnames(m), is_object)
    eng <- choose_engine(engine, default_endpoint(), "build_reference")
    check_values(m, found$source)
    file <- file %||% tempfile("scbridge-reference", fileext = ".parquet")
    if (!grepl("\\.parquet$", file, ignore.case = TRUE)) {
      # The core writes references as Parquet and names them so.
      file <- paste0(file, ".parquet")
      inform("the reference is written to ", file)
    }
    column <- if (is_object) label_column else "label"
    done <- progress_step(sprintf("Building a reference from %s cells with the %s engine",
                                  format(ncol(m), big.mark = ","), eng$name))
    built <- run_engine(eng, "build_reference", m, found$source, list(
      labels = labels, label_column = column, file = file, value_kind = value_kind,
      params = list(genes_per_label = as.integer(genes_per_label),
                    min_cells_per_label = as.integer(min_cells_per_label),
                    max_cells_per_label = as.integer(max_cells_per_label))))
    done()
    structure(list(file = normalizePath(file), labels = built$labels,
                   n_genes = built$n_genes, label_column = column, n_cells = ncol(m),
                   source = found$source),
              class = "scbridge_reference")
  })
}

reference_labels <- function(object, label_column, cells, is_object) {
  if (is_object) {
    check_string(label_column, "label_column", null_ok = FALSE, example = "celltype")
    meta <- cell_metadata(object)
    if (!label_column %in% colnames(meta)) {
      abort(sprintf("label_column = \"%s\" is not a cell metadata column; the columns are: %s.",
                    label_column, paste(colnames(meta), collapse = ", ")), code = "not_found")
    }
    labels <- meta[[label_column]]
    names(labels) <- rownames(meta)
    return(as.character(labels[cells]))
  }
  if (!is.atomic(label_column) || length(label_column) != length(cells)) {
    abort(sprintf("For a matrix, `label_column` is one label per cell: %d values for %d cells.",
                  length(label_column), length(cells)), code = "invalid_parameter")
  }
  as.character(label_column)
}

#' @export
print.scbridge_reference <- function(x, ...) {
  labels <- if (length(x$labels)) {
    sprintf("%d labels (%s%s)", length(x$labels), paste(utils::head(x$labels, 6L), collapse = ", "),
            if (length(x$labels) > 6L) ", ..." else "")
  } else {
    "labels in the file"
  }
  cat(sprintf("<scbridge reference: %s, from %s cells of %s (column '%s')>\n%s\n", labels,
              format(x$n_cells, big.mark = ","), x$source, x$label_column, x$file))
  invisible(x)
}

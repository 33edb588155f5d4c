#' Per-cell quality control
#'
#' The core's QC step (`bridge.qc`, `scbridge qc`) from R: total counts, genes
#' detected, mitochondrial fraction and doublet score of every cell, and
#' whether it passes the thresholds (with the reasons when it does not).
#' Nothing is filtered: inspect the table, subset the object, then annotate, or
#' pass the table to `annotate_cells(qc = )` to keep it beside the calls.
#'
#' Doublet scores follow the Scrublet algorithm and need raw counts and at
#' least 100 cells; where they cannot be computed the column is `NA` and
#' `attr(x, "thresholds")$doublets` says why. They cost far more than the
#' annotation itself (seconds per 10,000 cells).
#'
#' @inheritParams annotate_cells
#' @param object A Seurat object, a SingleCellExperiment or a genes x cells
#'   matrix.
#' @param doublets `TRUE` (default) for doublet scores computed by the core,
#'   `"scanpy"` for `scanpy.pp.scrublet`, `FALSE` for none.
#' @param min_counts,min_genes,max_mito_fraction,max_doublet_score The
#'   thresholds a cell must meet to pass (`min_counts` and `max_mito_fraction`
#'   are judged on raw counts only).
#' @param engine `"auto"` (python, then cli), `"python"` or `"cli"`: the http
#'   engine computes no QC.
#' @param store For a Seurat object or SingleCellExperiment: `TRUE` to add the
#'   columns to its cell metadata (named `<prefix>_total_counts`,
#'   `<prefix>_n_genes`, ..., `<prefix>_pass`, `<prefix>_reason`) and return the
#'   object.
#' @param prefix The prefix of the stored columns.
#' @param overwrite Replace existing columns of those names.
#' @return A data.frame of class `scbridge_qc`, one row per cell (row names the
#'   cell ids): `cell`, `total_counts`, `n_genes`, `mito_fraction`,
#'   `doublet_score`, `qc_pass`, `qc_reason`; the thresholds used in its
#'   attribute `"thresholds"`. With `store = TRUE`: the object.
#' @examples
#' if (scbridge_available()) {
#'   qc <- cell_qc(SeuratObject::pbmc_small, doublets = FALSE)
#'   head(qc)
#'   table(qc$qc_pass)
#'   seu <- cell_qc(SeuratObject::pbmc_small, doublets = FALSE, store = TRUE)
#'   head(seu[[c("qc_total_counts", "qc_pass")]])
#' }
#' @export
cell_qc <- function(object, ..., doublets = TRUE, min_counts = 500, min_genes = 200,
                    max_mito_fraction = 0.2, max_doublet_score = 0.3, assay = NULL,
                    layer = NULL, slot = NULL, value_kind = NULL,
                    engine = c("auto", "python", "cli", "http"), store = FALSE, prefix = "qc",
                    overwrite = FALSE, verbose = default_verbose()) {
  check_dots(list(...), cell_qc)
  with_verbosity(verbose, {
    if (!isTRUE(doublets) && !isFALSE(doublets) && !identical(doublets, "scanpy")) {
      abort("`doublets` must be TRUE, FALSE or \"scanpy\".", code = "invalid_parameter")
    }
    # min_genes is a whole number in the core (QCThresholds): its reasons read "n_genes<200".
    thresholds <- list(min_counts = min_counts,
                       min_genes = if (is.numeric(min_genes) && length(min_genes) == 1L &&
                                       !is.na(min_genes) && min_genes == round(min_genes)) {
                         as.integer(min_genes)
                       } else {
                         min_genes
                       },
                       max_mito_fraction = max_mito_fraction,
                       max_doublet_score = max_doublet_score)
    for (name in names(thresholds)) {
      value <- thresholds[[name]]
      if (!is.numeric(value) || length(value) != 1L || is.na(value) || value < 0) {
        abort(sprintf("`%s` must be one number >= 0.", name), code = "invalid_parameter")
      }
    }
    check_flag(store, "store")
    is_object <- inherits(object, "Seurat") || methods::is(object, "SummarizedExperiment")
    if (store) {
      if (!is_object) {
        abort("store = TRUE needs a Seurat object or SingleCellExperiment.",
              code = "invalid_parameter")
      }
      check_string(prefix, "prefix", null_ok = FALSE, example = "qc")
      names <- qc_column_names(prefix, c("total_counts", "n_genes", "mito_fraction",
                                         "doublet_score", "qc_pass", "qc_reason"))
      check_clash(object, names, overwrite)
    }
    value_kind <- check_value_kind(value_kind)
    layer <- layer_argument(layer, slot)
    eng <- choose_engine(engine, default_endpoint(), "qc")
    found <- if (is_object) find_matrix(object, assay, layer) else expression_matrix(object)
    m <- found$matrix
    check_values(m, found$source)
    done <- progress_step(sprintf("Computing QC of %s cells with the %s engine",
                                  format(ncol(m), big.mark = ","), eng$name))
    table <- run_engine(eng, "qc", m, found$source,
                        list(value_kind = value_kind, doublets = doublets,
                             thresholds = thresholds))
    done()
    if (!store) return(table)
    cells <- object_cells(object)
    rows <- match(cells, table$cell)
    columns <- lapply(unclass(table)[setdiff(names(table), "cell")], `[`, rows)
    names(columns) <- qc_column_names(prefix, names(columns))
    add_cell_columns(object, columns, overwrite)
  })
}

qc_column_names <- function(prefix, names) paste0(prefix, "_", sub("^qc_", "", names))

#' @export
print.scbridge_qc <- function(x, ...) {
  passed <- sum(x$qc_pass %in% TRUE)
  cat(sprintf("<scbridge QC of %s cells: %s pass, %s flagged>\n", format(nrow(x), big.mark = ","),
              format(passed, big.mark = ","), format(nrow(x) - passed, big.mark = ",")))
  print(utils::head(as.data.frame(unclass(x), stringsAsFactors = FALSE,
                                  row.names = rownames(x))), ...)
  if (nrow(x) > 6L) cat(sprintf("... %s more rows\n", format(nrow(x) - 6L, big.mark = ",")))
  invisible(x)
}

check_qc_option <- function(qc) {
  if (isTRUE(qc) || isFALSE(qc) || is.null(qc)) return(invisible(TRUE))
  if (is.data.frame(qc) && "cell" %in% names(qc)) return(invisible(TRUE))
  abort("`qc` must be TRUE, FALSE or a table from cell_qc().", code = "invalid_parameter")
}

# The QC columns beside the calls: computed by the engine (qc = TRUE, no doublet scores, as
# the core's annotate does), or taken from a cell_qc() table, which must cover every cell.
attach_qc <- function(result, qc, engine, m, source, value_kind) {
  if (is.null(qc) || isFALSE(qc)) return(result)
  if (isTRUE(qc)) {
    qc <- run_engine(engine, "qc", m, source,
                     list(value_kind = value_kind, doublets = FALSE, thresholds = list()))
  }
  rows <- match(result$cell, as.character(qc$cell))
  if (anyNA(rows)) {
    missing <- result$cell[is.na(rows)]
    abort(sprintf("The QC table has no row for %d of the %d cells (e.g. '%s'); compute it on the same data with cell_qc().",
                  length(missing), nrow(result), missing[[1L]]), code = "invalid_parameter")
  }
  for (name in setdiff(names(qc), c("cell", names(result)))) {
    result[[name]] <- qc[[name]][rows]
  }
  result
}

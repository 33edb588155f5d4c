#' Marker genes per cell type
#'
#' One-vs-rest differential expression for each label, computed by the core
#' (`bridge.markers`): the genes that set each called cell type apart.
#'
#' @inheritParams annotate_cells
#' @param labels The label of every cell. Default for an annotated Seurat
#'   object / SingleCellExperiment: the `prefix` column that
#'   [annotate_cells()] added. For a matrix: a vector with one label per
#'   column, or a calls data.frame.
#' @param top_n Marker genes per label.
#' @param method `"t-test"` or `"wilcoxon"`.
#' @param engine `"auto"` (python, then cli, then http), `"python"`, `"cli"`
#'   or `"http"`.
#' @return A data.frame with columns `label`, `gene`, `score`,
#'   `log2_fold_change`, `p_value`, `p_value_adjusted`, `fraction_in_label`,
#'   `fraction_in_rest`, best genes first within each label.
#' @examples
#' \dontrun{
#' seu <- annotate_cells(seu)
#' head(annotation_markers(seu))
#' }
#' @export
annotation_markers <- function(object, labels = NULL, assay = NULL, layer = NULL,
                               top_n = 50, method = c("t-test", "wilcoxon"),
                               engine = c("auto", "python", "cli", "http"), endpoint = NULL,
                               api_key = Sys.getenv("SCBRIDGE_API_KEY"), prefix = "cell_type",
                               ...) {
  method <- match.arg(method)
  found <- expression_matrix(object, assay, layer)
  m <- found$matrix
  labels <- cell_labels(object, labels, prefix, colnames(m))
  endpoint <- endpoint %||% default_endpoint()
  engine <- companion_engine(engine, endpoint)
  switch(engine,
    python = python_markers(m, found$source, labels, top_n, method, list(...)),
    cli = cli_markers(m, found$source, labels, top_n, method, list(...)),
    http = http_markers(m, found$source, labels, top_n, method, list(...), endpoint, api_key))
}

#' Per-cell embeddings, stored in the object
#'
#' A PCA embedding of every cell computed by the core (`bridge.embed`), added
#' to a Seurat object as a `DimReduc` or to a SingleCellExperiment as a
#' `reducedDim`.
#'
#' @inheritParams annotation_markers
#' @param n_components Dimensions of the embedding.
#' @param reduction Name of the reduction to add (Seurat `DimReduc`, SCE
#'   `reducedDim`).
#' @param overwrite Replace an existing reduction of that name.
#' @return The object with the embedding added; for a matrix, a cells x
#'   `n_components` numeric matrix.
#' @examples
#' \dontrun{
#' seu <- cell_embedding(seu, n_components = 20)
#' seu[["scbridge"]]
#' }
#' @export
cell_embedding <- function(object, n_components = 30, assay = NULL, layer = NULL,
                           engine = c("auto", "python", "cli", "http"), endpoint = NULL,
                           api_key = Sys.getenv("SCBRIDGE_API_KEY"), reduction = "scbridge",
                           overwrite = FALSE, ...) {
  found <- expression_matrix(object, assay, layer)
  m <- found$matrix
  endpoint <- endpoint %||% default_endpoint()
  engine <- companion_engine(engine, endpoint)
  if (inherits(object, "Seurat") || methods::is(object, "SummarizedExperiment")) {
    check_reduction(object, reduction, overwrite)
  }
  emb <- switch(engine,
    python = python_embed(m, found$source, n_components, list(...)),
    cli = cli_embed(m, found$source, n_components, list(...)),
    http = http_embed(m, found$source, n_components, list(...), endpoint, api_key))
  if (!identical(rownames(emb), colnames(m))) emb <- emb[colnames(m), , drop = FALSE]
  colnames(emb) <- paste0(reduction_key(reduction), seq_len(ncol(emb)))
  if (inherits(object, "Seurat")) {
    return(add_dimreduc(object, emb, reduction, assay %||% seurat_default_assay(object)))
  }
  if (methods::is(object, "SingleCellExperiment")) {
    SingleCellExperiment::reducedDim(object, reduction) <- emb[colnames(object), , drop = FALSE]
    return(object)
  }
  emb
}

companion_engine <- function(engine, endpoint) resolve_engine(engine, endpoint)

cell_labels <- function(object, labels, prefix, cells) {
  if (is.null(labels)) {
    if (inherits(object, "Seurat")) {
      meta <- attr(object, "meta.data")
      labels <- meta[[prefix]]
      if (!is.null(labels)) names(labels) <- rownames(meta)
    } else if (methods::is(object, "SummarizedExperiment")) {
      labels <- SummarizedExperiment::colData(object)[[prefix]]
      if (!is.null(labels)) names(labels) <- colnames(object)
    }
    if (is.null(labels)) {
      abort(sprintf(
        "No labels: the object has no '%s' column. Run annotate_cells() first, or pass labels = (one per cell).",
        prefix), kind = "not_found")
    }
    return(as.character(labels[cells]))
  }
  if (is.data.frame(labels)) {
    return(as.character(labels$label[match(cells, labels$cell)]))
  }
  if (is.character(labels) && length(labels) == 1L && inherits(object, "Seurat") &&
      labels %in% colnames(attr(object, "meta.data"))) {
    return(cell_labels(object, NULL, labels, cells))
  }
  if (length(labels) != length(cells)) {
    abort(sprintf("`labels` has %d values for %d cells; give one label per cell.",
                  length(labels), length(cells)))
  }
  if (!is.null(names(labels)) && all(cells %in% names(labels))) labels <- labels[cells]
  as.character(labels)
}

reduction_key <- function(reduction) {
  key <- gsub("[^A-Za-z0-9]", "", reduction)
  paste0(if (nzchar(key)) toupper(key) else "SCB", "_")
}

check_reduction <- function(object, reduction, overwrite) {
  existing <- if (inherits(object, "Seurat")) {
    names(attr(object, "reductions"))
  } else {
    SingleCellExperiment::reducedDimNames(object)
  }
  if (reduction %in% existing && !isTRUE(overwrite)) {
    abort(sprintf("The object already has a reduction '%s'; pass overwrite = TRUE or another reduction name.",
                  reduction), kind = "clash")
  }
}

add_dimreduc <- function(object, emb, reduction, assay) {
  need_package("SeuratObject", "Storing an embedding in a Seurat object")
  emb <- emb[seurat_cells(object), , drop = FALSE]
  dr <- SeuratObject::CreateDimReducObject(embeddings = emb, key = reduction_key(reduction),
                                           assay = assay, misc = list(scbridge = TRUE))
  reductions <- attr(object, "reductions") %||% list()
  reductions[[reduction]] <- dr
  # Set the slot directly: `[[<-` would ask SeuratObject 4 about a v5 assay it cannot read.
  attr(object, "reductions") <- reductions
  object
}

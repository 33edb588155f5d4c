#' Marker genes per cell type, in the shape of Seurat's FindAllMarkers()
#'
#' One-vs-rest differential expression for each label, computed by the core
#' (`bridge.rank_marker_genes`): the genes that set each called cell type
#' apart.
#'
#' @inheritParams annotate_cells
#' @param labels The label of every cell. Default for an annotated Seurat
#'   object / SingleCellExperiment: the `prefix` column that
#'   [annotate_cells()] added; or the name of another cell metadata column. For
#'   a matrix: a vector with one label per column, or a calls data.frame.
#' @param top_n Marker genes per label.
#' @param method `"t-test"` or `"wilcoxon"`.
#' @param min_cells Labels with fewer cells are left out (with a warning).
#' @param engine `"auto"` (python, then cli, then http), `"python"`, `"cli"`
#'   or `"http"`.
#' @param prefix The annotation's `prefix` (for the default `labels`).
#' @return A data.frame with FindAllMarkers()'s columns, best genes first within
#'   each label: `p_val`, `avg_log2FC`, `pct.1` (fraction of the label's cells
#'   expressing the gene), `pct.2` (fraction of the other cells), `p_val_adj`
#'   (Benjamini-Hochberg within the label), `cluster` (the label, a factor),
#'   `gene` (the gene symbol, as in [calls()]'s markers, also for Ensembl
#'   ids), then `gene_id` (the gene id as the object has it) and `score` (t or
#'   z statistic). Row names are the genes, made unique as Seurat does.
#' @examples
#' if (scbridge_available()) {
#'   seu <- annotate_cells(SeuratObject::pbmc_small)
#'   head(annotation_markers(seu, top_n = 5, min_cells = 2))
#'   # any other labels of the cells
#'   head(annotation_markers(seu, labels = "RNA_snn_res.1", top_n = 5))
#' }
#' @export
annotation_markers <- function(object, ..., labels = NULL, top_n = 50,
                               method = c("t-test", "wilcoxon"), min_cells = 3, assay = NULL,
                               layer = NULL, slot = NULL, value_kind = NULL,
                               engine = c("auto", "python", "cli", "http"), endpoint = NULL,
                               api_key = Sys.getenv("SCBRIDGE_API_KEY"), prefix = "cell_type",
                               verbose = default_verbose()) {
  check_dots(list(...), annotation_markers)
  with_verbosity(verbose, {
    method <- check_choice(method, c("t-test", "wilcoxon"), "method")
    for (arg in c("top_n", "min_cells")) {
      value <- get(arg)
      if (!is.numeric(value) || length(value) != 1L || is.na(value) || value < 1) {
        abort(sprintf("`%s` must be a positive whole number.", arg), code = "invalid_parameter")
      }
    }
    value_kind <- check_value_kind(value_kind)
    endpoint <- endpoint %||% default_endpoint()
    found <- companion_matrix(object, assay, layer_argument(layer, slot))
    m <- found$matrix
    labels <- cell_labels(object, labels, prefix, colnames(m))
    eng <- choose_engine(engine, endpoint, "markers")
    done <- progress_step(sprintf("Ranking marker genes of %d labels with the %s engine",
                                  length(unique(stats::na.omit(labels))), eng$name))
    table <- run_engine(eng, "markers", m, found$source, list(
      labels = labels, top_n = as.integer(top_n), method = method, value_kind = value_kind,
      params = list(min_cells = as.integer(min_cells)), endpoint = endpoint, api_key = api_key))
    done()
    find_all_markers_shape(table, gene_symbols_for(table$gene, eng))
  })
}

# The core's markers table (label, gene, score, log2_fold_change, p_value, p_value_adjusted,
# fraction_in_label, fraction_in_rest) in FindAllMarkers()'s shape.
find_all_markers_shape <- function(table, symbols) {
  n <- NROW(table)
  column <- function(name, type) if (n) as.vector(table[[name]], type) else vector(type, 0L)
  labels <- column("label", "character")
  out <- data.frame(
    p_val = column("p_value", "double"),
    avg_log2FC = column("log2_fold_change", "double"),
    pct.1 = column("fraction_in_label", "double"),
    pct.2 = column("fraction_in_rest", "double"),
    p_val_adj = column("p_value_adjusted", "double"),
    cluster = factor(labels, levels = sort(unique(labels), method = "radix")),
    gene = if (n) symbols else character(0),
    gene_id = column("gene", "character"),
    score = column("score", "double"),
    stringsAsFactors = FALSE, check.names = FALSE)
  rownames(out) <- make.unique(out$gene)
  out
}

# Gene symbols for gene ids as the core maps them for annotation (Ensembl ids, mouse
# symbols): by the engine itself where it can, else by the python engine where available;
# else the ids stay, with a warning when they are not symbols.
gene_symbols_for <- function(genes, engine) {
  genes <- as.character(genes)
  if (!length(genes) || !looks_ensembl(genes)) return(genes)
  mapper <- engine$gene_symbols %||%
    (if (is.null(python_status())) python_engine()$gene_symbols)
  if (is.null(mapper)) {
    warn(sprintf(paste("The marker genes are Ensembl ids (e.g. %s); mapping them to symbols",
                       "needs the python engine, so `gene` holds the ids."), genes[[1L]]),
         code = "gene_symbols")
    return(genes)
  }
  mapper(genes)
}

companion_matrix <- function(object, assay, layer) {
  if (inherits(object, "Seurat") || methods::is(object, "SummarizedExperiment")) {
    return(find_matrix(object, assay, layer))
  }
  expression_matrix(object)
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
#' @param n_top_genes Highly variable genes the embedding is computed on.
#' @param seed Seed of the solver.
#' @return The object with the embedding added; for a matrix, a cells x
#'   `n_components` numeric matrix.
#' @examples
#' if (scbridge_available()) {
#'   seu <- cell_embedding(SeuratObject::pbmc_small, n_components = 5)
#'   seu[["scbridge"]]
#' }
#' @export
cell_embedding <- function(object, ..., n_components = 30, n_top_genes = 2000, seed = 0,
                           assay = NULL, layer = NULL, slot = NULL, value_kind = NULL,
                           engine = c("auto", "python", "cli", "http"), endpoint = NULL,
                           api_key = Sys.getenv("SCBRIDGE_API_KEY"), reduction = "scbridge",
                           overwrite = FALSE, verbose = default_verbose()) {
  check_dots(list(...), cell_embedding)
  with_verbosity(verbose, {
    value_kind <- check_value_kind(value_kind)
    endpoint <- endpoint %||% default_endpoint()
    found <- companion_matrix(object, assay, layer_argument(layer, slot))
    m <- found$matrix
    eng <- choose_engine(engine, endpoint, "embed")
    if (inherits(object, "Seurat") || methods::is(object, "SummarizedExperiment")) {
      check_reduction(object, reduction, overwrite)
    }
    done <- progress_step(sprintf("Embedding %s cells with the %s engine",
                                  format(ncol(m), big.mark = ","), eng$name))
    emb <- run_engine(eng, "embed", m, found$source, list(
      n_components = as.integer(n_components), value_kind = value_kind,
      params = list(n_top_genes = as.integer(n_top_genes), seed = as.integer(seed)),
      endpoint = endpoint, api_key = api_key))
    done()
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
  })
}

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
        prefix), code = "not_found")
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
                  length(labels), length(cells)), code = "invalid_parameter")
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
                  reduction), code = "clash")
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

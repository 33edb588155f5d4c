#' Annotate cells with cell types
#'
#' Calls a cell type for every cell of a Seurat object (v3/v4 `Assay` or v5
#' `Assay5`, split layers such as `counts.A`, `counts.B` joined in the object's
#' cell order), a SingleCellExperiment, or a genes x cells sparse matrix.
#'
#' Every engine sends the same matrix (the `dgCMatrix` slots `p`, `i`, `x`,
#' which are the cells x genes CSR arrays, never a dense copy) to the same core
#' and gives identical calls:
#'
#' * `"python"`: the scbridge Python core in this R session via reticulate.
#' * `"cli"`: the `scbridge annotate` command in a subprocess.
#' * `"http"`: `scbridge serve` or any endpoint of the same contract.
#' * `"auto"` (default): the first of these that is available.
#'
#' Gene ids should be gene symbols; Ensembl ids (`ENSG...`) are mapped to
#' symbols by the core. Ids of neither kind fail with an error of class
#' `scbridge_error_gene_ids`.
#'
#' @param object A Seurat object, a SingleCellExperiment, or a genes x cells
#'   matrix (`dgCMatrix`, any other `Matrix`, a dense matrix).
#' @param model The annotation model, e.g. `"markers"` (the built-in marker
#'   model) or `"reference"` (with `atlas`).
#' @param atlas The reference atlas the model uses (a file path for the local
#'   engines, an atlas name the server offers for `http`), or `NULL`.
#' @param assay For Seurat: the assay (default: the active assay). For a
#'   SingleCellExperiment: the assay name (same as `layer`), or
#'   `"altexp:NAME"` for its alternative experiment `NAME` (then `layer` names
#'   the altExp's assay).
#' @param layer The layer, e.g. `"counts"` or `"data"`; for Seurat v5 a layer
#'   name matches its split layers too (`"counts"` joins `counts.A`,
#'   `counts.B`, ...). `NULL` (default): `counts`, or, with a warning, `data`
#'   (SCE: `logcounts`) when there are no counts, as in an `SCTAssay` whose
#'   counts were dropped. These rules are the Python core's own (one file,
#'   `system.file("extdata", "layer_rules.tsv", package = "scbridge")`).
#' @param engine One of `"auto"`, `"python"`, `"cli"`, `"http"`.
#' @param endpoint For `http`: the server's base URL, e.g.
#'   `"http://127.0.0.1:8000"` (default: `options(scbridge.endpoint)` or env
#'   `SCBRIDGE_ENDPOINT`).
#' @param api_key For `http`: the API key, sent as a Bearer token.
#' @param chunk_size Cells per chunk (per request for `http`).
#' @param min_confidence `NULL`, or a number in \[0, 1\]: cells whose
#'   confidence is below it get the label `"Unknown"` (the raw call is kept in
#'   the calls' `label_raw`).
#' @param prefix Names of the added columns: `prefix`,
#'   `paste0(prefix, "_confidence")`, `paste0(prefix, "_ontology")`.
#' @param overwrite Replace existing columns of those names (else an error).
#' @param ... Engine parameters passed to the core's engine, e.g.
#'   `min_gene_fraction = 0.05` to annotate a small gene panel (the share of the
#'   model's genes an object must hold; python and cli engines) or
#'   `tissue = "lung"`. The cli engine passes `min_gene_fraction` and `tissue`.
#' @return For a Seurat object or SingleCellExperiment: the object, with the
#'   three columns added to `meta.data` / `colData` and the full calls in
#'   `object@misc$scbridge` / `metadata(object)$scbridge` (see [calls()]). For a
#'   matrix: the calls data.frame.
#' @examples
#' \dontrun{
#' seu <- annotate_cells(seu)
#' table(seu$cell_type)
#' head(calls(seu))
#' seu <- annotate_cells(seu, engine = "http", endpoint = "http://127.0.0.1:8000",
#'                       api_key = Sys.getenv("SCBRIDGE_API_KEY"))
#' }
#' @export
annotate_cells <- function(object, model = "markers", atlas = NULL, assay = NULL,
                           layer = NULL, engine = c("auto", "python", "cli", "http"),
                           endpoint = NULL, api_key = Sys.getenv("SCBRIDGE_API_KEY"),
                           chunk_size = 50000, min_confidence = NULL, prefix = "cell_type",
                           ...) {
  UseMethod("annotate_cells")
}

#' @rdname annotate_cells
#' @export
annotate_cells.Seurat <- function(object, model = "markers", atlas = NULL, assay = NULL,
                                  layer = NULL, engine = c("auto", "python", "cli", "http"),
                                  endpoint = NULL, api_key = Sys.getenv("SCBRIDGE_API_KEY"),
                                  chunk_size = 50000, min_confidence = NULL,
                                  prefix = "cell_type", overwrite = FALSE, ...) {
  annotate_object(object, model, atlas, assay, layer, engine, endpoint, api_key, chunk_size,
                  min_confidence, prefix, overwrite, list(...))
}

#' @rdname annotate_cells
#' @export
annotate_cells.SummarizedExperiment <- function(object, model = "markers", atlas = NULL,
                                                assay = NULL, layer = NULL,
                                                engine = c("auto", "python", "cli", "http"),
                                                endpoint = NULL,
                                                api_key = Sys.getenv("SCBRIDGE_API_KEY"),
                                                chunk_size = 50000, min_confidence = NULL,
                                                prefix = "cell_type", overwrite = FALSE, ...) {
  need_package("SummarizedExperiment", "Annotating a SingleCellExperiment")
  annotate_object(object, model, atlas, assay, layer, engine, endpoint, api_key, chunk_size,
                  min_confidence, prefix, overwrite, list(...))
}

#' @rdname annotate_cells
#' @export
annotate_cells.Matrix <- function(object, model = "markers", atlas = NULL, assay = NULL,
                                  layer = NULL, engine = c("auto", "python", "cli", "http"),
                                  endpoint = NULL, api_key = Sys.getenv("SCBRIDGE_API_KEY"),
                                  chunk_size = 50000, min_confidence = NULL,
                                  prefix = "cell_type", overwrite = FALSE, ...) {
  # `prefix` and `overwrite` name object columns; a matrix has none, its calls come back.
  found <- expression_matrix(object)
  run_annotation(found, model, atlas, engine, endpoint, api_key, chunk_size, min_confidence,
                 list(...))
}

#' @rdname annotate_cells
#' @export
annotate_cells.matrix <- annotate_cells.Matrix

#' @rdname annotate_cells
#' @export
annotate_cells.default <- function(object, ...) {
  if (methods::is(object, "DelayedArray")) return(annotate_cells.Matrix(object, ...))
  abort(sprintf(
    "annotate_cells() has no method for class %s; give a Seurat object, a SingleCellExperiment, or a genes x cells matrix.",
    class(object)[[1L]]), kind = "unsupported")
}

annotate_object <- function(object, model, atlas, assay, layer, engine, endpoint, api_key,
                            chunk_size, min_confidence, prefix, overwrite, params) {
  check_prefix(prefix)
  names <- result_columns(prefix)
  # Refuse a clash before the (possibly long) annotation, not after it.
  check_clash(object, names, overwrite)
  found <- expression_matrix(object, assay, layer)
  result <- run_annotation(found, model, atlas, engine, endpoint, api_key, chunk_size,
                           min_confidence, params)
  cells <- object_cells(object)
  row <- match(cells, result$cell)
  columns <- list(result$label[row], result$confidence[row], result$ontology_id[row])
  names(columns) <- names
  object <- add_cell_columns(object, columns, overwrite)
  provenance <- attr(result, "provenance")
  attr(result, "provenance") <- NULL
  store_results(object, prefix, list(calls = result, provenance = provenance))
}

result_columns <- function(prefix) {
  c(prefix, paste0(prefix, "_confidence"), paste0(prefix, "_ontology"))
}

check_prefix <- function(prefix) {
  if (!is.character(prefix) || length(prefix) != 1L || is.na(prefix) || !nzchar(prefix)) {
    abort("`prefix` must be one non-empty string, e.g. \"cell_type\".")
  }
}

object_cells <- function(object) {
  if (inherits(object, "Seurat")) return(seurat_cells(object))
  colnames(object)
}

check_arguments <- function(model, atlas, chunk_size) {
  if (!is.character(model) || length(model) != 1L || !nzchar(model)) {
    abort("`model` must be one model name, e.g. \"markers\".")
  }
  if (!is.null(atlas) && (!is.character(atlas) || length(atlas) != 1L)) {
    abort("`atlas` must be NULL or one atlas name / path.")
  }
  if (!is.numeric(chunk_size) || length(chunk_size) != 1L || is.na(chunk_size) ||
      chunk_size < 1 || chunk_size != round(chunk_size)) {
    abort("`chunk_size` must be a positive whole number of cells.")
  }
}

# The engine-independent part: checks, engine choice, the call, the threshold.
run_annotation <- function(found, model, atlas, engine, endpoint, api_key, chunk_size,
                           min_confidence, params) {
  check_arguments(model, atlas, chunk_size)
  if (!is.null(min_confidence)) apply_min_confidence(data.frame(confidence = numeric(0), label = character(0)), min_confidence)
  endpoint <- endpoint %||% default_endpoint()
  engine <- resolve_engine(engine, endpoint)
  m <- found$matrix
  check_values(m, found$source)
  if (looks_ensembl(rownames(m))) {
    message("scbridge: the gene ids look like Ensembl ids (", rownames(m)[[1L]],
            ", ...); the core maps them to gene symbols.")
  }
  chunk_size <- as.integer(min(chunk_size, .Machine$integer.max))
  started <- Sys.time()
  result <- switch(engine,
    python = python_annotate(m, found$source, model, atlas, chunk_size, params),
    cli = cli_annotate(m, found$source, model, atlas, chunk_size, params),
    http = http_annotate(m, found$source, model, atlas, chunk_size, params, endpoint, api_key))
  result <- apply_min_confidence(result, min_confidence)
  attr(result, "provenance") <- list(
    engine = engine, model = model, atlas = atlas, source = found$source,
    min_confidence = min_confidence, parameters = params,
    endpoint = if (engine == "http") endpoint else NULL,
    seconds = as.double(difftime(Sys.time(), started, units = "secs")),
    package_version = as.character(utils::packageVersion("scbridge")))
  result
}

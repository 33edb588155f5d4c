#' Annotate cells with cell types
#'
#' Calls a cell type for every cell of a Seurat object (v3/v4 `Assay` or v5
#' `Assay5`, split layers such as `counts.A`, `counts.B` joined in the object's
#' cell order), a SingleCellExperiment, or a genes x cells matrix, and stores
#' the calls per cell.
#'
#' Every engine sends the same matrix (the `dgCMatrix` slots `p`, `i`, `x`,
#' which are the cells x genes CSR arrays, never a dense copy) to the same core
#' and gives identical calls:
#'
#' * `"python"`: the scbridge Python core in this R session via reticulate.
#' * `"cli"`: the `scbridge annotate` command in a subprocess.
#' * `"http"`: `scbridge serve` or any endpoint of the same contract.
#' * `"auto"` (default): the first of these that is available; it says once
#'   per session which one it chose and why.
#'
#' **Which layer.** Give raw counts (`layer = "counts"`, the default where they
#' exist): the models normalise them themselves. Log-normalised values
#' (`"data"`, `"logcounts"`) work too but give somewhat different calls (about
#' one cell in ten differs on PBMCs), because a layer's normalisation is not
#' the model's. Normalised but unlogged values (TPM, CPM, FPKM) need
#' `value_kind = "normalized"`. Non-integer values in a counts layer get a
#' warning of class `scbridge_warning_non_integer_counts`; a matrix without any
#' expression an error of class `scbridge_error_empty_cells`.
#'
#' **Gene ids** should be gene symbols; Ensembl ids (`ENSG...`) and mouse
#' symbols are mapped to human symbols by the core. Ids of neither kind fail
#' with an error of class `scbridge_error_gene_ids`; a matrix that looks
#' transposed (cells x genes) with one of class `scbridge_error_transposed`.
#'
#' **Messages.** The core's warnings become R warnings of class
#' `scbridge_warning_core`, its notes messages of class `scbridge_message`, and
#' `verbose = TRUE` shows the steps with the cli package, so
#' `suppressWarnings()`, `suppressMessages()` and `tryCatch()` work as usual.
#'
#' @param object A Seurat object, a SingleCellExperiment, or a genes x cells
#'   matrix (`dgCMatrix`, any other `Matrix`, a dense matrix, a `DelayedArray`).
#' @param ... Must be empty: an unknown argument is refused with an error of
#'   class `scbridge_error_unknown_parameter` that lists the valid ones.
#' @param model The annotation model: `"markers"` (the built-in marker model;
#'   the default) or `"reference"` (the default when `reference` is given).
#' @param reference For `model = "reference"`: a reference file written by
#'   [build_reference()] (or `scbridge build-reference`), the object
#'   [build_reference()] returns, or a labelled Seurat object /
#'   SingleCellExperiment with `reference_labels` naming its label column (a
#'   reference is then built from it first). Local engines only; over `http`
#'   name one of the server's atlases with `atlas`.
#' @param reference_labels With a labelled object as `reference`: its cell
#'   metadata column of cell-type labels.
#' @param tissue For the markers model: the tissue the cells come from, as a
#'   name or UBERON id (`"lung"`, `"UBERON:0002048"`), or `"auto"` (default):
#'   the model works it out from the cells; `"all"` puts every type on equal
#'   terms, `"unknown"` expects only the types found in every tissue.
#' @param level Which depth of the call goes into the main column: `"label"`
#'   (default: the call itself, as deep as the evidence allows), `"l2"` (its
#'   lineage, e.g. T cell) or `"l1"` (its compartment, e.g. immune). Every depth
#'   the model reports is stored: columns `<prefix>_l1`, `<prefix>_l2`, and
#'   `<prefix>_label` (the call itself) when `level` is not `"label"`.
#' @param groups Cluster-level labels: a cell metadata column (e.g.
#'   `"seurat_clusters"`) or one value per cell. Each group gets its most
#'   frequent label (at `level`), stored as `<prefix>_smoothed` with its share
#'   of the group as `<prefix>_smoothed_confidence`; per-cell calls stay.
#' @param min_confidence `NULL`, or a number in \[0, 1\]: cells whose
#'   confidence is below it get the label `"Unknown"` (the raw call is kept in
#'   the calls' `label_raw`).
#' @param qc `FALSE` (default), `TRUE` to compute per-cell QC metrics with the
#'   annotation (no doublet scores: see [cell_qc()]), or a table from
#'   [cell_qc()] to attach. QC columns go to [calls()]; nothing is filtered.
#' @param assay For Seurat: the assay (default: the active assay). For a
#'   SingleCellExperiment: the assay name (same as `layer`).
#' @param layer The layer, e.g. `"counts"` (default) or `"data"`; for Seurat v5
#'   a layer name matches its split layers too (`"counts"` joins `counts.A`,
#'   `counts.B`, ...).
#' @param slot Seurat 4's name for `layer`, accepted as such.
#' @param value_kind What the values are when the default guess (whole numbers
#'   are counts) is wrong: `"counts"`, `"lognorm"` or `"normalized"` (TPM, CPM,
#'   FPKM: normalised, not logged).
#' @param min_gene_fraction Refuse inputs holding fewer of the model's genes
#'   than this fraction (default: the model's own, 0.02 of the candidate panel
#'   for markers, 0.5 for reference); lower it for small targeted panels. Every
#'   engine (http sends it to the service).
#' @param engine One of `"auto"`, `"python"`, `"cli"`, `"http"`.
#' @param endpoint For `http`: the server's base URL, e.g.
#'   `"http://127.0.0.1:8000"` (default: `options(scbridge.endpoint)` or env
#'   `SCBRIDGE_ENDPOINT`).
#' @param api_key For `http`: the API key, sent as a Bearer token.
#' @param atlas The model's database by name: for `http` an atlas the server
#'   offers, for the local engines a file (a marker database, or a reference
#'   file: prefer `reference`).
#' @param chunk_size Cells per chunk (per request for `http`); the calls do not
#'   depend on it.
#' @param prefix Names of the added columns: `prefix`,
#'   `paste0(prefix, "_confidence")`, `paste0(prefix, "_ontology")`, ... and
#'   `paste0(prefix, "_key")`, which [calls()] finds each cell's calls by.
#' @param overwrite Replace existing columns of those names (else an error of
#'   class `scbridge_error_clash`, raised before any computation).
#' @param set_ident `TRUE` to set the cell identities to the labels
#'   (`Idents()` of a Seurat object, `colLabels()` of a SingleCellExperiment);
#'   with `groups`, to the cluster-level labels.
#' @param flatten For a matrix: `TRUE` for plain columns (alternates as
#'   `"label:score;..."`, markers as `"GENE;GENE"`), e.g. for `write.csv()`.
#' @param verbose Show progress and the core's notes (default:
#'   `options(scbridge.verbose)`, else `TRUE`).
#' @return For a Seurat object or SingleCellExperiment: the object, with the
#'   columns added to `meta.data` / `colData` and the full calls kept in it (see
#'   [calls()]). For a matrix: the calls data.frame, row names the cell ids (see
#'   [calls()] for its columns).
#' @seealso [calls()] for the full calls, [build_reference()],
#'   [cell_qc()], [annotation_markers()], [scbridge_engines()].
#' @examples
#' if (scbridge_available()) {
#'   # pbmc_small holds 230 genes: the core warns that calls may be less
#'   # reliable than on a whole transcriptome
#'   seu <- suppressWarnings(annotate_cells(SeuratObject::pbmc_small))
#'   table(seu$cell_type)
#'   head(seu[[c("cell_type", "cell_type_confidence")]])
#'
#'   # cluster-level labels, as the identities (level = "l2" would put the
#'   # lineages there, with a model that reports them)
#'   seu <- annotate_cells(seu, groups = "RNA_snn_res.1", prefix = "by_cluster",
#'                         set_ident = TRUE)
#'   table(SeuratObject::Idents(seu))
#'
#'   # a matrix gives the calls themselves, one row per cell
#'   counts <- SeuratObject::GetAssayData(SeuratObject::pbmc_small, slot = "counts")
#'   head(annotate_cells(counts, flatten = TRUE))
#' }
#' @export
annotate_cells <- function(object, ...) {
  UseMethod("annotate_cells")
}

#' @rdname annotate_cells
#' @export
annotate_cells.Seurat <- function(object, ..., model = NULL, reference = NULL,
                                  reference_labels = NULL, tissue = "auto",
                                  level = c("label", "l2", "l1"), groups = NULL,
                                  min_confidence = NULL, qc = FALSE, assay = NULL,
                                  layer = NULL, slot = NULL, value_kind = NULL,
                                  min_gene_fraction = NULL,
                                  engine = c("auto", "python", "cli", "http"), endpoint = NULL,
                                  api_key = Sys.getenv("SCBRIDGE_API_KEY"), atlas = NULL,
                                  chunk_size = 50000, prefix = "cell_type", overwrite = FALSE,
                                  set_ident = FALSE, verbose = default_verbose()) {
  check_dots(list(...), annotate_cells.Seurat)
  opts <- mget(setdiff(names(formals()), c("object", "...")))
  with_verbosity(verbose, annotate_object(object, opts))
}

#' @rdname annotate_cells
#' @export
annotate_cells.SummarizedExperiment <- annotate_cells.Seurat

#' @rdname annotate_cells
#' @export
annotate_cells.Matrix <- function(object, ..., model = NULL, reference = NULL,
                                  reference_labels = NULL, tissue = "auto",
                                  level = c("label", "l2", "l1"), groups = NULL,
                                  min_confidence = NULL, qc = FALSE, value_kind = NULL,
                                  min_gene_fraction = NULL,
                                  engine = c("auto", "python", "cli", "http"), endpoint = NULL,
                                  api_key = Sys.getenv("SCBRIDGE_API_KEY"), atlas = NULL,
                                  chunk_size = 50000, flatten = FALSE,
                                  verbose = default_verbose()) {
  check_dots(list(...), annotate_cells.Matrix)
  opts <- mget(setdiff(names(formals()), c("object", "...")))
  with_verbosity(verbose, annotate_matrix(object, opts))
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
    class(object)[[1L]]), code = "unsupported")
}

# -- the work --------------------------------------------------------------------------------
annotate_matrix <- function(object, opts) {
  opts <- check_annotation_options(opts)
  check_flag(opts$flatten, "flatten")
  engine <- choose_engine(opts$engine, opts$endpoint)
  found <- expression_matrix(object)
  m <- found$matrix
  check_orientation(m, "The matrix")
  groups <- matrix_groups(opts$groups, colnames(m))
  result <- run_annotation(found, engine, opts, groups)
  rownames(result) <- result$cell
  if (opts$flatten) result <- flatten_calls(result)
  result
}

annotate_object <- function(object, opts) {
  opts <- check_annotation_options(opts)
  check_string(opts$prefix, "prefix", null_ok = FALSE, example = "cell_type")
  check_flag(opts$overwrite, "overwrite")
  check_flag(opts$set_ident, "set_ident")
  cells <- object_cells(object)
  groups <- object_groups(object, opts$groups, cells)
  # Refuse a clash before the (possibly long) annotation, not after it.
  names <- result_columns(opts$prefix)
  if (is.null(groups)) names <- names[!names(names) %in% c("smoothed", "smoothed_confidence")]
  check_clash(object, names, opts$overwrite)
  engine <- choose_engine(opts$engine, opts$endpoint)
  done <- progress_step("Reading the expression matrix")
  found <- find_matrix(object, opts$assay, opts$layer)
  done()
  m <- found$matrix
  result <- run_annotation(found, engine, opts, groups[match(colnames(m), cells)])
  run <- new_run_id()
  columns <- object_columns(result, opts$prefix, opts$level, run)
  rows <- match(cells, result$cell)
  columns <- lapply(columns, `[`, rows)
  previous <- stored_runs(object, opts$prefix)
  stale <- setdiff(unlist(lapply(previous, function(r) r$provenance$columns)), names(columns))
  object <- add_cell_columns(object, columns, opts$overwrite, drop = stale)
  provenance <- attr(result, "provenance")
  provenance$columns <- names(columns)
  provenance$run <- run
  attr(result, "provenance") <- NULL
  rownames(result) <- paste0(run, ":", result$cell)  # the keys in <prefix>_key
  object <- store_results(object, opts$prefix,
                          list(calls = result, provenance = provenance, run = run))
  if (opts$set_ident) {
    values <- columns[[result_columns(opts$prefix)[[if (is.null(groups)) "label" else "smoothed"]]]]
    object <- set_identities(object, values, cells)
  }
  object
}

# Checks every argument before any computation; fills in the defaults that depend on others.
check_annotation_options <- function(opts) {
  opts$level <- check_level(opts$level)
  opts$engine <- check_choice(opts$engine, c("auto", engine_names), "engine")
  opts$value_kind <- check_value_kind(opts$value_kind)
  opts$chunk_size <- check_chunk_size(opts$chunk_size)
  check_min_confidence(opts$min_confidence)
  check_fraction(opts$min_gene_fraction, "min_gene_fraction")
  check_string(opts$model, "model", example = "markers")
  check_string(opts$atlas, "atlas")
  check_string(opts$assay, "assay")
  opts$layer <- layer_argument(opts$layer, opts$slot)
  check_string(opts$layer, "layer", example = "counts")
  opts$params <- c(tissue_param(opts$tissue),
                   if (!is.null(opts$min_gene_fraction)) {
                     list(min_gene_fraction = opts$min_gene_fraction)
                   })
  opts$model <- opts$model %||% (if (is.null(opts$reference)) "markers" else "reference")
  check_reference_options(opts)
  check_qc_option(opts$qc)
  opts$endpoint <- opts$endpoint %||% default_endpoint()
  opts
}

check_reference_options <- function(opts) {
  if (!is.null(opts$reference) && opts$model != "reference") {
    abort(sprintf("`reference` goes with model = \"reference\", not \"%s\".", opts$model),
          code = "invalid_parameter")
  }
  if (opts$model == "reference" && is.null(opts$reference) && is.null(opts$atlas)) {
    abort(c("model = \"reference\" needs a reference:",
            "reference = a file from build_reference(), or a labelled object with reference_labels = (its label column)."),
          code = "invalid_parameter")
  }
  invisible(TRUE)
}

find_matrix <- function(object, assay, layer) {
  # Without a layer, the rules of expression_matrix() choose (R/matrix.R).
  if (is.null(layer)) expression_matrix(object, assay) else expression_matrix(object, assay, layer)
}

object_cells <- function(object) {
  if (inherits(object, "Seurat")) return(seurat_cells(object))
  colnames(object)
}

# groups = a cell metadata column name, or one value per cell (in `cells` order).
object_groups <- function(object, groups, cells) {
  if (is.null(groups)) return(NULL)
  if (is.character(groups) && length(groups) == 1L && length(cells) != 1L) {
    meta <- cell_metadata(object)
    if (!groups %in% colnames(meta)) {
      abort(sprintf("groups = \"%s\" is not a cell metadata column; the columns are: %s.",
                    groups, paste(colnames(meta), collapse = ", ")), code = "not_found")
    }
    return(as.character(meta[[groups]]))
  }
  matrix_groups(groups, cells)
}

matrix_groups <- function(groups, cells) {
  if (is.null(groups)) return(NULL)
  if (is.factor(groups)) groups <- as.character(groups)
  if (!is.atomic(groups) || length(groups) != length(cells)) {
    abort(sprintf("`groups` has %d values for %d cells; give one group per cell (or, for an object, a cell metadata column name).",
                  length(groups), length(cells)), code = "invalid_parameter")
  }
  if (!is.null(names(groups)) && all(cells %in% names(groups))) groups <- groups[cells]
  as.character(groups)
}

# The engine-independent part: checks of the values, the reference, the call, then what R
# adds for every engine alike (smoothing, the threshold, QC).
run_annotation <- function(found, engine, opts, groups) {
  started <- Sys.time()
  m <- found$matrix
  check_values(m, found$source)
  kind <- check_expression(m, found$source, found$layer, opts$value_kind)
  # A kind the user named goes to the engine; a detected one is the engine's to detect too.
  value_kind <- if (isTRUE(attr(kind, "detected"))) NULL else kind
  if (looks_ensembl(rownames(m))) {
    inform("the gene ids look like Ensembl ids (", rownames(m)[[1L]],
           ", ...); the core maps them to gene symbols.")
  }
  if (isTRUE(opts$qc) && is.null(engine$qc)) {
    abort(c(sprintf("qc = TRUE needs the python or cli engine; the %s engine computes no QC.",
                    engine$name),
            "Compute the QC table with cell_qc(object, engine = \"python\") and pass it as qc = ."),
          code = "unsupported")
  }
  atlas <- reference_atlas(opts, engine)
  request <- list(model = opts$model, atlas = atlas, chunk_size = opts$chunk_size,
                  value_kind = value_kind, params = opts$params, endpoint = opts$endpoint,
                  api_key = opts$api_key)
  done <- progress_step(sprintf("Annotating %s cells with the %s engine",
                                format(ncol(m), big.mark = ","), engine$name))
  result <- with_gene_id_hint(m, run_engine(engine, "annotate", m, found$source, request))
  done()
  level <- level_values(result, opts$level)
  if (!is.null(groups)) result <- add_smoothed_values(result, level, groups)
  result <- apply_min_confidence(result, opts$min_confidence)
  result <- attach_qc(result, opts$qc, engine, m, found$source, value_kind)
  attr(result, "provenance") <- list(
    engine = engine$name, model = opts$model, atlas = atlas,
    reference = if (inherits(opts$reference, "scbridge_reference")) opts$reference$file else
      if (is.character(opts$reference)) opts$reference,
    tissue = opts$tissue, level = opts$level, source = found$source, layer = found$layer,
    value_kind = as.vector(kind), min_confidence = opts$min_confidence,
    groups = if (is.character(opts$groups) && length(opts$groups) == 1L) opts$groups else
      if (!is.null(groups)) "per-cell values",
    parameters = opts$params, endpoint = if (engine$name == "http") opts$endpoint,
    seconds = as.double(difftime(Sys.time(), started, units = "secs")),
    package_version = as.character(utils::packageVersion("scbridge")))
  result
}

add_smoothed_values <- function(result, labels, groups) {
  voted <- majority_by_group(labels, groups)
  result$label_smoothed <- voted$label
  result$smoothed_confidence <- voted$share
  result
}

# A gene-id error on a matrix that may be transposed gets that as its hint.
with_gene_id_hint <- function(m, expr) {
  withCallingHandlers(expr, scbridge_error_gene_ids = function(e) {
    hint <- transposed_hint(m)
    if (!is.null(hint) && !inherits(e, "scbridge_error_transposed")) {
      e$hint <- paste(c(if (length(e$hint) && nzchar(e$hint)) e$hint, hint), collapse = "; ")
      stop(e)
    }
  })
}

# The atlas the engine is given: the reference file (built first from a labelled object),
# else `atlas`.
reference_atlas <- function(opts, engine) {
  reference <- opts$reference
  if (is.null(reference)) return(opts$atlas)
  if (engine$name == "http") {
    abort(c("A reference is a local file or object; the http engine cannot send it.",
            "Over http name one of the server's atlases with atlas = , or use the python or cli engine."),
          code = "unsupported")
  }
  if (inherits(reference, "scbridge_reference")) reference <- reference$file
  if (is.character(reference)) {
    check_string(reference, "reference")
    if (!file.exists(reference)) {
      abort(sprintf("The reference file '%s' does not exist; build one with build_reference().",
                    reference), code = "not_found")
    }
    return(normalizePath(reference))
  }
  if (inherits(reference, "Seurat") || methods::is(reference, "SummarizedExperiment")) {
    if (is.null(opts$reference_labels)) {
      abort(c("A labelled object as `reference` needs reference_labels = (its cell metadata column of labels),",
              "or build the reference once with build_reference() and pass that."),
            code = "invalid_parameter")
    }
    inform("building a reference from the labelled object (column '", opts$reference_labels, "')")
    built <- build_reference(reference, opts$reference_labels, engine = engine$name,
                             verbose = is_verbose())
    return(built$file)
  }
  abort(sprintf("`reference` must be a reference file, the result of build_reference(), or a labelled Seurat / SingleCellExperiment object, not %s.",
                class(reference)[[1L]]), code = "invalid_parameter")
}

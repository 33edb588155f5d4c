# The python engine: the scbridge core in this R session through reticulate.
#
# Debian's reticulate 1.28 cannot convert scipy sparse matrices, and a dense matrix would be
# cells x genes doubles, so the dgCMatrix slots go across as plain vectors (p, i, x, dims,
# names) and inst/python/scbridge_r.py builds the CSR from them: the genes x cells slots are
# the cells x genes CSR arrays as they stand. Results come back column by column.

the <- new.env(parent = emptyenv())

python_status <- function() {
  if (!requireNamespace("reticulate", quietly = TRUE)) {
    return("the R package reticulate is not installed")
  }
  wanted <- getOption("scbridge.python")
  if (!is.null(wanted) && !reticulate::py_available(initialize = FALSE)) {
    if (!file.exists(wanted)) return(sprintf("options(scbridge.python) names '%s', which does not exist", wanted))
    tryCatch(reticulate::use_python(wanted, required = TRUE),
             error = function(e) NULL)
  }
  ok <- tryCatch(reticulate::py_module_available("bridge"), error = function(e) FALSE)
  if (isTRUE(ok)) return(NULL)
  python <- tryCatch(reticulate::py_config()$python, error = function(e) NA_character_)
  if (is.null(python) || is.na(python)) {
    return("reticulate found no Python")
  }
  sprintf("the Python that reticulate uses (%s) cannot import the scbridge core ('bridge')", python)
}

python_helper <- function() {
  if (is.null(the$py)) {
    why <- python_status()
    if (!is.null(why)) {
      abort(c(sprintf("The 'python' engine is not available: %s.", why),
              paste("To set it up:", engine_setup[["python"]])),
            kind = c("python_missing", "engine_unavailable"))
    }
    path <- system.file("python", package = "scbridge", mustWork = TRUE)
    the$py <- reticulate::import_from_path("scbridge_r", path = path, convert = TRUE)
  }
  the$py
}

# Run fun(helper) and turn a Python exception into a classed R error.
with_python <- function(fun) {
  helper <- python_helper()
  tryCatch(fun(helper), error = function(e) {
    if (inherits(e, "scbridge_error")) stop(e)
    last <- tryCatch(reticulate::py_last_error(), error = function(e2) NULL)
    type <- if (is.null(last)) "" else as.character(last$type %||% "")
    value <- if (is.null(last)) conditionMessage(e) else as.character(last$value %||% conditionMessage(e))
    abort(sprintf("The Python core failed: %s: %s", type, value),
          kind = python_error_kind(type), parent = e, python_type = type)
  })
}

# scbridge's Python exception tree (bridge/_errors.py) onto R condition classes.
python_error_kind <- function(type) {
  switch(type,
    GeneIdError = c("gene_ids", "input"),
    CapacityError = c("capacity", "input"),
    InputError = "input",
    NotFoundError = "not_found",
    UnsupportedError = "unsupported",
    MissingDependencyError = "dependency",
    FormatError = "input",
    RemoteError = "remote",
    "engine")
}

# 1-d arrays, not vectors: reticulate turns an R array into a NumPy view on R's memory, but a
# plain vector into a Python list, element by element (10x slower for millions of values).
# array() costs one memcpy in R.
python_matrix_args <- function(m, source) {
  list(p = array(m@p), i = array(m@i), x = array(m@x), n_genes = nrow(m), n_cells = ncol(m),
       genes = rownames(m), cells = colnames(m), source = source)
}

python_annotate <- function(m, source, model, atlas, chunk_size, params) {
  check_nnz(m, "python")
  out <- with_python(function(py) {
    do.call(py$annotate, c(python_matrix_args(m, source),
                           list(model = model, atlas = atlas, chunk_size = as.integer(chunk_size),
                                params = params)))
  })
  calls_from_columns(out, colnames(m))
}

python_embed <- function(m, source, n_components, params) {
  check_nnz(m, "python")
  out <- with_python(function(py) {
    do.call(py$embed, c(python_matrix_args(m, source),
                        list(n_components = as.integer(n_components), params = params)))
  })
  emb <- out$embedding
  if (is.null(dim(emb))) emb <- matrix(emb, nrow = ncol(m))
  dimnames(emb) <- list(out$cell, NULL)
  emb
}

python_markers <- function(m, source, labels, top_n, method, params) {
  check_nnz(m, "python")
  out <- with_python(function(py) {
    do.call(py$markers, c(python_matrix_args(m, source),
                          list(labels = as.list(labels), top_n = as.integer(top_n),
                               method = method, params = params)))
  })
  as.data.frame(lapply(out, unlist), stringsAsFactors = FALSE)
}

# The column dict of scbridge_r.calls_columns() as a calls data.frame (`cells`: the cells
# sent, which the Python side checked the calls are for, in that order).
calls_from_columns <- function(out, cells) {
  decode <- function(coded) {
    codes <- as.integer(coded[[1L]])
    levels <- as.character(unlist(coded[[2L]]))
    codes[codes < 0L] <- NA_integer_
    levels[codes + 1L]
  }
  extra <- lapply(out$extra, function(col) {
    values <- if (!is.null(col$codes)) decode(col$codes) else col$values
    if (length(col$na)) values[as.logical(col$na)] <- NA
    values
  })
  if (length(cells) != out$n) {
    abort(sprintf("The core returned %d calls for %d cells.", out$n, length(cells)), kind = "engine")
  }
  new_calls(
    cell = cells, label = decode(out$label), ontology_id = decode(out$ontology_id),
    confidence = as.double(out$confidence),
    alt_n = out$alt_n, alt_label = decode(out$alt_label), alt_score = as.double(out$alt_score),
    marker_n = out$marker_n, marker_gene = decode(out$marker_gene),
    extra = extra)
}

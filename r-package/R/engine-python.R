# The python engine: the scbridge core in this R session through reticulate.
#
# Debian's reticulate 1.28 cannot convert scipy sparse matrices, and a dense matrix would be
# cells x genes doubles, so the dgCMatrix slots go across as plain vectors (p, i, x, dims,
# names) and inst/python/scbridge_r.py builds the CSR from them: the genes x cells slots are
# the cells x genes CSR arrays as they stand. Results come back column by column, with the
# core's warnings and log records, which R re-raises as R conditions.
#
# The reticulate trap: R can start one Python per session. Once it runs, options(
# scbridge.python) or RETICULATE_PYTHON naming another Python cannot take effect;
# python_mismatch() notices and says to restart R, rather than letting "auto" quietly fall
# back to a slower engine.

python_engine <- function() {
  new_engine(
    "python", "the scbridge core in this R session, through reticulate",
    status = function(endpoint = NULL) python_status(),
    setup = paste(
      "python: install the scbridge Python package into a Python environment with numpy < 2",
      "(Debian's reticulate 1.28 needs that), install the R package reticulate, and point R at",
      "that Python before the first call in the session: Sys.setenv(RETICULATE_PYTHON =",
      "\"/path/to/bin/python\") or options(scbridge.python = \"/path/to/bin/python\")."),
    where = function(endpoint = NULL) sprintf("Python %s", reticulate::py_config()$python),
    annotate = python_annotate, qc = python_qc, build_reference = python_build_reference,
    embed = python_embed, markers = python_markers, gene_symbols = python_gene_symbols)
}

# The Python asked for by name (the option, RETICULATE_PYTHON, SCBRIDGE_PYTHON), and how.
wanted_python <- function() {
  option <- getOption("scbridge.python")
  if (!is.null(option)) return(list(path = option, how = "options(scbridge.python)"))
  for (var in c("RETICULATE_PYTHON", "SCBRIDGE_PYTHON")) {
    value <- Sys.getenv(var)
    if (nzchar(value)) return(list(path = value, how = var))
  }
  NULL
}

# Two paths name the same Python when they sit in the same directory (a virtual environment's
# bin/) and resolve to the same file; a venv's python and python3 do, two venvs do not.
same_python <- function(a, b) {
  key <- function(p) {
    c(normalizePath(dirname(p), mustWork = FALSE), normalizePath(p, mustWork = FALSE))
  }
  identical(key(a), key(b))
}

# NULL, or why the Python this session runs is not the one asked for.
python_mismatch <- function() {
  if (!requireNamespace("reticulate", quietly = TRUE) ||
      !reticulate::py_available(initialize = FALSE)) {
    return(NULL)
  }
  wanted <- wanted_python()
  if (is.null(wanted)) return(NULL)
  current <- tryCatch(reticulate::py_config()$python, error = function(e) NA_character_)
  if (is.na(current) || same_python(wanted$path, current)) return(NULL)
  sprintf(paste(
    "this R session already runs Python %s (started by an earlier call), but %s names %s,",
    "and reticulate cannot switch Python within a session; restart R and set %s (or",
    "RETICULATE_PYTHON) before the first scbridge or reticulate call"),
    current, wanted$how, wanted$path, wanted$how)
}

python_status <- function() {
  if (!requireNamespace("reticulate", quietly = TRUE)) {
    return("the R package reticulate is not installed")
  }
  mismatch <- python_mismatch()
  if (!is.null(mismatch)) return(mismatch)
  wanted <- wanted_python()
  if (!is.null(wanted) && !reticulate::py_available(initialize = FALSE)) {
    if (!file.exists(wanted$path)) {
      return(sprintf("%s names '%s', which does not exist", wanted$how, wanted$path))
    }
    if (wanted$how != "RETICULATE_PYTHON") {
      tryCatch(reticulate::use_python(wanted$path, required = TRUE), error = function(e) NULL)
    }
  }
  ok <- tryCatch(reticulate::py_module_available("bridge"), error = function(e) FALSE)
  if (isTRUE(ok)) return(NULL)
  python <- tryCatch(reticulate::py_config()$python, error = function(e) NA_character_)
  if (is.null(python) || is.na(python)) return("reticulate found no Python")
  sprintf("the Python that reticulate uses (%s) cannot import the scbridge core ('bridge')",
          python)
}

python_helper <- function() {
  if (is.null(the$py)) {
    why <- python_status()
    if (!is.null(why)) engine_unavailable("python", why, "annotate")
    path <- system.file("python", package = "scbridge", mustWork = TRUE)
    the$py <- reticulate::import_from_path("scbridge_r", path = path, convert = TRUE)
  }
  the$py
}

# Runs fun(helper), which calls one entry point of scbridge_r.py, re-raises the core's
# warnings and messages in R, and turns a failure into a classed error: the code, family,
# message and hint of the core's BridgeError, the Python exception as the parent.
with_python <- function(fun) {
  helper <- python_helper()
  out <- tryCatch(fun(helper), error = function(e) {
    if (inherits(e, "scbridge_error")) stop(e)
    details <- tryCatch(helper$last_error(), error = function(e2) list())
    signal_core_conditions(details$conditions)
    if (isTRUE(details$bridge)) {
      abort(details$message, code = details$code, family = details$family,
            hint = details$hint, parent = e, python = TRUE, python_type = details$type)
    }
    last <- tryCatch(reticulate::py_last_error(), error = function(e2) NULL)
    type <- details$type %||% (if (is.null(last)) "" else as.character(last$type %||% ""))
    text <- details$message %||% conditionMessage(e)
    abort(sprintf("The Python core failed unexpectedly: %s: %s", type, text),
          code = "engine_failure", parent = e, python = TRUE, python_type = type)
  })
  signal_core_conditions(out$conditions)
  out$value
}

# 1-d arrays, not vectors: reticulate turns an R array into a NumPy view on R's memory, but a
# plain vector into a Python list, element by element (10x slower for millions of values).
# array() costs one memcpy in R.
python_matrix_args <- function(m, source, value_kind = NULL) {
  list(p = array(m@p), i = array(m@i), x = array(m@x), n_genes = nrow(m), n_cells = ncol(m),
       genes = rownames(m), cells = colnames(m), source = source, value_kind = value_kind)
}

python_call <- function(entry, m, source, value_kind, ...) {
  check_nnz(m, "python")
  with_python(function(py) do.call(py[[entry]], c(python_matrix_args(m, source, value_kind),
                                                  list(...))))
}

python_annotate <- function(m, source, request) {
  out <- python_call("annotate", m, source, request$value_kind, model = request$model,
                     atlas = request$atlas, chunk_size = as.integer(request$chunk_size),
                     params = request$params)
  calls_from_columns(out, colnames(m))
}

python_qc <- function(m, source, request) {
  out <- python_call("qc", m, source, request$value_kind, doublets = request$doublets,
                     thresholds = request$thresholds)
  qc_table(colnames(m), decode_extra(out$columns)[as.character(unlist(out$names))], out$notes)
}

python_build_reference <- function(m, source, request) {
  out <- python_call("build_reference", m, source, request$value_kind,
                     labels = as.list(request$labels), label_column = request$label_column,
                     out = request$file, params = request$params)
  list(labels = as.character(unlist(out$labels)), n_genes = as.integer(out$n_genes))
}

python_embed <- function(m, source, request) {
  out <- python_call("embed", m, source, request$value_kind,
                     n_components = as.integer(request$n_components), params = request$params)
  emb <- out$embedding
  if (is.null(dim(emb))) emb <- matrix(emb, nrow = ncol(m))
  dimnames(emb) <- list(as.character(unlist(out$cell)), NULL)
  emb
}

python_markers <- function(m, source, request) {
  out <- python_call("markers", m, source, request$value_kind, labels = as.list(request$labels),
                     top_n = as.integer(request$top_n), method = request$method,
                     params = request$params)
  as.data.frame(lapply(out, function(col) unlist(lapply(col, function(v) v %||% NA))),
                stringsAsFactors = FALSE)
}

python_gene_symbols <- function(genes) {
  as.character(unlist(with_python(function(py) py$gene_symbols(as.list(genes)))))
}

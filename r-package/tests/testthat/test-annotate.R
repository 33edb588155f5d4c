# Arguments, conversions and results handling that need no engine.

test_that("arguments are checked before any engine runs", {
  m <- plain(sim_counts())
  expect_error(annotate_cells(m, model = 3), class = "scbridge_error_input")
  expect_error(annotate_cells(m, chunk_size = 0), "chunk_size")
  expect_error(annotate_cells(m, chunk_size = 2.5), class = "scbridge_error_input")
  expect_error(annotate_cells(m, min_confidence = 2), "min_confidence")
  expect_error(annotate_cells(make_seurat_v4(m), prefix = ""), "prefix")
  expect_error(annotate_cells(m, engine = "carrier-pigeon"), "should be one of")
  expect_error(annotate_cells(list(1)), class = "scbridge_error_unsupported")
})

test_that("a column clash is an error before annotating, unless overwrite = TRUE", {
  m <- plain(sim_counts())
  seu <- make_seurat_v4(m)
  meta <- attr(seu, "meta.data")
  meta$cell_type <- "mine"
  attr(seu, "meta.data") <- meta
  # engine "http" with no endpoint would fail with engine_unavailable: the clash comes first.
  expect_error(annotate_cells(seu, engine = "http", endpoint = NULL),
               class = "scbridge_error_clash")
  expect_error(annotate_cells(seu, engine = "http", endpoint = NULL), "overwrite = TRUE")
  expect_error(annotate_cells(seu, engine = "http", endpoint = NULL, overwrite = TRUE),
               class = "scbridge_error_engine_unavailable")
  sce <- make_sce(m)
  SummarizedExperiment::colData(sce)$cell_type_confidence <- 1
  expect_error(annotate_cells(sce, engine = "http"), class = "scbridge_error_clash")
})

test_that("an engine that is not set up says how to set it up", {
  m <- plain(sim_counts())
  withr::local_options(scbridge.cli = file.path(tempdir(), "no-such-scbridge"))
  expect_error(annotate_cells(m, engine = "cli"), class = "scbridge_error_engine_unavailable")
  expect_error(annotate_cells(m, engine = "cli"), "options\\(scbridge.cli")
  expect_error(annotate_cells(m, engine = "http"), class = "scbridge_error_engine_unavailable")
  expect_error(annotate_cells(m, engine = "http"), "scbridge serve")
})

test_that("with no engine at all, auto lists every way to set one up", {
  skip_if_not_installed("callr")
  lib <- .libPaths()
  err <- callr::r(function(lib) {
    .libPaths(lib)
    m <- Matrix::sparseMatrix(i = 1, j = 1, x = 1, dims = c(2, 2),
                              dimnames = list(c("CD3E", "MS4A1"), c("a", "b")))
    options(scbridge.cli = "/no/such/scbridge")
    caught <- function(expr) tryCatch(expr, error = function(e) list(class = class(e),
                                                                      message = conditionMessage(e)))
    list(auto = caught(scbridge::annotate_cells(m)),
         python = caught(scbridge::annotate_cells(m, engine = "python")))
  }, args = list(lib = lib), env = c(callr::rcmd_safe_env(), RETICULATE_PYTHON = "/no/such/python",
                                     SCBRIDGE_ENDPOINT = "", SCBRIDGE_CLI = ""))
  expect_true("scbridge_error_python_missing" %in% err$auto$class)
  expect_true("scbridge_error_engine_unavailable" %in% err$auto$class)
  expect_match(err$auto$message, "RETICULATE_PYTHON", fixed = TRUE)
  expect_match(err$auto$message, "scbridge.cli", fixed = TRUE)
  expect_match(err$auto$message, "endpoint = ", fixed = TRUE)
  # the python engine asked for by name: the missing core, and how to provide it
  expect_true("scbridge_error_python_missing" %in% err$python$class)
  expect_match(err$python$message, "pip|scbridge Python package")
})

test_that("min_confidence turns low calls into Unknown and keeps the raw label", {
  calls <- data.frame(cell = c("a", "b", "c"), label = c("T", "B", "NK"),
                      confidence = c(0.9, 0.2, 0.5), stringsAsFactors = FALSE)
  out <- scbridge:::apply_min_confidence(calls, 0.5)
  expect_identical(out$label, c("T", "Unknown", "NK"))
  expect_identical(out$label_raw, c("T", "B", "NK"))
  expect_identical(scbridge:::apply_min_confidence(calls, NULL), calls)
  expect_error(scbridge:::apply_min_confidence(calls, -1), class = "scbridge_error_input")
})

test_that("the JSON calls contract becomes a data.frame with list columns", {
  json <- '{"calls": [
    {"cell": "a", "label": "T cell", "ontology_id": "CL:0000084", "confidence": 0.8500000238418579,
     "alternates": [{"label": "NK cell", "score": 0.1}, {"label": "B cell", "score": 0.05}],
     "markers": ["CD3E", "CD3D"]},
    {"cell": "b", "label": "B cell", "ontology_id": null, "confidence": 0.5,
     "alternates": [], "markers": []}], "metadata": {}}'
  body <- jsonlite::fromJSON(json, simplifyVector = TRUE)
  calls <- scbridge:::calls_from_json(body$calls)
  expect_identical(names(calls), c("cell", "label", "ontology_id", "confidence", "alternates", "markers"))
  expect_identical(calls$cell, c("a", "b"))
  expect_identical(calls$ontology_id, c("CL:0000084", NA))
  expect_identical(calls$confidence, c(0.8500000238418579, 0.5))
  expect_identical(calls$alternates[[1]], c(`NK cell` = 0.1, `B cell` = 0.05))
  expect_identical(calls$alternates[[2]], stats::setNames(numeric(0), character(0)))
  expect_identical(calls$markers, list(c("CD3E", "CD3D"), character(0)))
  # the fast path over unsimplified records gives the same data.frame
  records <- jsonlite::parse_json(json, simplifyVector = FALSE)$calls
  expect_identical(scbridge:::calls_from_records(records), calls)
})

test_that("calls() says when an object was not annotated", {
  seu <- make_seurat_v4(plain(sim_counts()))
  expect_error(calls(seu), class = "scbridge_error_not_found")
  expect_error(calls(seu), "annotate_cells")
  expect_error(calls(plain(sim_counts())), class = "scbridge_error_unsupported")
})

test_that("the http request body is the tutorial JSON with exact numbers", {
  m <- plain(sim_counts(n_cells = 5))
  block <- scbridge:::csr_block(m, 1L, 5L)
  block$n_genes <- nrow(m)
  genes <- as.character(jsonlite::toJSON(rownames(m)))
  body <- jsonlite::fromJSON(scbridge:::json_body(block, genes, "markers", NULL),
                             simplifyVector = TRUE)
  expect_identical(body$genes, rownames(m))
  expect_identical(as.integer(body$matrix$indptr), m@p)
  expect_identical(as.integer(body$matrix$indices), m@i)
  expect_identical(body$matrix$data, m@x)
  expect_identical(as.integer(body$matrix$shape), c(5L, nrow(m)))
  expect_identical(body$model, "markers")
  expect_null(body$reference_atlas)
  # counts go as floats ("3.0"), as a Python client sends a float64 CSR
  expect_match(scbridge:::json_numbers(c(3, 1)), "[3.0,1.0]", fixed = TRUE)
  x <- c(0.1 + 0.2, 1 / 3, pi * 1e-7)
  expect_identical(jsonlite::fromJSON(scbridge:::json_numbers(x)), x)
})

test_that("scbridge_engines() reports each engine", {
  withr::local_options(scbridge.cli = file.path(tempdir(), "no-such-scbridge"))
  out <- scbridge_engines(endpoint = "")
  expect_identical(out$engine, c("python", "cli", "http"))
  expect_false(out$available[[2]])
  expect_false(out$available[[3]])
})

test_that("the Arrow transport is used when arrow / nanoarrow is installed, else says what to install", {
  withr::local_options(scbridge.cli_transport = "arrow", scbridge.http_transport = "arrow")
  if (is.null(scbridge:::arrow_backend())) {
    expect_error(scbridge:::cli_transport(), class = "scbridge_error_dependency")
    expect_error(scbridge:::http_transport(), "install.packages")
    withr::local_options(scbridge.cli_transport = "auto", scbridge.http_transport = "auto")
    expect_identical(scbridge:::cli_transport(), "rds")
    expect_identical(scbridge:::http_transport(), "json")
  } else {
    expect_identical(scbridge:::cli_transport(), "arrow")
    expect_identical(scbridge:::http_transport(), "arrow")
  }
})

test_that("NaN, infinite and negative values are refused before any engine, naming a cell", {
  m <- plain(sim_counts())
  for (value in c(NaN, Inf, -1)) {
    bad <- m
    bad@x[bad@p[[3]] + 1L] <- value  # the first stored value of cell 3
    err <- expect_error(annotate_cells(bad, engine = "http", endpoint = "http://127.0.0.1:9"),
                        class = "scbridge_error_input")
    expect_match(conditionMessage(err), "first in cell 'cell0003'")
  }
})

# Choosing an engine (R/engine.R): one object per engine, "auto" that says what it chose,
# classed errors for a misspelt or missing engine.

test_that("every engine is an object with the operations it runs", {
  for (name in scbridge:::engine_names) {
    eng <- scbridge:::engine_object(name)
    expect_s3_class(eng, "scbridge_engine")
    expect_identical(eng$name, name)
    expect_type(eng$status, "closure")
    expect_type(eng$annotate, "closure")
  }
  expect_null(scbridge:::engine_object("http")$qc)
  expect_null(scbridge:::engine_object("http")$build_reference)
  expect_output(print(scbridge:::engine_object("cli")), "scbridge engine 'cli'")
})

test_that("a misspelt engine is a classed error that suggests the right one", {
  m <- plain(sim_counts())
  err <- expect_error(annotate_cells(m, engine = "pyhton"),
                      class = "scbridge_error_invalid_parameter")
  expect_match(conditionMessage(err), "Did you mean engine = \"python\"?", fixed = TRUE)
  expect_snapshot(annotate_cells(m, engine = "carrier-pigeon"), error = TRUE)
})

test_that("an engine that is not set up says how to set it up", {
  m <- plain(sim_counts())
  withr::local_options(scbridge.cli = file.path(tempdir(), "no-such-scbridge"))
  expect_error(annotate_cells(m, engine = "cli"), class = "scbridge_error_engine_unavailable")
  expect_snapshot(annotate_cells(m, engine = "cli"), error = TRUE,
                  transform = function(x) gsub(tempdir(), "<tempdir>", x, fixed = TRUE))
  expect_error(annotate_cells(m, engine = "http", endpoint = ""),
               class = "scbridge_error_engine_unavailable")
  # An engine that does not run an operation says so.
  expect_error(cell_qc(m, engine = "http"), class = "scbridge_error_unsupported")
})

test_that("auto says once which engine it chose and why, with a classed message", {
  skip_if_no_python()
  m <- plain(sim_counts(n_cells = 20))
  # A fresh session: the choice has not been announced yet.
  said <- callr::r(function(lib, python) {
    .libPaths(lib)
    Sys.setenv(RETICULATE_PYTHON = python)
    m <- Matrix::sparseMatrix(i = 1:2, j = 1:2, x = c(3, 5), dims = c(2, 2),
                              dimnames = list(c("CD3E", "MS4A1"), c("a", "b")))
    caught <- list()
    collect <- function(m) {
      caught[[length(caught) + 1L]] <<- list(class = class(m), text = conditionMessage(m))
      invokeRestart("muffleMessage")
    }
    for (k in 1:2) {
      withCallingHandlers(
        tryCatch(scbridge::annotate_cells(m, verbose = FALSE), error = function(e) NULL),
        message = collect)
    }
    caught
  }, args = list(lib = .libPaths(), python = test_python_path()),
  env = c(callr::rcmd_safe_env(), PYTHONPATH = Sys.getenv("PYTHONPATH")))
  expect_length(said, 1L)
  expect_true("scbridge_message" %in% said[[1]]$class)
  expect_match(said[[1]]$text, "engine = \"auto\" uses the python engine", fixed = TRUE)
  expect_match(said[[1]]$text, test_python_path(), fixed = TRUE)
})

test_that("with no engine at all, auto lists every way to set one up", {
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
                                     SCBRIDGE_PYTHON = "", SCBRIDGE_ENDPOINT = "",
                                     SCBRIDGE_CLI = ""))
  expect_true("scbridge_error_python_missing" %in% err$auto$class)
  expect_true("scbridge_error_engine_unavailable" %in% err$auto$class)
  expect_match(err$auto$message, "RETICULATE_PYTHON", fixed = TRUE)
  expect_match(err$auto$message, "scbridge.cli", fixed = TRUE)
  expect_match(err$auto$message, "endpoint = ", fixed = TRUE)
  expect_true("scbridge_error_python_missing" %in% err$python$class)
  expect_match(err$python$message, "scbridge Python package", fixed = TRUE)
})

test_that("scbridge_engines() and scbridge_available() report each engine", {
  withr::local_options(scbridge.cli = file.path(tempdir(), "no-such-scbridge"))
  out <- scbridge_engines(endpoint = "")
  expect_identical(out$engine, c("python", "cli", "http"))
  expect_false(out$available[[2]])
  expect_false(out$available[[3]])
  expect_match(out$reason[[3]], "no endpoint")
  expect_false(scbridge_available("cli"))
  expect_false(scbridge_available("http", endpoint = ""))
  expect_error(scbridge_available("gpu"), class = "scbridge_error_invalid_parameter")
})

test_that("more non-zeros than an engine carries is a capacity error", {
  m <- plain(sim_counts())
  withr::local_options(scbridge.max_nnz = 100)
  skip_if_no_python()
  expect_error(annotate_cells(m, engine = "python"), class = "scbridge_error_too_large")
  skip_if_no_cli()
  expect_error(annotate_cells(m, engine = "cli"), class = "scbridge_error_capacity")
})

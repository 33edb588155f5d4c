# The python engine (R/engine-python.R, inst/python/scbridge_r.py): the core's errors with their
# code, family and hint; its warnings and notes as R conditions; the reticulate trap.

# A matrix on which the core warns (and still annotates): genes expressed in nearly every cell
# (ACTB, B2M, ...) look absent while another gene is in every cell, as when names are shuffled.
shuffled_names <- function() {
  m <- plain(sim_counts(n_cells = 120))
  rows <- 1:7
  m[rows, ] <- 0
  rownames(m)[rows] <- c("ACTB", "B2M", "MALAT1", "TMSB4X", "EEF1A1", "RPL13", "GAPDH")
  m["PTPRC", ] <- 5
  Matrix::drop0(m)
}

test_that("a BridgeError arrives with its code, family and hint; the Python error is the parent", {
  skip_if_no_python()
  m <- plain(sim_counts())
  err <- expect_error(annotate_cells(m, model = "no-such-model", engine = "python"),
                      class = "scbridge_error_unknown_model")
  expect_s3_class(err, "scbridge_error_not_found")
  expect_identical(err$code, "unknown_model")
  expect_identical(err$family, "not_found")
  expect_identical(err$python_type, "NotFoundError")
  expect_s3_class(err$parent, "error")
  expect_match(conditionMessage(err), "unknown model 'no-such-model'", fixed = TRUE)
  # no Python traceback in the message
  expect_false(grepl("Traceback", conditionMessage(err), fixed = TRUE))
  # a code more specific than its class's: unknown_parameter of an InputError
  err <- expect_error(scbridge:::python_annotate(m, "R", list(
    model = "markers", chunk_size = 100L, params = list(saturation_typo = 1))),
    class = "scbridge_error_unknown_parameter")
  expect_identical(err$family, "invalid_input")
  expect_match(err$hint, "check the spelling", fixed = TRUE)
})

test_that("an unexpected Python failure is an engine failure, not a traceback", {
  skip_if_no_python()
  m <- plain(sim_counts())
  # QCThresholds() given a field it lacks raises a TypeError, which is no BridgeError.
  err <- expect_error(scbridge:::python_call("qc", m, "R", NULL, doublets = FALSE,
                                             thresholds = list(no_such_limit = 1)),
                      class = "scbridge_error_engine_failure")
  expect_match(conditionMessage(err), "The Python core failed unexpectedly: TypeError",
               fixed = TRUE)
})

test_that("the core's warnings are R warnings that suppressWarnings() and tryCatch() catch", {
  skip_if_no_python()
  m <- shuffled_names()
  w <- NULL
  out <- withCallingHandlers(annotate_cells(m, engine = "python"),
                             scbridge_warning_core = function(cnd) {
                               if (grepl("gene names may not match", conditionMessage(cnd),
                                         fixed = TRUE)) w <<- cnd
                               invokeRestart("muffleWarning")
                             })
  expect_s3_class(w, "scbridge_warning_core")
  expect_identical(nrow(out), ncol(m))
  # once, though the core both logs and warns it (other warnings, such as the share of the
  # model's genes found, are counted apart)
  caught <- 0L
  withCallingHandlers(annotate_cells(m, engine = "python"),
                      scbridge_warning = function(w) {
                        if (grepl("gene names may not match", conditionMessage(w), fixed = TRUE)) {
                          caught <<- caught + 1L
                        }
                        invokeRestart("muffleWarning")
                      })
  expect_identical(caught, 1L)
  expect_silent(suppressWarnings(annotate_cells(m, engine = "python")))
  got <- tryCatch(annotate_cells(m, engine = "python"), warning = function(w) class(w))
  expect_true("scbridge_warning_core" %in% got)
})

test_that("the core's notes are messages with verbose = TRUE, and silent without", {
  skip_if_no_python()
  ids <- utils::read.delim(test_path("fixtures", "model_genes_ensembl.tsv"))
  m <- plain(sim_counts())
  m <- m[rownames(m) %in% ids$symbol, ]
  rownames(m) <- ids$ensembl[match(rownames(m), ids$symbol)]
  said <- character(0)
  withCallingHandlers(annotate_cells(m, engine = "python", verbose = TRUE),
                      message = function(msg) {
                        said <<- c(said, conditionMessage(msg))
                        invokeRestart("muffleMessage")
                      })
  expect_match(said, "look like Ensembl ids", all = FALSE)
  expect_match(said, "mapped [0-9]+ .*gene ids to human symbols", all = FALSE)
  expect_silent(annotate_cells(m, engine = "python", verbose = FALSE))
})

test_that("the reticulate trap: another Python asked for after one started is explained", {
  skip_if_no_python()
  skip_if_no_cli()
  other <- file.path(withr::local_tempdir(), "python")
  file.symlink(test_python_path(), other)  # another environment than the running one
  out <- callr::r(function(lib, python, other, cli) {
    .libPaths(lib)
    Sys.setenv(RETICULATE_PYTHON = python)
    options(scbridge.cli = cli)
    reticulate::py_config()  # Python starts with the first one
    options(scbridge.python = other)
    m <- Matrix::Matrix(0, 2, 2, sparse = TRUE, dimnames = list(c("CD3E", "MS4A1"), c("a", "b")))
    m[1, 1] <- 3
    m[2, 2] <- 4
    err <- tryCatch(scbridge::annotate_cells(m, engine = "python"), error = identity)
    said <- character(0)
    withCallingHandlers(
      tryCatch(scbridge::annotate_cells(m, verbose = FALSE), error = function(e) NULL),
      message = function(msg) {
        said <<- c(said, conditionMessage(msg))
        invokeRestart("muffleMessage")
      })
    list(class = class(err), message = conditionMessage(err), said = said,
         status = scbridge::scbridge_engines()$reason[[1]])
  }, args = list(lib = .libPaths(), python = test_python_path(), other = other,
                 cli = scbridge:::cli_path()),
  env = c(callr::rcmd_safe_env(), PYTHONPATH = Sys.getenv("PYTHONPATH")))
  expect_true("scbridge_error_python_mismatch" %in% out$class)
  expect_true("scbridge_error_engine_unavailable" %in% out$class)
  expect_match(out$message, "restart R", fixed = TRUE)
  expect_match(out$message, other, fixed = TRUE)
  # auto goes on with the cli engine, and says why not python
  expect_match(out$said, "engine = \"auto\" uses the cli engine", all = FALSE, fixed = TRUE)
  expect_match(out$said, "restart R", all = FALSE, fixed = TRUE)
  expect_match(out$status, "cannot switch Python within a session", fixed = TRUE)
})

test_that("the same Python named twice (python / python3 of one venv) is no trap", {
  py <- test_python_path()
  if (!nzchar(py)) skip_engine("python engine: set SCBRIDGE_PYTHON")
  expect_true(scbridge:::same_python(py, py))
  dir <- withr::local_tempdir()
  file.symlink(py, file.path(dir, "python"))
  expect_false(scbridge:::same_python(py, file.path(dir, "python")))
})

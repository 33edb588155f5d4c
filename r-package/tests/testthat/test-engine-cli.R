# The cli engine (R/engine-cli.R): the matrix handed over as an uncompressed Arrow CSR stream,
# the results read back from Arrow; what `scbridge` prints on stderr re-raised in R.

test_that("stderr lines become records: error with its code, warnings, notes, continuations", {
  stderr <- paste(
    "scbridge: INFO: tissue context inferred: blood",
    "scbridge annotate: warning: genes look shuffled",
    "  across two lines",
    "scbridge: WARNING: label 'x' has 1 cells (< 3); no markers",
    "scbridge annotate: error[gene_ids]: only 2 of the model's genes were found",
    sep = "\n")
  records <- scbridge:::cli_stderr_records(stderr, "annotate")
  expect_identical(vapply(records, `[[`, "", "level"), c("info", "warning", "warning", "error"))
  expect_identical(records[[2]]$message, "genes look shuffled\n  across two lines")
  expect_identical(records[[4]]$code, "gene_ids")
  expect_identical(records[[4]]$message, "only 2 of the model's genes were found")
})

test_that("the cli engine agrees with the python engine, over Arrow and over .rds", {
  skip_if_no_python()
  skip_if_no_cli()
  m <- plain(sim_counts())
  ref <- annotate_cells(m, engine = "python")
  withr::local_options(scbridge.verbose = TRUE)
  said <- character(0)
  out <- withCallingHandlers(annotate_cells(m, engine = "cli"), message = function(msg) {
    said <<- c(said, conditionMessage(msg))
    invokeRestart("muffleMessage")
  })
  expect_same_calls(out, ref)
  # R's own writer where neither nanoarrow nor arrow is installed: a stream, .arrows
  if (is.null(scbridge:::arrow_backend())) {
    expect_match(said, "as matrix\\.arrows", all = FALSE)
  }
  withr::local_options(scbridge.cli_transport = "rds", scbridge.verbose = FALSE)
  expect_same_calls(annotate_cells(m, engine = "cli"), ref)
  expect_error(build_reference(m, rep("a", ncol(m)), engine = "cli"),
               class = "scbridge_error_unsupported")
})

test_that("the command's error line becomes the classed error of its code", {
  skip_if_no_python()
  skip_if_no_cli()
  m <- plain(sim_counts())
  err <- expect_error(annotate_cells(m, model = "no-such-model", engine = "cli"),
                      class = "scbridge_error_unknown_model")
  expect_s3_class(err, "scbridge_error_not_found")
  expect_match(conditionMessage(err), "`scbridge annotate` failed: unknown model", fixed = TRUE)
  expect_match(err$stderr, "error[unknown_model]", fixed = TRUE)
  rownames(m) <- sprintf("XQ%05d", seq_len(nrow(m)))
  suppressWarnings(expect_error(annotate_cells(m, engine = "cli"),
                                class = "scbridge_error_gene_ids"))
})

test_that("the command's warnings are R warnings", {
  skip_if_no_python()
  skip_if_no_cli()
  m <- plain(sim_counts(n_cells = 120))
  m[1:7, ] <- 0
  rownames(m)[1:7] <- c("ACTB", "B2M", "MALAT1", "TMSB4X", "EEF1A1", "RPL13", "GAPDH")
  m["PTPRC", ] <- 5
  m <- Matrix::drop0(m)
  w <- expect_warning(annotate_cells(m, engine = "cli"), class = "scbridge_warning_core")
  expect_match(conditionMessage(w), "gene names may not match", fixed = TRUE)
  expect_silent(suppressWarnings(annotate_cells(m, engine = "cli")))
})

test_that("engine parameters become the command's flags; others are refused", {
  expect_identical(scbridge:::cli_engine_flags(list(min_gene_fraction = 0.05, tissue = "lung")),
                   c("--min-gene-fraction", "0.05", "--tissue", "lung"))
  expect_identical(scbridge:::cli_engine_flags(list()), NULL)
  expect_error(scbridge:::cli_engine_flags(list(saturation = 3)),
               class = "scbridge_error_unsupported")
})

test_that("the subprocess environment drops R's library directories", {
  withr::local_envvar(LD_LIBRARY_PATH = paste(R.home("lib"), "/opt/mine/lib", "/usr/lib",
                                              sep = ":"))
  env <- scbridge:::subprocess_env()
  expect_identical(env[["LD_LIBRARY_PATH"]], "/opt/mine/lib")
})

test_that("commands run in the session's `scbridge worker`, restarted when it ends", {
  skip_if_no_python()
  skip_if_no_cli()
  m <- plain(sim_counts())
  scbridge:::cli_worker_stop()
  withr::local_options(scbridge.cli_worker = FALSE)
  once <- annotate_cells(m, engine = "cli")
  expect_null(scbridge:::the$cli_worker)
  withr::local_options(scbridge.cli_worker = TRUE)
  expect_same_calls(annotate_cells(m, engine = "cli"), once)
  worker <- scbridge:::the$cli_worker
  expect_true(worker$process$is_alive())
  pid <- worker$process$get_pid()
  expect_same_calls(annotate_cells(m, engine = "cli"), once)
  expect_identical(scbridge:::the$cli_worker$process$get_pid(), pid)  # the same process
  # errors and warnings come through the worker as they do from the command
  expect_error(annotate_cells(m, model = "no-such-model", engine = "cli"),
               class = "scbridge_error_unknown_model")
  expect_identical(scbridge:::the$cli_worker$process$get_pid(), pid)
  # a worker that ended is replaced by a new one
  worker$process$kill()
  expect_same_calls(annotate_cells(m, engine = "cli"), once)
  expect_false(identical(scbridge:::the$cli_worker$process$get_pid(), pid))
  scbridge:::cli_worker_stop()
  expect_null(scbridge:::the$cli_worker)
})

test_that("a scbridge without the worker command runs each command on its own", {
  skip_if_no_python()
  skip_if_no_cli()
  if (.Platform$OS.type != "unix") skip_engine("the stand-in command is a shell script")
  old <- file.path(withr::local_tempdir(), "scbridge")
  writeLines(c("#!/bin/sh",
               "if [ \"$1\" = worker ]; then",
               "  echo \"scbridge: error: argument COMMAND: invalid choice: 'worker'\" >&2",
               "  exit 2",
               "fi",
               sprintf("exec '%s' \"$@\"", scbridge:::cli_path())), old)
  Sys.chmod(old, "0755")
  m <- plain(sim_counts())
  ref <- annotate_cells(m, engine = "python")
  scbridge:::cli_worker_stop()
  withr::local_options(scbridge.cli = old, scbridge.cli_worker = TRUE)
  expect_same_calls(annotate_cells(m, engine = "cli"), ref)
  expect_null(scbridge:::the$cli_worker)
  expect_true(any(grepl(old, scbridge:::the$cli_worker_refused, fixed = TRUE)))
})

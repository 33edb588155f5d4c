# Conditions (R/conditions.R): classed errors with the user's call, warnings and messages that
# R's usual handlers catch, verbosity under one argument / option.

test_that("abort() signals the code's classes with code, family, hint and the user's call", {
  f <- function() scbridge:::abort("Something was wrong.", code = "gene_ids", hint = "Do this.")
  err <- expect_error(f(), class = "scbridge_error_gene_ids")
  expect_s3_class(err, c("scbridge_error_invalid_input", "scbridge_error_input",
                         "scbridge_error"))
  expect_identical(err$code, "gene_ids")
  expect_identical(err$family, "gene_ids")
  expect_identical(err$hint, "Do this.")
  expect_match(conditionMessage(err), "Something was wrong.\nHint: Do this.", fixed = TRUE)
  # The call is the exported function the user called, not an internal one.
  err <- expect_error(annotate_cells(list(1)), class = "scbridge_error_unsupported")
  expect_identical(conditionCall(err), quote(annotate_cells(list(1))))
  err <- expect_error(scbridge::calls(list(1)), class = "scbridge_error_unsupported")
  expect_identical(conditionCall(err), quote(scbridge::calls(list(1))))
})

test_that("`kind =` of older code still names a code", {
  err <- expect_error(scbridge:::abort("x", kind = "not_found"), class = "scbridge_error_not_found")
  expect_identical(err$code, "not_found")
  expect_error(scbridge:::abort("x", kind = c("capacity", "input")),
               class = "scbridge_error_too_large")
})

test_that("a parent condition is shown, except a Python one (its message is already said)", {
  parent <- simpleError("connection refused")
  err <- tryCatch(scbridge:::abort("Could not reach it.", code = "remote_unreachable",
                                   parent = parent), error = identity)
  expect_match(conditionMessage(err), "Caused by: connection refused", fixed = TRUE)
  err <- tryCatch(scbridge:::abort("The core said no.", code = "gene_ids", parent = parent,
                                   python = TRUE), error = identity)
  expect_identical(conditionMessage(err), "The core said no.")
  expect_identical(err$parent, parent)
})

test_that("warnings and messages are classed and caught by R's usual handlers", {
  w <- expect_warning(scbridge:::warn("Careful.", code = "empty_cells"),
                      class = "scbridge_warning_empty_cells")
  expect_s3_class(w, "scbridge_warning")
  expect_silent(suppressWarnings(scbridge:::warn("Careful.", code = "core")))
  scbridge:::with_verbosity(TRUE, {
    m <- expect_message(scbridge:::inform("hello"), class = "scbridge_message")
    expect_identical(conditionMessage(m), "scbridge: hello\n")
    expect_silent(suppressMessages(scbridge:::inform("hello")))
  })
  scbridge:::with_verbosity(FALSE, expect_silent(scbridge:::inform("hello")))
  # .always: said whatever the verbosity
  scbridge:::with_verbosity(FALSE, expect_message(scbridge:::inform("x", .always = TRUE),
                                                  class = "scbridge_message"))
})

test_that("verbose is restored after the call, also after an error", {
  withr::local_options(scbridge.verbose = TRUE)
  expect_true(scbridge:::is_verbose())
  try(scbridge:::with_verbosity(FALSE, stop("boom")), silent = TRUE)
  expect_true(scbridge:::is_verbose())
  expect_error(scbridge:::with_verbosity(NA, 1), class = "scbridge_error_invalid_parameter")
})

test_that("the core's records become one warning each and messages when verbose", {
  records <- list(
    list(level = "warning", message = "genes look shuffled", category = "UserWarning"),
    list(level = "warning", message = "genes look shuffled", category = "bridge._annotate"),
    list(level = "info", message = "tissue context inferred: blood", category = "bridge"))
  scbridge:::with_verbosity(TRUE, {
    said <- character(0)
    warned <- list()
    withCallingHandlers(scbridge:::signal_core_conditions(records),
                        warning = function(w) {
                          warned[[length(warned) + 1L]] <<- w
                          invokeRestart("muffleWarning")
                        },
                        message = function(m) {
                          said <<- c(said, conditionMessage(m))
                          invokeRestart("muffleMessage")
                        })
  })
  expect_length(warned, 1L)
  expect_s3_class(warned[[1]], "scbridge_warning_core")
  expect_identical(warned[[1]]$category, "UserWarning")
  expect_identical(said, "scbridge: tissue context inferred: blood\n")
})

test_that("need_package() says how to install what is missing", {
  expect_snapshot(scbridge:::need_package("noSuchPackage123", "Doing this"), error = TRUE)
  expect_error(scbridge:::need_package("noSuchPackage123", "Doing this"),
               class = "scbridge_error_missing_dependency")
})

# The package documentation (R/scbridge-package.R): every option the code reads is documented.

test_that("every scbridge.* option the package reads is documented on ?scbridge", {
  ns <- asNamespace("scbridge")
  code <- unlist(lapply(ls(ns, all.names = TRUE), function(name) {
    obj <- get(name, envir = ns)
    if (is.function(obj)) deparse(obj) else character(0)
  }))
  used <- unique(unlist(regmatches(code, gregexpr("scbridge\\.[a-z_]+", code))))
  used <- setdiff(used, c("scbridge.format", "scbridge.format_version", "scbridge.genes",
                          "scbridge.value_kind", "scbridge.source", "scbridge.qc_thresholds",
                          "scbridge.model"))
  expect_true(length(used) >= 12L)
  rd <- tools::Rd_db("scbridge")[["scbridge-package.Rd"]]
  text <- paste(capture.output(tools::Rd2txt(rd, options = list(underline_titles = FALSE))),
                collapse = "\n")
  missing <- used[!vapply(used, grepl, logical(1), x = text, fixed = TRUE)]
  expect_identical(missing, character(0))
})

test_that("scbridge_available() answers TRUE or FALSE", {
  expect_type(scbridge_available(), "logical")
  expect_length(scbridge_available("http", endpoint = ""), 1L)
})

# The check of the Arrow CSR R writes (R/arrow-check.R); more in test-arrow.R, per backend.

test_that("sizes are checked against the matrix, and long values abbreviated", {
  m <- plain(sim_counts())
  nnz <- length(m@x)
  ok <- list(n_cells = as.double(ncol(m)), n_values = c(indices = nnz, values = nnz))
  expect_identical(scbridge:::arrow_csr_size_problems(ok, m), character(0))
  short <- ok
  short$n_values[["indices"]] <- nnz - 1
  expect_match(scbridge:::arrow_csr_size_problems(short, m), "column 'indices' holds")
  expect_identical(scbridge:::arrow_csr_size_problems(list(file_bytes = 12 * nnz), m),
                   character(0))
  expect_match(scbridge:::arrow_csr_size_problems(list(file_bytes = 10), m), "too few")
  long <- scbridge:::abbreviate_value(strrep("x", 100))
  expect_identical(nchar(long), 62L)
})

test_that("the file R's own writer made passes the check; a truncated one does not", {
  m <- plain(sim_counts())
  withr::local_options(scbridge.arrow_backend = NULL)
  path <- scbridge:::write_arrow_csr(m, "x", file.path(withr::local_tempdir(), "m.arrow"),
                                     obs = list(label = rep("a", ncol(m))))
  expect_match(path, "\\.arrows$")
  metadata <- scbridge:::csr_metadata(m, "x")
  found <- list(names = c("cell", "indices", "values", "label"),
                types = c("utf8", "list<int32>", "list<float64>", "utf8"), metadata = metadata,
                file_bytes = file.size(path))
  expect_true(scbridge:::check_arrow_csr(found, m, metadata, path))
  found$file_bytes <- 100
  expect_error(scbridge:::check_arrow_csr(found, m, metadata, path),
               class = "scbridge_error_arrow_format")
})

# What the values are (R/values.R): no silent bad results from an empty matrix, normalised
# values in a counts layer, or a transposed matrix.

test_that("the value kind follows the core's rule", {
  kinds <- python_json(paste(
    "import json, numpy as np",
    "from bridge.numerics import detect_value_kind",
    "cases = {'counts': [1.0, 3.0, 12.0], 'lognorm': [0.5, 1.7, 3.2],",
    "         'normalized': [0.5, 120.25, 3.2], 'edge': [50.0, 0.5]}",
    "print(json.dumps({k: detect_value_kind(np.array(v)) for k, v in cases.items()}))",
    sep = "\n"))
  expect_identical(scbridge:::detect_value_kind(c(1, 3, 12)), kinds$counts)
  expect_identical(scbridge:::detect_value_kind(c(0.5, 1.7, 3.2)), kinds$lognorm)
  expect_identical(scbridge:::detect_value_kind(c(0.5, 120.25, 3.2)), kinds$normalized)
  expect_identical(scbridge:::detect_value_kind(c(50, 0.5)), kinds$edge)
})

test_that("a matrix without any expression is refused; empty cells are warned about", {
  m <- plain(sim_counts())
  zero <- m
  zero@x[] <- 0
  expect_error(annotate_cells(zero, engine = "http", endpoint = closed_port_endpoint()),
               class = "scbridge_error_empty_cells")
  expect_error(annotate_cells(Matrix::drop0(zero), engine = "http",
                              endpoint = closed_port_endpoint()),
               class = "scbridge_error_empty_cells")
  some <- m
  some[, c(2, 5)] <- 0
  some <- Matrix::drop0(some)
  w <- expect_warning(scbridge:::check_expression(some, "The matrix", "counts", NULL),
                      class = "scbridge_warning_empty_cells")
  expect_match(conditionMessage(w), "2 of the 120 cells", fixed = TRUE)
  expect_match(conditionMessage(w), "'cell0002'", fixed = TRUE)
})

test_that("non-integer values in a counts layer are warned about; value_kind = \"counts\" refuses them", {
  m <- lognorm(plain(sim_counts()))
  expect_warning(scbridge:::check_expression(m, "Seurat assay RNA counts", "counts", NULL),
                 class = "scbridge_warning_non_integer_counts")
  expect_warning(scbridge:::check_expression(m, "x", "counts.A", NULL),
                 class = "scbridge_warning_non_integer_counts")
  # the data layer, or the kind named: no warning
  expect_silent(scbridge:::check_expression(m, "x", "data", NULL))
  expect_silent(scbridge:::check_expression(m, "x", "counts", "lognorm"))
  expect_error(scbridge:::check_expression(m, "x", "data", "counts"),
               class = "scbridge_error_non_integer_counts")
  seu <- make_seurat_v4(plain(sim_counts()))
  assays <- attr(seu, "assays")
  assays$RNA@counts <- lognorm(plain(sim_counts()))
  attr(seu, "assays") <- assays
  expect_warning(
    expect_error(annotate_cells(seu, engine = "http", endpoint = closed_port_endpoint()),
                 class = "scbridge_error_remote_unreachable"),
    class = "scbridge_warning_non_integer_counts")
})

test_that("a transposed matrix is refused with the hint to transpose", {
  m <- plain(sim_counts())
  barcodes <- sprintf("%s-1", vapply(seq_len(ncol(m)), function(k) {
    paste(sample(c("A", "C", "G", "T"), 16L, replace = TRUE), collapse = "")
  }, ""))
  colnames(m) <- barcodes
  transposed <- Matrix::t(m)
  err <- expect_error(annotate_cells(transposed, engine = "http",
                                     endpoint = closed_port_endpoint()),
                      class = "scbridge_error_transposed")
  expect_s3_class(err, "scbridge_error_gene_ids")
  expect_match(conditionMessage(err), "Pass t(m) instead.", fixed = TRUE)
  expect_false(scbridge:::looks_transposed(m))
  # ubiquitous genes among the columns and none among the rows
  genes <- plain(sim_counts())
  rownames(genes)[1:4] <- c("ACTB", "B2M", "MALAT1", "TMSB4X")
  expect_true(scbridge:::looks_transposed(Matrix::t(genes)))
  expect_false(scbridge:::looks_transposed(genes))
})

test_that("a gene-id error from the core on a possibly transposed matrix carries the hint", {
  skip_if_no_python()
  m <- plain(sim_counts())
  rownames(m) <- sprintf("cellid%05d", seq_len(nrow(m)))
  colnames(m)[1:2] <- c("ACTB", "B2M")  # too little to refuse it outright as transposed
  err <- suppressWarnings(expect_error(annotate_cells(m, engine = "python"),
                                       class = "scbridge_error_gene_ids"))
  expect_false(inherits(err, "scbridge_error_transposed"))
  expect_match(err$hint, "may be transposed", fixed = TRUE)
  expect_match(conditionMessage(err), "Hint: .*may be transposed")
})

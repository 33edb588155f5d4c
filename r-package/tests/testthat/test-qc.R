# cell_qc() (R/qc.R): the core's QC step from R, on the python and cli engines.

test_that("cell_qc() gives the QC table per cell; python and cli agree", {
  skip_if_no_python()
  m <- plain(sim_counts())
  qc <- cell_qc(m, engine = "python", doublets = FALSE)
  expect_s3_class(qc, "scbridge_qc")
  expect_identical(names(qc), c("cell", "total_counts", "n_genes", "mito_fraction",
                                "doublet_score", "qc_pass", "qc_reason"))
  expect_identical(rownames(qc), colnames(m))
  expect_identical(qc$total_counts, unname(as.double(Matrix::colSums(m))))
  expect_identical(qc$n_genes, as.integer(diff(m@p)))
  expect_true(all(is.na(qc$doublet_score)))
  # 120 cells of ~30 genes: all fail min_genes = 200, and say so
  expect_true(all(!qc$qc_pass))
  expect_match(qc$qc_reason, "n_genes<200;", all = TRUE, fixed = TRUE)
  expect_equal(attr(qc, "thresholds")$min_genes, 200)
  expect_output(print(qc), "scbridge QC of 120 cells: 0 pass, 120 flagged")
  lenient <- cell_qc(m, engine = "python", doublets = FALSE, min_genes = 5, min_counts = 10)
  expect_true(all(lenient$qc_pass))
  with_doublets <- cell_qc(m, engine = "python")
  expect_true(all(!is.na(with_doublets$doublet_score)))

  skip_if_no_cli()
  over_cli <- cell_qc(m, engine = "cli", doublets = FALSE, min_genes = 5, min_counts = 10)
  expect_identical(unclass(over_cli)[names(over_cli)], unclass(lenient)[names(lenient)])
  expect_identical(cell_qc(m, engine = "cli")$doublet_score, with_doublets$doublet_score)
})

test_that("store = TRUE adds the columns to the object's cell metadata", {
  skip_if_no_python()
  m <- plain(sim_counts())
  seu <- cell_qc(make_seurat_v4(m), engine = "python", doublets = FALSE, store = TRUE)
  meta <- attr(seu, "meta.data")
  expect_true(all(c("qc_total_counts", "qc_n_genes", "qc_mito_fraction", "qc_doublet_score",
                    "qc_pass", "qc_reason") %in% names(meta)))
  expect_identical(meta$qc_n_genes, as.integer(diff(m@p)))
  expect_error(cell_qc(seu, engine = "python", doublets = FALSE, store = TRUE),
               class = "scbridge_error_clash")
  sce <- cell_qc(make_sce(m), engine = "python", doublets = FALSE, store = TRUE, prefix = "scq")
  expect_identical(SummarizedExperiment::colData(sce)$scq_pass, meta$qc_pass)
  expect_error(cell_qc(m, engine = "python", store = TRUE), class = "scbridge_error_invalid_parameter")
})

test_that("bad thresholds and doublets are refused; the http engine computes no QC", {
  m <- plain(sim_counts())
  expect_error(cell_qc(m, min_genes = -1), class = "scbridge_error_invalid_parameter")
  expect_error(cell_qc(m, doublets = "maybe"), class = "scbridge_error_invalid_parameter")
  expect_error(cell_qc(m, engine = "http"), class = "scbridge_error_unsupported")
})

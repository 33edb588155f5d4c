# Finding the matrix in every container, without any engine.
em <- scbridge:::expression_matrix

test_that("a dgCMatrix is used as it is", {
  m <- plain(sim_counts())
  found <- em(m)
  expect_identical(found$matrix, m)
})

test_that("dense matrices and other Matrix classes become dgCMatrix with the same values", {
  m <- plain(sim_counts())
  expect_equal(em(as.matrix(m))$matrix, m)
  expect_equal(em(as(m, "TsparseMatrix"))$matrix, m)
  expect_s4_class(em(as(m, "TsparseMatrix"))$matrix, "dgCMatrix")
})

test_that("Seurat v3/v4 Assay: counts and data layers", {
  m <- plain(sim_counts())
  seu <- make_seurat_v4(m)
  expect_equal(em(seu)$matrix, m)
  expect_equal(em(seu, layer = "data")$matrix, lognorm(m))
  expect_match(em(seu)$source, "Seurat assay RNA counts")
})

test_that("Seurat v5 Assay5 single layer is read from its slots", {
  m <- plain(sim_counts())
  seu <- make_seurat_v5(m, list(counts = m, data = lognorm(m)))
  expect_true(scbridge:::is_assay5(attr(seu, "assays")$RNA))
  expect_identical(em(seu)$matrix, m)
  expect_equal(em(seu, layer = "data")$matrix, lognorm(m))
})

test_that("Seurat v5 layers that are not dgCMatrix (dense, dgTMatrix) are converted", {
  m <- plain(sim_counts())
  dense <- make_seurat_v5(m, list(counts = as.matrix(m)))
  expect_equal(em(dense)$matrix, m)
  split <- make_seurat_v5(m, list(counts.A = as(m[, 1:50], "TsparseMatrix"),
                                  counts.B = as.matrix(m[, 51:120])))
  expect_equal(em(split)$matrix, m)
})

test_that("Seurat v5 split layers counts.A / counts.B are joined in the object's cell order", {
  m <- plain(sim_counts())
  seu <- make_seurat_v5_split(m)
  found <- em(seu)
  expect_identical(colnames(found$matrix), colnames(m))
  expect_identical(found$matrix, m)
  expect_match(found$source, "counts.A\\+counts.B \\(joined\\)")
  # one split layer alone
  a <- em(seu, layer = "counts.A")$matrix
  expect_identical(a, m[, seq_len(ncol(m)) %% 3 != 0])
})

test_that("split layers with different genes join over the union, absent genes as zero", {
  m <- plain(sim_counts())
  in_a <- seq_len(ncol(m)) %% 3 != 0
  genes_b <- rownames(m)[-2]
  seu <- make_seurat_v5(m, list(counts.A = m[, in_a], counts.B = m[genes_b, !in_a]))
  expected <- m
  expected[2, !in_a] <- 0
  expect_equal(em(seu)$matrix, Matrix::drop0(expected))
})

test_that("joining more non-zeros than a dgCMatrix holds is a capacity error", {
  m <- plain(sim_counts())
  seu <- make_seurat_v5_split(m)
  withr::local_options(scbridge.max_nnz = 10)
  expect_error(em(seu), class = "scbridge_error_capacity")
  expect_error(em(seu), "Annotate one layer at a time", class = "scbridge_error_too_large")
})

test_that("SingleCellExperiment assays of every matrix class", {
  m <- plain(sim_counts())
  sce <- make_sce(m)
  expect_identical(em(sce)$matrix, m)
  expect_equal(em(sce, assay = "logcounts")$matrix, lognorm(m))
  expect_equal(em(sce, layer = "logcounts")$matrix, lognorm(m))
  SummarizedExperiment::assay(sce, "counts") <- as.matrix(m)
  expect_equal(em(sce)$matrix, m)
  if (requireNamespace("DelayedArray", quietly = TRUE)) {
    SummarizedExperiment::assay(sce, "counts") <- DelayedArray::DelayedArray(as.matrix(m))
    expect_equal(em(sce)$matrix, m)
  }
})

test_that("an unknown assay or layer lists the available ones", {
  m <- plain(sim_counts())
  seu <- make_seurat_v4(m)
  expect_error(em(seu, assay = "ADT"), class = "scbridge_error_not_found")
  expect_error(em(seu, assay = "ADT"), "available assays: RNA", class = "scbridge_error_not_found")
  expect_error(em(seu, layer = "spliced"), class = "scbridge_error_not_found")
  expect_error(em(seu, layer = "spliced"), "available layers: counts, data",
               class = "scbridge_error_not_found")
  v5 <- make_seurat_v5_split(m)
  expect_error(em(v5, layer = "spliced"), "available layers: counts.A, counts.B, data",
               class = "scbridge_error_not_found")
  sce <- make_sce(m)
  expect_error(em(sce, assay = "spliced"), class = "scbridge_error_not_found")
  expect_error(em(sce, assay = "spliced"), "available assays: counts, logcounts",
               class = "scbridge_error_not_found")
})

test_that("scale.data is refused with advice", {
  seu <- make_seurat_v4(plain(sim_counts()))
  expect_error(em(seu, layer = "scale.data"), class = "scbridge_error_input")
  expect_error(em(seu, layer = "scale.data"), "choose layer", class = "scbridge_error_input")
})

test_that("matrices without names or with duplicated ids are refused", {
  m <- plain(sim_counts())
  bare <- m
  dimnames(bare) <- list(NULL, NULL)
  expect_error(em(bare), class = "scbridge_error_input")
  expect_error(em(bare), "rownames", class = "scbridge_error_input")
  dup <- m
  colnames(dup)[2] <- colnames(dup)[1]
  expect_error(em(dup), "duplicated cell ids", class = "scbridge_error_input")
  expect_error(em(list(a = 1)), class = "scbridge_error_unsupported")
})

test_that("block slices are the CSR arrays of those cells", {
  m <- plain(sim_counts(n_cells = 10))
  block <- scbridge:::csr_block(m, 3L, 6L)
  sub <- m[, 3:6]
  expect_identical(block$indptr, sub@p)
  expect_identical(block$indices, sub@i)
  expect_identical(block$data, sub@x)
  expect_identical(block$cells, colnames(sub))
  expect_identical(scbridge:::chunk_starts(10L, 4L), c(1L, 5L, 9L))
})

test_that("Ensembl-looking gene ids are recognised", {
  expect_true(scbridge:::looks_ensembl(sprintf("ENSG%011d", 1:20)))
  expect_true(scbridge:::looks_ensembl(sprintf("ENSMUSG%011d", 1:20)))
  expect_false(scbridge:::looks_ensembl(c("CD3E", "MS4A1")))
})

# -- the layer rules shared with the Python core (inst/extdata/layer_rules.tsv) ---------------
test_that("the layer rules come from the core's file", {
  rules <- scbridge:::layer_rules()
  expect_identical(names(rules), c("container", "layer", "use", "note"))
  use <- function(container, layer) rules$use[rules$container == container & rules$layer == layer]
  expect_identical(use("seurat", "counts"), "default")
  expect_identical(use("seurat", "data"), "fallback")
  expect_identical(use("seurat", "scale.data"), "refused")
  expect_identical(use("sce", "logcounts"), "fallback")
})

test_that("an SCTAssay without counts falls back to data with a warning, as the core does", {
  m <- plain(sim_counts())
  seu <- make_seurat_v4(m)
  sct <- SeuratObject::CreateAssayObject(data = lognorm(m))  # counts: an empty matrix
  if (requireNamespace("Seurat", quietly = TRUE)) {
    sct <- methods::new("SCTAssay", sct, SCTModel.list = list())
  }
  seu[["SCT"]] <- sct
  SeuratObject::DefaultAssay(seu) <- "SCT"
  expect_warning(found <- em(seu), "has no 'counts'; using its 'data' layer")
  expect_equal(found$matrix, lognorm(m))
  expect_identical(found$source, "Seurat assay SCT data")
  expect_error(em(seu, layer = "counts"), class = "scbridge_error_not_found")
  expect_error(em(seu, layer = "counts"), "available layers: data")
  expect_identical(em(seu, assay = "RNA")$matrix, m)  # the assay beside it keeps its counts
})

test_that("an SCE with only logcounts falls back to them with a warning", {
  m <- plain(sim_counts())
  sce <- SingleCellExperiment::SingleCellExperiment(assays = list(logcounts = lognorm(m)))
  expect_warning(found <- em(sce), "has no 'counts'; using its 'logcounts' assay")
  expect_equal(found$matrix, lognorm(m))
  expect_error(em(sce, assay = "counts"), "available assays: logcounts")
})

test_that("an altExp is read with assay = \"altexp:NAME\"; its bare name gets a hint", {
  m <- plain(sim_counts())
  sce <- make_sce(m)
  hto <- Matrix::rsparsematrix(4L, ncol(m), density = 0.9,
                               rand.x = function(n) as.double(rpois(n, 20) + 1))
  dimnames(hto) <- list(sprintf("HTO-%d", 1:4), colnames(m))
  SingleCellExperiment::altExp(sce, "HTO") <-
    SummarizedExperiment::SummarizedExperiment(list(counts = hto))
  found <- em(sce, assay = "altexp:HTO")
  expect_identical(found$matrix, hto)
  expect_identical(found$source, "SingleCellExperiment altExp HTO assay counts")
  expect_identical(em(sce)$matrix, m)
  expect_error(em(sce, assay = "HTO"), class = "scbridge_error_not_found")
  expect_error(em(sce, assay = "HTO"), "altexp:HTO", fixed = TRUE)
  expect_error(em(sce, assay = "altexp:ADT"), "its altExps: HTO")
})

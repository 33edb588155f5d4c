# Arguments (R/arguments.R): unknown ones refused with the valid ones listed, Seurat habits
# taken, every value checked before any engine runs.

test_that("an unknown argument is refused, naming it and listing the valid ones", {
  m <- plain(sim_counts())
  seu <- make_seurat_v4(m)
  err <- expect_error(annotate_cells(seu, features = c("CD3E", "MS4A1")),
                      class = "scbridge_error_unknown_parameter")
  expect_identical(err$arguments, "features")
  expect_match(conditionMessage(err), "Valid arguments: model, reference,", fixed = TRUE)
  # Python engine parameters no longer pass through `...`.
  expect_error(annotate_cells(m, saturation = 3), class = "scbridge_error_unknown_parameter")
  expect_error(annotate_cells(m, "markers"), class = "scbridge_error_unknown_parameter")
  # A near miss gets a suggestion.
  expect_snapshot(annotate_cells(seu, min_confidense = 0.5), error = TRUE)
  # The same for the other verbs.
  for (f in list(cell_qc, build_reference, annotation_markers, cell_embedding)) {
    expect_error(f(seu, "label", no_such_argument = 1), class = "scbridge_error_unknown_parameter")
  }
})

test_that("Seurat habits work: verbose = FALSE, slot = for layer", {
  m <- plain(sim_counts())
  seu <- make_seurat_v4(m)
  # All of these are refused for the clash, which comes after the arguments are taken.
  meta <- attr(seu, "meta.data")
  meta$cell_type <- "x"
  attr(seu, "meta.data") <- meta
  expect_error(annotate_cells(seu, verbose = FALSE), class = "scbridge_error_clash")
  expect_error(annotate_cells(seu, slot = "data"), class = "scbridge_error_clash")
  expect_identical(scbridge:::layer_argument(NULL, "data"), "data")
  expect_identical(scbridge:::layer_argument("data", NULL), "data")
  expect_error(annotate_cells(seu, slot = "data", layer = "counts"),
               class = "scbridge_error_invalid_parameter")
})

test_that("values are checked before any engine runs", {
  m <- plain(sim_counts())
  seu <- make_seurat_v4(m)
  # engine "http" with a closed port would fail to connect: these fail first.
  http <- function(...) annotate_cells(m, engine = "http", endpoint = closed_port_endpoint(), ...)
  expect_error(http(model = 3), class = "scbridge_error_invalid_parameter")
  expect_error(http(chunk_size = 0), class = "scbridge_error_invalid_parameter")
  expect_error(http(chunk_size = 2.5), class = "scbridge_error_invalid_parameter")
  expect_error(http(min_confidence = 2), class = "scbridge_error_invalid_parameter")
  expect_error(http(min_gene_fraction = -1), class = "scbridge_error_invalid_parameter")
  expect_error(http(level = "l3"), class = "scbridge_error_invalid_parameter")
  expect_error(http(value_kind = "tpm"), class = "scbridge_error_invalid_parameter")
  expect_error(http(tissue = ""), class = "scbridge_error_invalid_parameter")
  expect_error(http(qc = "yes"), class = "scbridge_error_invalid_parameter")
  expect_error(http(flatten = NA), class = "scbridge_error_invalid_parameter")
  expect_error(http(verbose = "loud"), class = "scbridge_error_invalid_parameter")
  expect_error(http(model = "reference"), class = "scbridge_error_invalid_parameter")
  expect_error(http(reference = "ref.parquet", model = "markers"),
               class = "scbridge_error_invalid_parameter")
  expect_error(annotate_cells(seu, prefix = "", engine = "http"),
               class = "scbridge_error_invalid_parameter")
  expect_error(annotate_cells(seu, set_ident = "yes", engine = "http"),
               class = "scbridge_error_invalid_parameter")
  expect_error(annotate_cells(list(1)), class = "scbridge_error_unsupported")
})

test_that("the tissue is passed on only when given", {
  expect_identical(scbridge:::tissue_param("auto"), list())
  expect_identical(scbridge:::tissue_param("Auto"), list())
  expect_identical(scbridge:::tissue_param("lung"), list(tissue = "lung"))
  expect_identical(scbridge:::tissue_param("UBERON:0002048"), list(tissue = "UBERON:0002048"))
})

# annotation_markers() and cell_embedding() on the python and http engines.

test_that("cell_embedding() stores a DimReduc / reducedDim; engines agree", {
  skip_if_no_python()
  m <- plain(sim_counts())
  emb <- cell_embedding(m, n_components = 5, engine = "python")
  expect_identical(dim(emb), c(ncol(m), 5L))
  expect_identical(rownames(emb), colnames(m))

  seu <- cell_embedding(make_seurat_v5_split(m), n_components = 5, engine = "python")
  dr <- attr(seu, "reductions")$scbridge
  expect_s4_class(dr, "DimReduc")
  expect_equal(unname(dr@cell.embeddings), unname(emb))
  expect_identical(rownames(dr@cell.embeddings), colnames(m))
  expect_error(cell_embedding(seu, n_components = 5, engine = "python"),
               class = "scbridge_error_clash")

  sce <- cell_embedding(make_sce(m), n_components = 5, engine = "python", reduction = "PCA_sc")
  expect_equal(unname(SingleCellExperiment::reducedDim(sce, "PCA_sc")), unname(emb))

  skip_if_no_cli()
  expect_equal(cell_embedding(m, n_components = 5, engine = "cli"), emb, tolerance = 1e-6)

  server <- test_server()
  over_http <- cell_embedding(m, n_components = 5, engine = "http", endpoint = server$endpoint,
                              api_key = server$key)
  # The server computes in float32 and sends JSON; the same numbers to float32 precision.
  expect_equal(over_http, emb, tolerance = 1e-6)
})

test_that("annotation_markers() gives marker genes per label; engines agree", {
  skip_if_no_python()
  m <- plain(sim_counts())
  labels <- attr(sim_counts(), "types")
  mk <- annotation_markers(m, labels = labels, top_n = 4, engine = "python")
  expect_true(all(c("label", "gene", "score", "p_value_adjusted") %in% names(mk)))
  for (type in names(marker_sets)) {
    expect_setequal(mk$gene[mk$label == type], marker_sets[[type]])
  }
  seu <- make_seurat_v4(m)
  meta <- attr(seu, "meta.data")
  meta$truth <- labels
  attr(seu, "meta.data") <- meta
  expect_identical(annotation_markers(seu, labels = "truth", top_n = 4, engine = "python"), mk)
  expect_error(annotation_markers(seu, engine = "python"), class = "scbridge_error_not_found")
  expect_error(annotation_markers(m, labels = labels[-1], engine = "python"), "one label per cell")

  skip_if_no_cli()
  over_cli <- annotation_markers(m, labels = labels, top_n = 4, engine = "cli")
  expect_identical(over_cli$label, mk$label)
  expect_identical(over_cli$gene, mk$gene)
  expect_equal(over_cli$score, mk$score, tolerance = 1e-6)

  server <- test_server()
  over_http <- annotation_markers(m, labels = labels, top_n = 4, engine = "http",
                                  endpoint = server$endpoint, api_key = server$key)
  expect_identical(over_http$label, mk$label)
  expect_identical(over_http$gene, mk$gene)
  expect_equal(over_http$score, mk$score, tolerance = 1e-6)
})

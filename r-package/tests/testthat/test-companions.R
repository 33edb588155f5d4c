# annotation_markers() in FindAllMarkers() shape and cell_embedding(), on every engine.

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

test_that("annotation_markers() has FindAllMarkers()'s columns; engines agree", {
  skip_if_no_python()
  m <- plain(sim_counts())
  labels <- attr(sim_counts(), "types")
  mk <- annotation_markers(m, labels = labels, top_n = 4, engine = "python")
  expect_identical(names(mk), c("p_val", "avg_log2FC", "pct.1", "pct.2", "p_val_adj", "cluster",
                                "gene", "gene_id", "score"))
  expect_s3_class(mk$cluster, "factor")
  expect_identical(levels(mk$cluster), sort(names(marker_sets)))
  expect_identical(rownames(mk), make.unique(mk$gene))
  for (type in names(marker_sets)) {
    expect_setequal(mk$gene[mk$cluster == type], marker_sets[[type]])
  }
  expect_true(all(mk$pct.1 >= 0 & mk$pct.1 <= 1 & mk$p_val_adj >= mk$p_val))
  seu <- make_seurat_v4(m)
  meta <- attr(seu, "meta.data")
  meta$truth <- labels
  attr(seu, "meta.data") <- meta
  expect_identical(annotation_markers(seu, labels = "truth", top_n = 4, engine = "python"), mk)
  expect_error(annotation_markers(seu, engine = "python"), class = "scbridge_error_not_found")
  expect_error(annotation_markers(m, labels = labels[-1], engine = "python"),
               class = "scbridge_error_invalid_parameter")

  skip_if_no_cli()
  over_cli <- annotation_markers(m, labels = labels, top_n = 4, engine = "cli")
  expect_identical(over_cli[c("cluster", "gene", "gene_id")], mk[c("cluster", "gene", "gene_id")])
  expect_equal(over_cli$score, mk$score, tolerance = 1e-6)

  server <- test_server()
  over_http <- annotation_markers(m, labels = labels, top_n = 4, engine = "http",
                                  endpoint = server$endpoint, api_key = server$key)
  expect_identical(over_http[c("cluster", "gene", "gene_id")], mk[c("cluster", "gene", "gene_id")])
  expect_equal(over_http$score, mk$score, tolerance = 1e-6)
})

test_that("Ensembl ids give symbols in `gene` (as the calls' markers) and the ids beside", {
  skip_if_no_python()
  ids <- utils::read.delim(test_path("fixtures", "model_genes_ensembl.tsv"))
  m <- plain(sim_counts())
  m <- m[rownames(m) %in% ids$symbol, ]
  by_symbol <- annotation_markers(m, labels = attr(sim_counts(), "types"), top_n = 4,
                                  engine = "python")
  ensembl <- m
  rownames(ensembl) <- ids$ensembl[match(rownames(m), ids$symbol)]
  mk <- annotation_markers(ensembl, labels = attr(sim_counts(), "types"), top_n = 4,
                           engine = "python")
  expect_identical(mk$gene, by_symbol$gene)
  expect_identical(mk$gene_id, ids$ensembl[match(by_symbol$gene, ids$symbol)])
  calls <- annotate_cells(ensembl, engine = "python", verbose = FALSE)
  expect_true(all(unlist(calls$markers) %in% ids$symbol))
  skip_if_no_cli()
  over_cli <- annotation_markers(ensembl, labels = attr(sim_counts(), "types"), top_n = 4,
                                 engine = "cli")
  expect_identical(over_cli$gene, mk$gene)
})

test_that("labels of a single cell are left out with an R warning", {
  skip_if_no_python()
  m <- plain(sim_counts())
  labels <- attr(sim_counts(), "types")
  labels[[1]] <- "Lonely"
  w <- expect_warning(mk <- annotation_markers(m, labels = labels, top_n = 4, engine = "python"),
                      class = "scbridge_warning_core")
  expect_match(conditionMessage(w), "'Lonely' has 1 cells", fixed = TRUE)
  expect_false("Lonely" %in% mk$cluster)
})

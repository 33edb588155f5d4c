# annotate_cells() through every engine: results in the objects, and python, cli and http
# agreeing cell for cell on every class (dgCMatrix, Seurat v4, Seurat v5 split layers, SCE).

engine_cache <- new.env()

# The python engine's calls on the shared simulated matrix, computed once.
python_calls <- function() {
  if (is.null(engine_cache$python)) {
    engine_cache$python <- annotate_cells(plain(sim_counts()), engine = "python")
  }
  engine_cache$python
}

test_that("the python engine returns one call per cell with list columns", {
  skip_if_no_python()
  m <- plain(sim_counts())
  out <- python_calls()
  expect_s3_class(out, "data.frame")
  expect_identical(names(out)[1:6],
                   c("cell", "label", "ontology_id", "confidence", "alternates", "markers"))
  expect_identical(out$cell, colnames(m))
  expect_type(out$label, "character")
  expect_true(all(out$confidence >= 0 & out$confidence <= 1))
  expect_type(out$alternates, "list")
  expect_true(all(vapply(out$alternates, is.numeric, logical(1))))
  expect_type(unlist(out$markers), "character")
  expect_identical(attr(out, "provenance")$engine, "python")
  # The simulated B cells (MS4A1, CD79A, ...) are called B cells, mostly.
  types <- attr(sim_counts(), "types")
  expect_gt(mean(grepl("B cell", out$label[types == "B"])), 0.8)
  expect_gt(mean(grepl("T cell", out$label[types == "T"])), 0.8)
})

test_that("python: Seurat v4, v5 split layers and SCE get columns, calls() and the same calls", {
  skip_if_no_python()
  m <- plain(sim_counts())
  ref <- python_calls()

  seu <- annotate_cells(make_seurat_v4(m), engine = "python")
  meta <- attr(seu, "meta.data")
  expect_identical(meta$cell_type, ref$label)
  expect_identical(meta$cell_type_confidence, ref$confidence)
  expect_identical(meta$cell_type_ontology, ref$ontology_id)
  expect_identical(meta$sample, rep(c("A", "B"), length.out = ncol(m)))
  expect_same_calls(calls(seu), ref)
  expect_identical(attr(calls(seu), "provenance")$source, "Seurat assay RNA counts")

  v5 <- annotate_cells(make_seurat_v5_split(m), engine = "python", prefix = "scb")
  expect_identical(attr(v5, "meta.data")$scb, ref$label)
  expect_same_calls(calls(v5, prefix = "scb"), ref)
  expect_match(attr(calls(v5, prefix = "scb"), "provenance")$source, "joined")

  sce <- annotate_cells(make_sce(m), engine = "python")
  cd <- SummarizedExperiment::colData(sce)
  expect_identical(cd$cell_type, ref$label)
  expect_identical(cd$cell_type_confidence, ref$confidence)
  expect_same_calls(calls(sce), ref)
  expect_identical(S4Vectors::metadata(sce)$scbridge$cell_type$calls$cell, colnames(m))

  # overwrite = TRUE replaces, other columns stay
  again <- annotate_cells(seu, engine = "python", overwrite = TRUE, min_confidence = 0.99)
  expect_true(all(attr(again, "meta.data")$cell_type[ref$confidence < 0.99] == "Unknown"))
  expect_identical(calls(again)$label_raw, ref$label)
})

test_that("python: chunking does not change the calls", {
  skip_if_no_python()
  chunked <- annotate_cells(plain(sim_counts()), engine = "python", chunk_size = 37)
  expect_same_calls(chunked, python_calls())
})

test_that("cli engine agrees with python cell for cell on every class", {
  skip_if_no_python()
  skip_if_no_cli()
  m <- plain(sim_counts())
  ref <- python_calls()
  out <- annotate_cells(m, engine = "cli")
  expect_same_calls(out, ref)
  expect_identical(attr(out, "provenance")$engine, "cli")
  v5 <- annotate_cells(make_seurat_v5_split(m), engine = "cli")
  expect_same_calls(calls(v5), ref)
  sce <- annotate_cells(make_sce(m), engine = "cli")
  expect_same_calls(calls(sce), ref)
})

test_that("http engine agrees with python cell for cell on every class, chunked", {
  skip_if_no_python()
  server <- test_server()
  m <- plain(sim_counts())
  ref <- python_calls()
  http <- function(object, ...) {
    annotate_cells(object, engine = "http", endpoint = server$endpoint, api_key = server$key, ...)
  }
  out <- http(m, chunk_size = 37)
  expect_same_calls(out, ref)
  expect_identical(attr(out, "provenance")$engine, "http")
  expect_same_calls(calls(http(make_seurat_v4(m))), ref)
  expect_same_calls(calls(http(make_seurat_v5_split(m))), ref)
  expect_same_calls(calls(http(make_sce(m))), ref)
  # lognormalised input too (data layer): the numbers travel exactly
  expect_same_calls(calls(http(make_seurat_v4(m), layer = "data")),
                    calls(annotate_cells(make_seurat_v4(m), layer = "data", engine = "python")))
})

test_that("a chunked http run with no tissue inferred expects what one python call expects", {
  skip_if_no_python()
  server <- test_server()
  # Resident-looking macrophages (VSIG4, CD5L, TIMD4), T cells and fibroblasts: no tissue is
  # inferred, so every chunk expects only the types found in every tissue (the client sends
  # tissue = "unknown"), and the macrophages are macrophages, not Kupffer cells.
  programmes <- list(
    c("C1QA", "C1QB", "C1QC", "CD163", "MRC1", "VSIG4", "CD5L", "TIMD4", "MARCO", "FOLR2",
      "CD68", "AIF1", "CST3", "LYZ", "PTPRC", "APOE", "LAPTM5", "FCER1G", "TYROBP"),
    c("PTPRC", "CD3E", "CD3D", "CD2", "IL7R", "CD4", "LCK", "CORO1A", "LCP1", "TRAC"),
    c("COL1A1", "COL1A2", "COL3A1", "DCN", "LUM", "PDGFRA", "FBLN1", "SPARC"))
  housekeeping <- c("ACTB", "B2M", "MALAT1", "TMSB4X", "EEF1A1", "GAPDH")
  genes <- unique(c(unlist(programmes), housekeeping, utils::head(model_genes, 600)))
  set.seed(7)
  n <- 40L
  counts <- matrix(0, length(genes), 3L * n,
                   dimnames = list(genes, sprintf("cell%03d", seq_len(3L * n))))
  counts[housekeeping, ] <- stats::rpois(length(housekeeping) * 3L * n, 60)
  for (k in seq_along(programmes)) {
    cells <- (k - 1L) * n + seq_len(n)
    counts[programmes[[k]], cells] <- stats::rpois(length(programmes[[k]]) * n, 12) + 2
  }
  m <- as(Matrix::Matrix(counts, sparse = TRUE), "CsparseMatrix")
  ref <- suppressWarnings(annotate_cells(m, engine = "python"))
  expect_identical(unique(ref$label[seq_len(n)]), "macrophage")
  out <- suppressWarnings(annotate_cells(m, engine = "http", endpoint = server$endpoint,
                                         api_key = server$key, chunk_size = n))
  expect_same_calls(out, ref)
})

test_that("gene ids that are not symbols fail with a gene-id error on every engine", {
  skip_if_no_python()
  m <- plain(sim_counts())
  rownames(m) <- sprintf("XQ%05d", seq_len(nrow(m)))
  expect_error(annotate_cells(m, engine = "python"), class = "scbridge_error_gene_ids")
  skip_if_no_cli()
  suppressWarnings(expect_error(annotate_cells(m, engine = "cli"),
                                class = "scbridge_error_gene_ids"))
  server <- test_server()
  expect_error(annotate_cells(m, engine = "http", endpoint = server$endpoint,
                              api_key = server$key), class = "scbridge_error_gene_ids")
})

test_that("auto picks the python engine when it is available", {
  skip_if_no_python()
  out <- annotate_cells(plain(sim_counts()))
  expect_identical(attr(out, "provenance")$engine, "python")
})

test_that("Ensembl gene ids are mapped by the core: same calls as with symbols, on every engine", {
  skip_if_no_python()
  ids <- utils::read.delim(test_path("fixtures", "model_genes_ensembl.tsv"))
  m <- plain(sim_counts())
  m <- m[rownames(m) %in% ids$symbol, ]
  by_symbol <- annotate_cells(m, engine = "python")
  ensembl <- m
  rownames(ensembl) <- ids$ensembl[match(rownames(m), ids$symbol)]
  said <- character(0)
  out <- withCallingHandlers(annotate_cells(ensembl, engine = "python", verbose = TRUE),
                             scbridge_message = function(msg) {
                               said <<- c(said, conditionMessage(msg))
                               invokeRestart("muffleMessage")
                             })
  expect_match(said, "look like Ensembl ids", all = FALSE)
  expect_same_calls(out, by_symbol)
  skip_if_no_cli()
  expect_same_calls(suppressMessages(annotate_cells(ensembl, engine = "cli")), by_symbol)
  server <- test_server()
  expect_same_calls(suppressMessages(annotate_cells(ensembl, engine = "http",
                                                    endpoint = server$endpoint,
                                                    api_key = server$key)), by_symbol)
})

test_that("an unknown model is a not-found error on every engine", {
  skip_if_no_python()
  m <- plain(sim_counts())
  expect_error(annotate_cells(m, model = "no-such-model", engine = "python"),
               class = "scbridge_error_not_found")
  server <- test_server()
  expect_error(annotate_cells(m, model = "no-such-model", engine = "http",
                              endpoint = server$endpoint, api_key = server$key),
               class = "scbridge_error_not_found")
  skip_if_no_cli()
  expect_error(annotate_cells(m, model = "no-such-model", engine = "cli"),
               class = "scbridge_error_not_found")
})

test_that("every engine gives the same depths, cluster-level labels, QC and thresholds", {
  skip_if_no_python()
  skip_if_no_cli()
  server <- test_server()
  m <- plain(sim_counts())
  groups <- attr(sim_counts(), "types")
  args <- list(m, groups = groups, min_confidence = 0.9, tissue = "blood")
  ref <- do.call(annotate_cells, c(args, engine = "python"))
  expect_true(all(c("label_smoothed", "smoothed_confidence", "label_raw") %in% names(ref)))
  expect_same_calls(do.call(annotate_cells, c(args, engine = "cli")), ref)
  expect_same_calls(do.call(annotate_cells, c(args, engine = "http", endpoint = server$endpoint,
                                              api_key = server$key)), ref)
  expect_same_calls(annotate_cells(m, engine = "cli", qc = TRUE),
                    annotate_cells(m, engine = "python", qc = TRUE))
})

test_that("the depths of a call (label_l1 / label_l2, unknown_reason) travel alike on every engine", {
  skip_if_no_python()
  skip_if_no_cli()
  server <- test_server()
  m <- plain(sim_counts())
  seu <- make_seurat_v4(m)
  ref <- annotate_cells(m, engine = "python")
  if (is.null(ref$label_l2)) {
    # A core whose markers model reports no depths: level = "l2" is refused on every engine.
    for (engine in c("python", "cli")) {
      expect_error(annotate_cells(seu, engine = engine, level = "l2"),
                   class = "scbridge_error_level_unavailable")
    }
    expect_error(annotate_cells(seu, engine = "http", endpoint = server$endpoint,
                                api_key = server$key, level = "l2"),
                 class = "scbridge_error_level_unavailable")
    return(invisible())
  }
  expect_same_calls(annotate_cells(m, engine = "cli"), ref)
  expect_same_calls(annotate_cells(m, engine = "http", endpoint = server$endpoint,
                                   api_key = server$key), ref)
  out <- annotate_cells(seu, engine = "python", level = "l2")
  meta <- attr(out, "meta.data")
  expect_identical(meta$cell_type, ref$label_l2)
  expect_identical(meta$cell_type_l1, ref$label_l1)
  expect_identical(meta$cell_type_label, ref$label)
  if (!is.null(ref$unknown_reason)) expect_identical(meta$cell_type_reason, ref$unknown_reason)
})

test_that("a chunked http run samples the cells the core's tissue inference samples", {
  # bridge.numerics.spread_runs(n, 2000) for these n (python -c "...print(spread_runs(n, 2000))")
  starts <- function(n) vapply(spread_runs(n), `[[`, numeric(1), 1L)
  expect_identical(starts(2001), c(0, 250, 500, 750, 1000, 1250, 1500, 1751))
  expect_identical(starts(123457), c(0, 17601, 35202, 52803, 70404, 88005, 105606, 123207))
  expect_identical(spread_runs(120), list(c(0, 120)))
  expect_identical(spread_runs(3e9)[[8]], c(3e9 - 250, 3e9))  # no integer overflow
})

# annotate_cells() (R/annotate.R): what it adds to objects and returns for matrices, the
# depths of a call, cluster-level labels, identities, the threshold, QC and reference options.

annotate_cache <- new.env()

python_matrix_calls <- function() {
  if (is.null(annotate_cache$calls)) {
    annotate_cache$calls <- annotate_cells(plain(sim_counts()), engine = "python")
  }
  annotate_cache$calls
}

test_that("a column clash is an error before annotating, unless overwrite = TRUE", {
  m <- plain(sim_counts())
  seu <- make_seurat_v4(m)
  meta <- attr(seu, "meta.data")
  meta$cell_type <- "mine"
  attr(seu, "meta.data") <- meta
  # engine "http" with no endpoint would fail with engine_unavailable: the clash comes first.
  expect_error(annotate_cells(seu, engine = "http", endpoint = NULL),
               class = "scbridge_error_clash")
  expect_snapshot(annotate_cells(seu, engine = "http", endpoint = NULL), error = TRUE)
  expect_error(annotate_cells(seu, engine = "http", endpoint = "", overwrite = TRUE),
               class = "scbridge_error_engine_unavailable")
  sce <- make_sce(m)
  SummarizedExperiment::colData(sce)$cell_type_confidence <- 1
  expect_error(annotate_cells(sce, engine = "http"), class = "scbridge_error_clash")
  # with groups, the smoothed columns count too
  seu <- make_seurat_v4(m)
  meta <- attr(seu, "meta.data")
  meta$cell_type_smoothed <- "mine"
  attr(seu, "meta.data") <- meta
  expect_error(annotate_cells(seu, groups = "sample", engine = "http"),
               class = "scbridge_error_clash")
})

test_that("a matrix gives a data.frame keyed by cell; flatten = TRUE gives plain columns", {
  skip_if_no_python()
  m <- plain(sim_counts())
  out <- python_matrix_calls()
  expect_identical(rownames(out), colnames(m))
  expect_identical(out$cell, colnames(m))
  expect_type(out$alternates, "list")
  flat <- annotate_cells(m, engine = "python", flatten = TRUE)
  expect_identical(rownames(flat), colnames(m))
  expect_type(flat$alternates, "character")
  expect_type(flat$markers, "character")
  expect_identical(flat$markers, vapply(out$markers, paste, "", collapse = ";"))
  first <- out$alternates[[1]]
  expect_identical(flat$alternates[[1]],
                   paste(sprintf("%s:%s", names(first), formatC(first, digits = 4, format = "g")),
                         collapse = ";"))
  path <- withr::local_tempfile(fileext = ".csv")
  utils::write.csv(flat, path)
  back <- utils::read.csv(path, row.names = 1)
  expect_identical(rownames(back), colnames(m))
  expect_identical(back$label, out$label)
})

test_that("Seurat v4, v5 split layers and SCE get the columns and calls() the same calls", {
  skip_if_no_python()
  m <- plain(sim_counts())
  ref <- python_matrix_calls()
  seu <- annotate_cells(make_seurat_v4(m), engine = "python")
  meta <- attr(seu, "meta.data")
  expect_identical(meta$cell_type, ref$label)
  expect_identical(meta$cell_type_confidence, ref$confidence)
  expect_identical(meta$cell_type_ontology, ref$ontology_id)
  expect_identical(meta$sample, rep(c("A", "B"), length.out = ncol(m)))
  expect_match(meta$cell_type_key, ":cell0001$", all = FALSE)
  expect_same_calls(calls(seu), ref)
  expect_identical(attr(calls(seu), "provenance")$source, "Seurat assay RNA counts")

  v5 <- annotate_cells(make_seurat_v5_split(m), engine = "python", prefix = "scb")
  expect_identical(attr(v5, "meta.data")$scb, ref$label)
  expect_same_calls(calls(v5, prefix = "scb"), ref)
  expect_match(attr(calls(v5, prefix = "scb"), "provenance")$source, "joined")

  sce <- annotate_cells(make_sce(m), engine = "python")
  cd <- SummarizedExperiment::colData(sce)
  expect_identical(cd$cell_type, ref$label)
  expect_same_calls(calls(sce), ref)

  # overwrite = TRUE replaces, other columns stay; min_confidence keeps the raw label
  again <- annotate_cells(seu, engine = "python", overwrite = TRUE, min_confidence = 0.99)
  low <- ref$confidence < 0.99
  expect_true(all(attr(again, "meta.data")$cell_type[low] == "Unknown"))
  expect_identical(calls(again)$label_raw, ref$label)
  expect_identical(attr(again, "meta.data")$sample, meta$sample)
})

test_that("groups give cluster-level labels by majority, in their own columns", {
  skip_if_no_python()
  m <- plain(sim_counts())
  ref <- python_matrix_calls()
  seu <- make_seurat_v4(m)
  meta <- attr(seu, "meta.data")
  meta$cluster <- attr(sim_counts(), "types")
  attr(seu, "meta.data") <- meta
  out <- annotate_cells(seu, engine = "python", groups = "cluster", set_ident = TRUE)
  meta <- attr(out, "meta.data")
  expected <- scbridge:::majority_by_group(ref$label, meta$cluster)
  expect_identical(meta$cell_type_smoothed, expected$label)
  expect_identical(meta$cell_type_smoothed_confidence, expected$share)
  expect_identical(meta$cell_type, ref$label)  # the per-cell calls stay
  # one label per cluster, and the B cluster is called a B cell
  by_cluster <- tapply(meta$cell_type_smoothed, meta$cluster, function(x) length(unique(x)))
  expect_true(all(by_cluster == 1L))
  expect_match(unique(meta$cell_type_smoothed[meta$cluster == "B"]), "B cell")
  # set_ident with groups: the cluster-level labels become the identities
  idents <- attr(out, "active.ident")
  expect_s3_class(idents, "factor")
  expect_identical(names(idents), colnames(m))
  expect_identical(as.character(idents), meta$cell_type_smoothed)
  # groups as one value per cell, for a matrix too
  flat <- annotate_cells(m, engine = "python", groups = meta$cluster)
  expect_identical(flat$label_smoothed, expected$label)
  expect_error(annotate_cells(m, engine = "python", groups = meta$cluster[-1]),
               class = "scbridge_error_invalid_parameter")
  expect_error(annotate_cells(seu, engine = "python", groups = "no_such_column"),
               class = "scbridge_error_not_found")
})

test_that("set_ident sets Idents() of a Seurat object and colLabels() of an SCE", {
  skip_if_no_python()
  m <- plain(sim_counts())
  ref <- python_matrix_calls()
  seu <- annotate_cells(make_seurat_v4(m), engine = "python", set_ident = TRUE)
  expect_identical(as.character(SeuratObject::Idents(seu)), ref$label)
  sce <- annotate_cells(make_sce(m), engine = "python", set_ident = TRUE)
  expect_identical(as.character(SingleCellExperiment::colLabels(sce)), ref$label)
})

test_that("level chooses the depth of the main column; a depth the model lacks is refused", {
  skip_if_no_python()
  m <- plain(sim_counts())
  ref <- python_matrix_calls()
  seu <- make_seurat_v4(m)
  if (is.null(ref$label_l2)) {
    # This core's markers model reports no compartments / lineages (yet): refused, classed.
    expect_error(annotate_cells(seu, engine = "python", level = "l2"),
                 class = "scbridge_error_level_unavailable")
    expect_snapshot(annotate_cells(m, engine = "python", level = "l1"), error = TRUE)
  }
  # With the depth columns, as a Calls table carries them (here added to this core's calls).
  calls <- ref
  calls$unknown_reason <- NULL
  calls$label_l1 <- ifelse(grepl("T cell|B cell|NK|monocyte", calls$label), "immune", "other")
  calls$label_l2 <- sub("^.* (T cell|B cell)$", "\\1", calls$label)
  cols <- scbridge:::object_columns(calls, "ct", "l2", "run")
  expect_identical(names(cols), c("ct", "ct_confidence", "ct_ontology", "ct_l1", "ct_l2",
                                  "ct_label", "ct_key"))
  expect_identical(cols$ct, calls$label_l2)
  expect_identical(cols$ct_label, calls$label)
  expect_identical(cols$ct_l1, calls$label_l1)
  cols <- scbridge:::object_columns(calls, "ct", "label", "run")
  expect_false("ct_label" %in% names(cols))
  expect_identical(cols$ct, calls$label)
})

test_that("qc = TRUE or a cell_qc() table puts the QC columns beside the calls", {
  skip_if_no_python()
  m <- plain(sim_counts())
  ref <- python_matrix_calls()
  with_qc <- annotate_cells(m, engine = "python", qc = TRUE)
  expect_true(all(c("total_counts", "n_genes", "mito_fraction", "qc_pass", "qc_reason") %in%
                    names(with_qc)))
  expect_identical(with_qc$total_counts, as.double(Matrix::colSums(m)))
  expect_identical(with_qc[names(ref)], ref[names(ref)])
  table <- cell_qc(m, engine = "python", doublets = FALSE)
  attached <- annotate_cells(m, engine = "python", qc = table)
  expect_identical(attached$qc_pass, table$qc_pass)
  expect_error(annotate_cells(m, engine = "python", qc = table[1:5, ]),
               class = "scbridge_error_invalid_parameter")
  # the http engine computes no QC: said before anything is sent
  expect_error(annotate_cells(m, engine = "http", endpoint = closed_port_endpoint(), qc = TRUE),
               class = "scbridge_error_unsupported")
})

test_that("tissue and min_gene_fraction reach the core's engine", {
  skip_if_no_python()
  m <- plain(sim_counts())
  out <- annotate_cells(m, engine = "python", tissue = "blood")
  expect_identical(attr(out, "provenance")$parameters$tissue, "blood")
  out <- annotate_cells(m, engine = "python", min_gene_fraction = 0.01)
  expect_identical(attr(out, "provenance")$parameters$min_gene_fraction, 0.01)
  expect_same_calls(out, python_matrix_calls())
  # "auto" (the default) is the engine's own choice: nothing is passed
  expect_null(attr(python_matrix_calls(), "provenance")$parameters$tissue)
})

test_that("the JSON calls contract becomes a data.frame with list columns", {
  json <- '{"calls": [
    {"cell": "a", "label": "T cell", "ontology_id": "CL:0000084", "confidence": 0.8500000238418579,
     "alternates": [{"label": "NK cell", "score": 0.1}, {"label": "B cell", "score": 0.05}],
     "markers": ["CD3E", "CD3D"]},
    {"cell": "b", "label": "B cell", "ontology_id": null, "confidence": 0.5,
     "alternates": [], "markers": []}], "metadata": {}}'
  body <- jsonlite::fromJSON(json, simplifyVector = TRUE)
  calls <- scbridge:::calls_from_json(body$calls)
  expect_identical(names(calls), c("cell", "label", "ontology_id", "confidence", "alternates", "markers"))
  expect_identical(calls$cell, c("a", "b"))
  expect_identical(calls$ontology_id, c("CL:0000084", NA))
  expect_identical(calls$confidence, c(0.8500000238418579, 0.5))
  expect_identical(calls$alternates[[1]], c(`NK cell` = 0.1, `B cell` = 0.05))
  expect_identical(calls$alternates[[2]], stats::setNames(numeric(0), character(0)))
  expect_identical(calls$markers, list(c("CD3E", "CD3D"), character(0)))
  # the fast path over unsimplified records gives the same data.frame
  records <- jsonlite::parse_json(json, simplifyVector = FALSE)$calls
  expect_identical(scbridge:::calls_from_records(records), calls)
})

test_that("the http request body is the tutorial JSON with exact numbers", {
  m <- plain(sim_counts(n_cells = 5))
  block <- scbridge:::csr_block(m, 1L, 5L)
  block$n_genes <- nrow(m)
  genes <- as.character(jsonlite::toJSON(rownames(m)))
  body <- jsonlite::fromJSON(scbridge:::json_body(block, genes, "markers", NULL),
                             simplifyVector = TRUE)
  expect_identical(body$genes, rownames(m))
  expect_identical(as.integer(body$matrix$indptr), m@p)
  expect_identical(as.integer(body$matrix$indices), m@i)
  expect_identical(body$matrix$data, m@x)
  expect_identical(as.integer(body$matrix$shape), c(5L, nrow(m)))
  expect_identical(body$model, "markers")
  expect_null(body$reference_atlas)
  expect_match(scbridge:::json_numbers(c(3, 1)), "[3.0,1.0]", fixed = TRUE)
  x <- c(0.1 + 0.2, 1 / 3, pi * 1e-7)
  expect_identical(jsonlite::fromJSON(scbridge:::json_numbers(x)), x)
})

test_that("the cli engine hands over Arrow (built in R where no Arrow package is), rds on request", {
  withr::local_options(scbridge.cli_transport = "auto")
  expect_identical(scbridge:::cli_transport(), "arrow")
  withr::local_options(scbridge.cli_transport = "rds")
  expect_identical(scbridge:::cli_transport(), "rds")
  withr::local_options(scbridge.cli_transport = "feather")
  expect_error(scbridge:::cli_transport(), class = "scbridge_error_invalid_parameter")
  withr::local_options(scbridge.http_transport = "arrow")
  if (is.null(scbridge:::arrow_backend())) {
    expect_error(scbridge:::http_transport(), class = "scbridge_error_dependency")
  } else {
    expect_identical(scbridge:::http_transport(), "arrow")
  }
})

test_that("NaN, infinite and negative values are refused before any engine, naming a cell", {
  m <- plain(sim_counts())
  for (value in c(NaN, Inf, -1)) {
    bad <- m
    bad@x[bad@p[[3]] + 1L] <- value  # the first stored value of cell 3
    err <- expect_error(annotate_cells(bad, engine = "http", endpoint = closed_port_endpoint()),
                        class = "scbridge_error_input")
    expect_match(conditionMessage(err), "first in cell 'cell0003'")
  }
})

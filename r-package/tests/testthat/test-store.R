# Calls kept per cell (R/store.R): calls() follows the cells through subset(), RenameCells(),
# merge() and cbind(), and refuses clearly where it cannot.

store_cache <- new.env()

annotated_seurat <- function() {
  if (is.null(store_cache$seu)) {
    store_cache$seu <- annotate_cells(make_seurat_v4(plain(sim_counts())), engine = "python")
  }
  store_cache$seu
}

test_that("calls() gives the rows of the cells the object holds now, keyed by cell", {
  skip_if_no_python()
  seu <- annotated_seurat()
  full <- calls(seu)
  expect_identical(rownames(full), colnames(seu))
  keep <- colnames(seu)[c(5, 1, 30, 77)]
  small <- subset(seu, cells = keep)
  out <- calls(small)
  expect_identical(out$cell, colnames(small))
  expect_identical(nrow(out), 4L)
  expect_identical(out$label, full[colnames(small), "label"])
  expect_identical(out$alternates, full$alternates[match(colnames(small), full$cell)])
  expect_identical(out$label, attr(small, "meta.data")$cell_type)
})

test_that("RenameCells() keeps every call with its cell, under the new id", {
  skip_if_no_python()
  seu <- annotated_seurat()
  renamed <- SeuratObject::RenameCells(seu, add.cell.id = "S1")
  out <- calls(renamed)
  expect_identical(out$cell, paste0("S1_", colnames(seu)))
  expect_identical(rownames(out), out$cell)
  expect_identical(out$label, calls(seu)$label)
  expect_identical(out$markers, calls(seu)$markers)
})

test_that("merge() keeps the columns right; calls() says the full calls are gone", {
  skip_if_no_python()
  seu <- annotated_seurat()
  a <- subset(seu, cells = colnames(seu)[1:60])
  b <- subset(seu, cells = colnames(seu)[61:120])
  merged <- merge(a, b, add.cell.ids = c("a", "b"))
  meta <- attr(merged, "meta.data")
  expect_identical(meta$cell_type, attr(seu, "meta.data")$cell_type)
  expect_identical(meta$cell_type_confidence, attr(seu, "meta.data")$cell_type_confidence)
  # SeuratObject's merge() drops @misc, where the full calls are kept: refused, saying so.
  err <- expect_error(calls(merged), class = "scbridge_error_stale_calls")
  expect_match(conditionMessage(err), "merge() keeps the cell metadata", fixed = TRUE)
  # Annotating the merged object again is the way out.
  again <- annotate_cells(merged, engine = "python", overwrite = TRUE)
  expect_identical(calls(again)$cell, colnames(merged))
  expect_identical(calls(again)$label, calls(seu)$label)
})

test_that("cells whose run the object does not hold are refused, naming how many", {
  skip_if_no_python()
  seu <- annotated_seurat()
  other <- annotate_cells(make_seurat_v4(plain(sim_counts(n_cells = 40, seed = 2))),
                          engine = "python")
  # Put the other object's cells (with their keys) beside this object's run.
  mixed <- seu
  meta <- attr(seu, "meta.data")
  extra <- attr(other, "meta.data")
  rownames(extra) <- paste0("y_", rownames(extra))
  combined <- rbind(meta[, intersect(names(meta), names(extra))],
                    extra[, intersect(names(meta), names(extra))])
  attr(mixed, "meta.data") <- combined
  err <- expect_error(calls(mixed), class = "scbridge_error_stale_calls")
  expect_match(conditionMessage(err), "40 of the 160 cells have no stored calls", fixed = TRUE)
})

test_that("SCE: subset, colnames<- and cbind() keep the calls right", {
  skip_if_no_python()
  m <- plain(sim_counts())
  sce <- annotate_cells(make_sce(m), engine = "python")
  full <- calls(sce)
  sub <- sce[, c(3, 2, 1)]
  expect_identical(calls(sub)$label, full$label[c(3, 2, 1)])
  renamed <- sce
  colnames(renamed) <- paste0("r_", colnames(sce))
  expect_identical(calls(renamed)$cell, colnames(renamed))
  expect_identical(calls(renamed)$label, full$label)
  # Two separately annotated SCEs combined: cbind() keeps both runs, so all cells are found.
  other <- annotate_cells(make_sce(plain(sim_counts(n_cells = 40, seed = 2))), engine = "python")
  colnames(other) <- paste0("o_", colnames(other))
  both <- BiocGenerics::cbind(sce, other)
  out <- calls(both)
  expect_identical(out$cell, colnames(both))
  expect_identical(out$label, c(full$label, calls(other)$label))
  expect_length(attr(out, "provenance"), 2L)
})

test_that("an object without the key column or without calls is refused clearly", {
  skip_if_no_python()
  seu <- annotated_seurat()
  meta <- attr(seu, "meta.data")
  meta$cell_type_key <- NULL
  attr(seu, "meta.data") <- meta
  expect_error(calls(seu), class = "scbridge_error_stale_calls")
  bare <- make_seurat_v4(plain(sim_counts()))
  expect_error(calls(bare), class = "scbridge_error_not_found")
  expect_snapshot(calls(bare, prefix = "scb"), error = TRUE)
  expect_error(calls(plain(sim_counts())), class = "scbridge_error_unsupported")
})

test_that("overwriting drops the columns of the earlier run that the new one does not add", {
  skip_if_no_python()
  m <- plain(sim_counts())
  seu <- make_seurat_v4(m)
  meta <- attr(seu, "meta.data")
  meta$cluster <- attr(sim_counts(), "types")
  attr(seu, "meta.data") <- meta
  grouped <- annotate_cells(seu, engine = "python", groups = "cluster")
  expect_true("cell_type_smoothed" %in% colnames(attr(grouped, "meta.data")))
  again <- annotate_cells(grouped, engine = "python", overwrite = TRUE)
  expect_false("cell_type_smoothed" %in% colnames(attr(again, "meta.data")))
  expect_true("cluster" %in% colnames(attr(again, "meta.data")))
})

test_that("flatten = TRUE gives plain columns", {
  skip_if_no_python()
  flat <- calls(annotated_seurat(), flatten = TRUE)
  expect_type(flat$alternates, "character")
  expect_type(flat$markers, "character")
})

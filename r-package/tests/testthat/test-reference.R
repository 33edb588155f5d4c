# build_reference() and annotate_cells(reference = ) (R/reference.R), on the python and cli
# engines.

reference_cache <- new.env()

labelled_seurat <- function() {
  m <- plain(sim_counts(n_cells = 200, seed = 3))
  seu <- make_seurat_v4(m)
  meta <- attr(seu, "meta.data")
  meta$truth <- attr(sim_counts(n_cells = 200, seed = 3), "types")
  attr(seu, "meta.data") <- meta
  seu
}

python_reference <- function() {
  if (is.null(reference_cache$ref)) {
    reference_cache$ref <- build_reference(labelled_seurat(), "truth", engine = "python")
  }
  reference_cache$ref
}

test_that("a reference built from a labelled object annotates other cells with its labels", {
  skip_if_no_python()
  ref <- python_reference()
  expect_s3_class(ref, "scbridge_reference")
  expect_true(file.exists(ref$file))
  expect_setequal(ref$labels, names(marker_sets))
  expect_output(print(ref), "scbridge reference: 4 labels")
  query <- plain(sim_counts())
  out <- annotate_cells(query, reference = ref, engine = "python")
  expect_identical(attr(out, "provenance")$model, "reference")
  expect_gt(mean(out$label == attr(sim_counts(), "types")), 0.9)
  # the file path works as well as the object
  expect_same_calls(annotate_cells(query, reference = ref$file, engine = "python"), out)
  # a labelled object directly, with its label column
  direct <- annotate_cells(query, reference = labelled_seurat(), reference_labels = "truth",
                           engine = "python")
  expect_identical(direct$label, out$label)
})

test_that("the cli engine builds and uses references like the python engine", {
  skip_if_no_python()
  skip_if_no_cli()
  file <- file.path(withr::local_tempdir(), "ref")  # .parquet is added
  ref <- build_reference(labelled_seurat(), "truth", file = file, engine = "cli")
  expect_identical(ref$file, normalizePath(paste0(file, ".parquet")))
  expect_null(ref$labels)
  expect_output(print(ref), "labels in the file")
  query <- plain(sim_counts())
  expect_same_calls(annotate_cells(query, reference = ref, engine = "cli"),
                    annotate_cells(query, reference = python_reference(), engine = "python"))
})

test_that("what a reference needs is checked, with classed errors", {
  m <- plain(sim_counts())
  seu <- labelled_seurat()
  expect_error(build_reference(seu, "no_such_column", engine = "python"),
               class = "scbridge_error_not_found")
  expect_error(build_reference(m, c("a", "b")), class = "scbridge_error_invalid_parameter")
  expect_error(build_reference(seu, "truth", genes_per_label = 0),
               class = "scbridge_error_invalid_parameter")
  expect_error(build_reference(seu, "truth", engine = "http"), class = "scbridge_error_unsupported")
  expect_error(annotate_cells(m, reference = seu, engine = "python"),
               class = "scbridge_error_invalid_parameter")
  expect_error(annotate_cells(m, reference = "no/such/file.parquet", engine = "python"),
               class = "scbridge_error_not_found")
  expect_error(annotate_cells(m, reference = 42, engine = "python"),
               class = "scbridge_error_invalid_parameter")
  skip_if_no_python()
  # too few cells of a label: the core's own refusal, classed
  few <- seu
  meta <- attr(few, "meta.data")
  meta$truth[1:195] <- "T"
  attr(few, "meta.data") <- meta
  expect_error(build_reference(few, "truth", engine = "python"), class = "scbridge_error_input")
})

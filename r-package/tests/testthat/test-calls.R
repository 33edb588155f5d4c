# The calls data.frame (R/calls.R): the decoders every engine's reply goes through, and what R
# adds for every engine alike.

test_that("the majority vote per group is the core's (bridge._smoothing), ties included", {
  labels <- c("T cell", "B cell", "B cell", "T cell", "NK cell", "NK cell", "Mono", "T cell",
              "B cell", "Zeta", "alpha", "Alpha")
  groups <- c("1", "1", "1", "2", "2", "3", "3", NA, NA, "4", "4", "4")
  core <- python_json(sprintf(paste(
    "import json, numpy as np",
    "from bridge._smoothing import _majority_by_group",
    "labels = np.array(json.loads('%s'), dtype=object)",
    "groups = np.array(json.loads('%s'), dtype=object)",
    "label, share = _majority_by_group(labels, groups)",
    "print(json.dumps({'label': list(map(str, label)), 'share': [float(s) for s in share]}))",
    sep = "\n"), jsonlite::toJSON(labels), jsonlite::toJSON(groups, na = "null")))
  ours <- scbridge:::majority_by_group(labels, groups)
  expect_identical(ours$label, core$label)
  expect_equal(ours$share, core$share, tolerance = 0)
})

test_that("min_confidence turns low calls into Unknown and keeps the raw label", {
  calls <- data.frame(cell = c("a", "b", "c"), label = c("T", "B", "NK"),
                      confidence = c(0.9, 0.2, 0.5), stringsAsFactors = FALSE)
  out <- scbridge:::apply_min_confidence(calls, 0.5)
  expect_identical(out$label, c("T", "Unknown", "NK"))
  expect_identical(out$label_raw, c("T", "B", "NK"))
  expect_identical(scbridge:::apply_min_confidence(calls, NULL), calls)
  expect_error(scbridge:::apply_min_confidence(calls, -1), class = "scbridge_error_invalid_parameter")
})

test_that("the python engine's flat columns decode with their types and nulls", {
  extra <- list(
    label_l1 = list(codes = list(c(0L, 1L, -1L), list("immune", "stromal")), na = c(FALSE, FALSE, TRUE)),
    n_genes = list(values = c(3, 4, 5), na = c(FALSE, TRUE, FALSE), integer = TRUE),
    qc_pass = list(values = c(TRUE, FALSE, TRUE), na = c(FALSE, FALSE, FALSE)))
  out <- scbridge:::decode_extra(extra)
  expect_identical(out$label_l1, c("immune", "stromal", NA))
  expect_identical(out$n_genes, c(3L, NA, 5L))
  expect_identical(out$qc_pass, c(TRUE, FALSE, TRUE))
})

test_that("list columns that do not match the cells are an engine failure", {
  expect_error(scbridge:::split_by_counts(1:3, c(1L, 1L), 2L, integer(0)),
               class = "scbridge_error_engine_failure")
  expect_identical(scbridge:::split_by_counts(c(a = 1, b = 2), c(0L, 2L), 2L, numeric(0)),
                   list(stats::setNames(numeric(0), character(0)), c(a = 1, b = 2)))
})

test_that("a depth the model did not report is a classed error naming the column", {
  calls <- data.frame(cell = "a", label = "T cell", stringsAsFactors = FALSE)
  expect_identical(scbridge:::level_values(calls, "label"), "T cell")
  err <- expect_error(scbridge:::level_values(calls, "l1"), class = "scbridge_error_level_unavailable")
  expect_match(conditionMessage(err), "'label_l1' column", fixed = TRUE)
  calls$label_l1 <- factor("immune")
  expect_identical(scbridge:::level_values(calls, "l1"), "immune")
})

test_that("flatten_calls() writes alternates and markers as the core's CSV does", {
  calls <- data.frame(cell = c("a", "b"), label = c("T cell", "B cell"), stringsAsFactors = FALSE)
  calls$alternates <- list(c(`NK cell` = 0.123456, `B cell` = 1e-7), stats::setNames(numeric(0), character(0)))
  calls$markers <- list(c("CD3E", "CD3D"), character(0))
  flat <- scbridge:::flatten_calls(calls)
  expect_identical(flat$alternates, c("NK cell:0.1235;B cell:1e-07", ""))
  expect_identical(flat$markers, c("CD3E;CD3D", ""))
})

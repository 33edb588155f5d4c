# The error codes (R/codes.R): the same vocabulary as the core's, so the two cannot drift, and
# one function from a code to the condition's classes.

test_that("the R package's core codes are exactly bridge._errors.CODES, families included", {
  python <- python_json(paste(
    "import json; from bridge._errors import CODES",
    "print(json.dumps({code: family for code, (family, _) in CODES.items()}))", sep = "\n"))
  python <- unlist(python)
  ours <- scbridge:::core_codes
  expect_setequal(names(ours), names(python))
  expect_identical(ours[sort(names(ours))], python[sort(names(python))])
})

test_that("every code the service sends has a class in R", {
  found <- python_json(paste(
    "import json, pathlib, re, bridge",
    "from bridge.server._problems import STATUS",
    "codes = set(STATUS)",
    "app = pathlib.Path(bridge.__file__).parent / 'server' / '_app.py'",
    "codes |= set(re.findall(r'ApiError\\(\\d+, \"([a-z_]+)\"', app.read_text()))",
    "docs = pathlib.Path(bridge.__file__).parent.parent / 'docs' / 'service.md'",
    "table = docs.read_text() if docs.exists() else ''",
    "rows = [l for l in table.splitlines() if re.match(r'\\| [0-9]{3} \\|', l)]",
    "documented = set(re.findall(r'`([a-z_]+)`', '\\n'.join(rows)))",
    "print(json.dumps({'code': sorted(codes), 'documented': sorted(documented),",
    "                  'docs': docs.exists()}))", sep = "\n"))
  known <- names(scbridge:::all_codes)
  expect_true(length(found$code) > 10L)
  expect_identical(setdiff(found$code, known), character(0))
  # docs/service.md ships with the repository, not with an installed core.
  if (isTRUE(found$docs)) expect_identical(setdiff(found$documented, known), character(0))
})

test_that("a code becomes code, family, aliases, scbridge_error, error, condition", {
  classes <- scbridge:::error_classes
  expect_identical(classes("gene_ids"),
                   c("scbridge_error_gene_ids", "scbridge_error_invalid_input",
                     "scbridge_error_input", "scbridge_error", "error", "condition"))
  expect_identical(classes("too_many_cells")[1:4],
                   c("scbridge_error_too_many_cells", "scbridge_error_too_large",
                     "scbridge_error_capacity", "scbridge_error_invalid_input"))
  expect_true("scbridge_error_dependency" %in% classes("missing_dependency"))
  expect_true("scbridge_error_unreachable" %in% classes("remote_unreachable"))
  expect_true("scbridge_error_auth" %in% classes("invalid_api_key"))
  expect_true("scbridge_error_remote" %in% classes("invalid_api_key"))
  expect_true("scbridge_error_engine_unavailable" %in% classes("python_mismatch"))
  expect_true("scbridge_error_python" %in% classes("python_missing"))
  # A code sent by a server is also a remote error; an unknown one is filed as its family.
  expect_true("scbridge_error_remote" %in% classes("gene_ids", remote = TRUE))
  expect_identical(classes("brand_new_code", remote = TRUE)[1:3],
                   c("scbridge_error_brand_new_code", "scbridge_error_remote_error",
                     "scbridge_error_remote"))
  expect_identical(classes("brand_new_code")[1:2],
                   c("scbridge_error_brand_new_code", "scbridge_error_error"))
  for (code in names(scbridge:::all_codes)) {
    cls <- classes(code)
    expect_identical(cls[[1L]], paste0("scbridge_error_", code))
    expect_identical(utils::tail(cls, 3L), c("scbridge_error", "error", "condition"))
    expect_false(anyDuplicated(cls) > 0L)
  }
})

test_that("the code of a command-line error line is read from its error[CODE] prefix", {
  expect_identical(scbridge:::cli_error_code("scbridge annotate: error[gene_ids]: no genes"),
                   "gene_ids")
  expect_identical(scbridge:::cli_error_code("Traceback (most recent call last):"), NA_character_)
})

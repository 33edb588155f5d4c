# The error codes of scbridge, and the condition classes R gives them.
#
# Every error carries a stable code (snake_case) and a family: the Python core's codes are
# bridge/_errors.py CODES (the family is the default code of the exception's class), the
# service adds a few of its own (docs/service.md), and the R package a few more for what
# happens only in R. error_classes() turns a code into the classes of the R condition,
#   c("scbridge_error_<code>", "scbridge_error_<family>", <aliases>, "scbridge_error",
#     "error", "condition"),
# in this one place: no code anywhere looks at the wording of a message. tests/testthat/
# test-codes.R checks core_codes against the core's CODES, so the two cannot drift.

# code -> family, exactly as bridge/_errors.py CODES.
core_codes <- c(
  error = "error",
  invalid_input = "invalid_input",
  invalid_parameter = "invalid_input",
  invalid_payload = "invalid_input",
  unknown_parameter = "invalid_input",
  invalid_cells = "invalid_input",
  invalid_genes = "invalid_input",
  invalid_shape = "invalid_input",
  genes_mismatch = "invalid_input",
  indptr_length = "invalid_input",
  indptr_not_monotone = "invalid_input",
  shape_mismatch = "invalid_input",
  index_out_of_range = "invalid_input",
  duplicate_indices = "invalid_input",
  non_finite_values = "invalid_input",
  invalid_values = "invalid_input",
  non_integer_counts = "invalid_input",
  empty_cells = "invalid_input",
  same_file = "invalid_input",
  gene_ids = "gene_ids",
  too_large = "too_large",
  too_many_cells = "too_large",
  invalid_format = "invalid_format",
  unsupported_version = "invalid_format",
  invalid_reference = "invalid_format",
  invalid_arrow = "invalid_format",
  compressed_arrow = "invalid_format",
  invalid_json = "invalid_format",
  unsupported = "unsupported",
  not_found = "not_found",
  unknown_model = "not_found",
  missing_dependency = "missing_dependency",
  r_failure = "r_failure",
  remote_error = "remote_error",
  remote_unreachable = "remote_error",
  remote_reply = "remote_error",
  unknown_tissue = "invalid_input",
  ambiguous_object = "invalid_input",
  invalid_labels = "invalid_input",
  too_many_labels = "invalid_input",
  worker_lost = "error"
)

# Codes only `scbridge serve` sends (docs/service.md), with the family R files them under.
service_codes <- c(
  missing_api_key = "auth",
  invalid_api_key = "auth",
  body_too_large = "too_large",
  body_timeout = "invalid_input",
  header_timeout = "invalid_input",
  headers_too_large = "too_large",
  unsupported_media_type = "invalid_format",
  unsupported_encoding = "invalid_format",
  unsupported_file_type = "unsupported",
  unknown_atlas = "not_found",
  invalid_labels = "invalid_input",
  internal_error = "remote_error",
  server_busy = "remote_error",
  out_of_memory = "remote_error"
)

# The R package's own codes.
r_codes <- c(
  clash = "invalid_input",               # result columns or a reduction exist already
  transposed = "gene_ids",               # a cells x genes matrix where genes x cells belongs
  level_unavailable = "not_found",       # `level` names a depth the model does not report
  stale_calls = "not_found",             # calls() for cells the stored calls do not cover
  engine_unavailable = "engine_unavailable",  # an engine that is not set up here
  python_missing = "engine_unavailable",      # ... the python engine in particular
  python_mismatch = "engine_unavailable",     # R's Python is another than the one asked for
  auth = "auth",                         # HTTP 401 / 403 without a code in the reply
  engine_failure = "error",              # an engine failed unexpectedly (a bug, not the data)
  arrow_format = "invalid_format"        # R's Arrow writer made a malformed batch (a bug)
)

all_codes <- c(core_codes, service_codes, r_codes)

# Broader classes a family (or a code) also gets: the words earlier versions of the package
# used, and the parent families of the core's exception tree.
family_aliases <- list(
  invalid_input = "input",
  gene_ids = c("invalid_input", "input"),
  too_large = c("capacity", "invalid_input", "input"),
  invalid_format = c("format", "input"),
  missing_dependency = "dependency",
  remote_error = "remote",
  auth = "remote",
  r_failure = "engine",
  error = "engine"
)
code_aliases <- list(remote_unreachable = "unreachable", python_missing = "python")

code_family <- function(code, remote = FALSE) {
  family <- all_codes[code]
  if (is.na(family)) return(if (remote) "remote_error" else "error")
  unname(family)
}

# The classes of the condition for `code` (an error sent by a server: `remote = TRUE`).
error_classes <- function(code, family = NULL, remote = FALSE) {
  family <- family %||% code_family(code, remote)
  words <- unique(c(code, family, family_aliases[[family]], code_aliases[[code]],
                    if (remote) "remote"))
  c(paste0("scbridge_error_", words), "scbridge_error", "error", "condition")
}

# The code in a command-line error line, `scbridge CMD: error[CODE]: message`, or NA.
cli_error_code <- function(line) {
  code <- regmatches(line, regexpr("(?<=error\\[)[a-z0-9_]+(?=\\])", line, perl = TRUE))
  if (length(code)) code else NA_character_
}

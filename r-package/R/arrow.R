# The Arrow CSR format (docs/format.md) from R, used when the R package arrow or nanoarrow is
# installed: the cli engine writes it as a file, the http engine sends it as a stream. The
# list offsets of the `indices` / `values` columns are the dgCMatrix's p slot, their
# children its i and x slots.
#
# NOT exercised by the tests on this project's CI: Debian bookworm packages neither arrow nor
# nanoarrow for R, so there the cli engine uses .rds and the http engine JSON (both tested).
# options(scbridge.cli_transport = "rds", scbridge.http_transport = "json") force those.

arrow_backend <- function() {
  if (requireNamespace("arrow", quietly = TRUE)) return("arrow")
  if (requireNamespace("nanoarrow", quietly = TRUE) &&
      utils::packageVersion("nanoarrow") >= "0.4.0") return("nanoarrow")
  NULL
}

csr_metadata <- function(m, source) {
  list(
    scbridge.format = "scbridge.arrow-csr",
    scbridge.format_version = "1.0",
    scbridge.genes = as.character(jsonlite::toJSON(rownames(m))),
    scbridge.value_kind = if (all(m@x == round(m@x))) "counts" else "lognorm",
    scbridge.source = source
  )
}

# arrow: the lists are built from per-cell pieces (arrow's R API has no ListArray from
# offsets); one copy of the matrix.
arrow_csr_table <- function(m, source) {
  n <- ncol(m)
  per_cell <- factor(rep.int(seq_len(n), diff(m@p)), levels = seq_len(n))
  tab <- arrow::Table$create(
    cell = arrow::Array$create(colnames(m), type = arrow::utf8()),
    indices = arrow::Array$create(unname(split(m@i, per_cell)), type = arrow::list_of(arrow::int32())),
    values = arrow::Array$create(unname(split(m@x, per_cell)), type = arrow::list_of(arrow::float64()))
  )
  tab$metadata <- csr_metadata(m, source)
  tab
}

# nanoarrow: the slots become the buffers themselves (offsets = p, children = i and x).
nanoarrow_csr_array <- function(m, source) {
  list_of <- function(child, type) {
    array <- nanoarrow::nanoarrow_array_init(nanoarrow::na_list(type))
    nanoarrow::nanoarrow_array_modify(array, list(
      length = ncol(m), null_count = 0L,
      buffers = list(NULL, nanoarrow::as_nanoarrow_buffer(m@p)),
      children = list(nanoarrow::as_nanoarrow_array(child, schema = type))))
  }
  schema <- nanoarrow::na_struct(list(
    cell = nanoarrow::na_string(),
    indices = nanoarrow::na_list(nanoarrow::na_int32()),
    values = nanoarrow::na_list(nanoarrow::na_double())))
  schema <- nanoarrow::nanoarrow_schema_modify(schema, list(metadata = csr_metadata(m, source)))
  batch <- nanoarrow::nanoarrow_array_init(schema)
  nanoarrow::nanoarrow_array_modify(batch, list(
    length = ncol(m), null_count = 0L,
    children = list(nanoarrow::as_nanoarrow_array(colnames(m), schema = nanoarrow::na_string()),
                    list_of(m@i, nanoarrow::na_int32()),
                    list_of(m@x, nanoarrow::na_double()))))
}

# Writes the matrix for the cli engine; returns the path actually written (nanoarrow writes
# the IPC stream format, hence .arrows).
write_arrow_csr <- function(m, source, path) {
  if (identical(arrow_backend(), "arrow")) {
    arrow::write_ipc_file(arrow_csr_table(m, source), path)
    return(path)
  }
  path <- sub("\\.arrow$", ".arrows", path)
  nanoarrow::write_nanoarrow(nanoarrow_csr_array(m, source), path)
  path
}

arrow_csr_stream <- function(m, source) {
  if (identical(arrow_backend(), "arrow")) {
    return(arrow::write_to_raw(arrow_csr_table(m, source), format = "stream"))
  }
  con <- rawConnection(raw(0), "wb")
  on.exit(close(con))
  nanoarrow::write_nanoarrow(nanoarrow_csr_array(m, source), con)
  rawConnectionValue(con)
}

# A Calls table (Arrow IPC stream bytes) as records for calls_from_json().
arrow_calls_records <- function(bytes) {
  df <- if (identical(arrow_backend(), "arrow")) {
    as.data.frame(arrow::read_ipc_stream(bytes, as_data_frame = TRUE))
  } else {
    as.data.frame(nanoarrow::read_nanoarrow(bytes))
  }
  df$label <- as.character(df$label)
  df
}

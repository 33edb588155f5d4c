# The Arrow CSR format (docs/format.md) from R, used when the R package arrow is installed:
# the cli engine writes it as a file, the http engine sends it as a stream. The list offsets
# of the `indices` / `values` columns are the dgCMatrix's p slot, their children i and x.
# Not exercised by the tests where arrow is not installable (Debian bookworm has no
# r-cran-arrow); the JSON / .rds paths are the tested ones there.

arrow_csr_table <- function(m, source) {
  need_package("arrow", "The Arrow transport")
  n <- ncol(m)
  per_cell <- factor(rep.int(seq_len(n), diff(m@p)), levels = seq_len(n))
  indices <- unname(split(m@i, per_cell))
  values <- unname(split(m@x, per_cell))
  tab <- arrow::Table$create(
    cell = arrow::Array$create(colnames(m), type = arrow::utf8()),
    indices = arrow::Array$create(indices, type = arrow::list_of(arrow::int32())),
    values = arrow::Array$create(values, type = arrow::list_of(arrow::float64()))
  )
  tab$metadata <- list(
    scbridge.format = "scbridge.arrow-csr",
    scbridge.format_version = "1.0",
    scbridge.genes = as.character(jsonlite::toJSON(rownames(m))),
    scbridge.value_kind = if (all(m@x == round(m@x))) "counts" else "lognorm",
    scbridge.source = source
  )
  tab
}

write_arrow_csr <- function(m, source, path) {
  arrow::write_ipc_file(arrow_csr_table(m, source), path)
  invisible(path)
}

arrow_csr_stream <- function(m, source) {
  arrow::write_to_raw(arrow_csr_table(m, source), format = "stream")
}

# A Calls table (Arrow IPC stream bytes) as jsonlite-like records for calls_from_json().
arrow_calls_records <- function(bytes) {
  df <- as.data.frame(arrow::read_ipc_stream(bytes, as_data_frame = TRUE))
  df$label <- as.character(df$label)
  df
}

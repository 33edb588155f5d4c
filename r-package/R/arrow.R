# The Arrow CSR format (docs/format.md) from R, used when the R package nanoarrow or arrow is
# installed: the cli engine writes it as a file, the http engine sends it as a stream. One
# record batch per matrix (per chunk for http): columns `cell`, `indices`, `values`, whose
# list offsets are the dgCMatrix's p slot and whose list children are its i and x slots.
# What R built and wrote is checked before it is used (R/arrow-check.R).
#
# Where neither package is installed (Debian bookworm packages neither), the cli engine uses
# .rds and the http engine JSON. options(scbridge.cli_transport = "rds",
# scbridge.http_transport = "json") force those; options(scbridge.arrow_backend = "arrow" /
# "nanoarrow") picks one backend where both are installed (default: nanoarrow, which builds
# the batch without copying the matrix).

# nanoarrow 0.6.0 brought the IPC writer; arrow 9.0.0 is the oldest whose API (write_ipc_file,
# list_value_length) this file was written against, from its documentation: arrow is not
# packaged where this package is tested.
backend_min_versions <- c(nanoarrow = "0.6.0", arrow = "9.0.0")

# The installed backends, in order of preference.
arrow_backends <- function() {
  usable <- vapply(names(backend_min_versions), function(package) {
    requireNamespace(package, quietly = TRUE) &&
      utils::packageVersion(package) >= backend_min_versions[[package]]
  }, logical(1))
  names(backend_min_versions)[usable]
}

# The backend that writes and reads Arrow here, or NULL when none is installed.
arrow_backend <- function() {
  found <- arrow_backends()
  wanted <- getOption("scbridge.arrow_backend")
  if (!is.null(wanted)) {
    wanted <- check_choice(wanted, c("nanoarrow", "arrow"), "options(scbridge.arrow_backend)")
    if (!wanted %in% found) {
      abort(sprintf("options(scbridge.arrow_backend = \"%s\") is set, but %s", wanted,
                    arrow_backend_missing(wanted)), code = "missing_dependency")
    }
    return(wanted)
  }
  if (length(found)) found[[1L]] else NULL
}

# Why no backend (or not the one wanted) can be used here, naming the package to install: also
# the message of the Arrow tests' skip.
arrow_backend_missing <- function(which = c("nanoarrow", "arrow")) {
  why <- vapply(which, function(package) {
    if (!requireNamespace(package, quietly = TRUE)) return("not installed")
    if (utils::packageVersion(package) < backend_min_versions[[package]]) {
      return(sprintf("%s, older than the %s scbridge needs", utils::packageVersion(package),
                     backend_min_versions[[package]]))
    }
    "installed"
  }, character(1))
  if (length(which) == 1L) return(sprintf("the R package %s is %s", which, why))
  if (all(why == "not installed")) {
    return("neither the R package nanoarrow nor arrow is installed")
  }
  paste(sprintf("the R package %s is %s", which, why), collapse = " and ")
}

# One line saying which transports the cli and http engines use here (tools/install.sh).
arrow_transport_summary <- function() {
  backend <- tryCatch(arrow_backend(), error = function(e) NULL)
  if (is.null(backend)) {
    return(sprintf("cli engine .rds, http engine JSON (no Arrow: %s)", arrow_backend_missing()))
  }
  sprintf("cli engine Arrow CSR files, http engine Arrow streams (R package %s %s)", backend,
          utils::packageVersion(backend))
}

# Stops with a dependency error when `what` (a transport asked for by name) has no backend.
need_arrow_backend <- function(what) {
  if (is.null(arrow_backend())) {
    abort(c(sprintf("%s needs the R package nanoarrow (>= %s) or arrow (>= %s), but %s.", what,
                    backend_min_versions[["nanoarrow"]], backend_min_versions[["arrow"]],
                    arrow_backend_missing()),
            "Install one with install.packages(\"nanoarrow\") (or install.packages(\"arrow\"))."),
          code = "missing_dependency")
  }
  invisible(TRUE)
}

# Schema metadata of docs/format.md. The value kind follows the core's rule
# (detect_value_kind(), R/values.R), so every transport and engine sees the same kind for
# the same matrix, unless the user named it (`value_kind`).
csr_metadata <- function(m, source, value_kind = NULL) {
  value_kind <- value_kind %||% detect_value_kind(m@x)
  list(
    scbridge.format = "scbridge.arrow-csr",
    # 1.1 brought the value kind "normalized"; other files stay readable by 1.0 readers.
    scbridge.format_version = if (value_kind == "normalized") "1.1" else "1.0",
    scbridge.genes = json_strings(rownames(m)),
    scbridge.value_kind = value_kind,
    scbridge.source = source
  )
}

# A character vector as a JSON list of strings, without jsonlite (the cli engine needs none).
json_strings <- function(x) {
  if (requireNamespace("jsonlite", quietly = TRUE)) return(as.character(jsonlite::toJSON(x)))
  x <- gsub("\\\\", "\\\\\\\\", enc2utf8(x))
  x <- gsub("\"", "\\\"", x, fixed = TRUE)
  x <- gsub("[[:cntrl:]]", " ", x)
  paste0("[", paste0("\"", x, "\"", collapse = ","), "]")
}

# -- nanoarrow ------------------------------------------------------------------------------
nanoarrow_csr_schema <- function(metadata) {
  schema <- nanoarrow::na_struct(list(
    cell = nanoarrow::na_string(nullable = FALSE),
    indices = nanoarrow::na_list(nanoarrow::na_int32(nullable = FALSE), nullable = FALSE),
    values = nanoarrow::na_list(nanoarrow::na_double(nullable = FALSE), nullable = FALSE)
  ), nullable = FALSE)
  nanoarrow::nanoarrow_schema_modify(schema, list(metadata = metadata))
}

# The batch, zero-copy for the matrix: the offsets buffer of both lists is borrowed from the p
# slot (as_nanoarrow_buffer() points at the R vector's memory and keeps it alive), and the
# children are borrowed from i and x (as_nanoarrow_array() of an integer / double vector with
# an int32 / double type borrows its data; it only scans it for NA). The tests check that the
# buffer addresses are those of the slots. Only the cell ids are copied (into a utf8 buffer),
# as they must be. Writing the stream then serialises the buffers: one copy, into the file
# or the request body.
#
# nanoarrow_array_modify() replaces the struct's child schemas by those inferred from the
# children, named after names(children): unnamed children gave a schema with three unnamed
# columns (issue 18). The children are named, and the full schema (non-nullable fields, list
# items named "item", the format metadata) is then set on the batch, which also validates
# the buffers against it (offsets within the children).
nanoarrow_csr_array <- function(m, metadata) {
  n <- ncol(m)
  offsets <- nanoarrow::as_nanoarrow_buffer(m@p)
  list_of <- function(child, type) {
    nanoarrow::nanoarrow_array_modify(nanoarrow::nanoarrow_array_init(nanoarrow::na_list(type)),
      list(length = n, null_count = 0L, buffers = list(NULL, offsets),
           children = list(nanoarrow::as_nanoarrow_array(child, schema = type))))
  }
  schema <- nanoarrow_csr_schema(metadata)
  batch <- nanoarrow::nanoarrow_array_modify(nanoarrow::nanoarrow_array_init(schema), list(
    length = n, null_count = 0L,
    children = list(
      cell = nanoarrow::as_nanoarrow_array(colnames(m) %||% character(0),
                                           schema = nanoarrow::na_string()),
      indices = list_of(m@i, nanoarrow::na_int32()),
      values = list_of(m@x, nanoarrow::na_double()))))
  nanoarrow::nanoarrow_array_set_schema(batch, schema, validate = TRUE)
  batch
}

# -- arrow ----------------------------------------------------------------------------------
# The arrow R package has no constructor of a ListArray from offsets and values, so the lists
# are built from per-cell pieces: one copy of the matrix (nanoarrow, preferred when both are
# installed, makes none).
arrow_csr_table <- function(m, metadata) {
  n <- ncol(m)
  per_cell <- factor(rep.int(seq_len(n), diff(m@p)), levels = seq_len(n))
  list_of <- function(x, type) {
    arrow::Array$create(unname(split(x, per_cell)), type = arrow::list_of(type))
  }
  tab <- arrow::Table$create(
    cell = arrow::Array$create(colnames(m) %||% character(0), type = arrow::utf8()),
    indices = list_of(m@i, arrow::int32()),
    values = list_of(m@x, arrow::float64()))
  tab$metadata <- metadata
  tab
}

# The batch (nanoarrow) or table (arrow) for `m`, checked before it is written.
arrow_csr_data <- function(m, metadata, backend) {
  if (identical(backend, "arrow")) {
    data <- arrow_csr_table(m, metadata)
    found <- describe_arrow_table(data)
  } else {
    data <- nanoarrow_csr_array(m, metadata)
    found <- describe_nanoarrow_batch(data)
  }
  check_arrow_csr(found, m, metadata, sprintf("The Arrow batch built in R (%s)", backend))
  data
}

# -- writing --------------------------------------------------------------------------------
# Writes the matrix for the cli engine and returns the path written: an IPC file (.arrow)
# with arrow, an IPC stream (.arrows) with nanoarrow, which writes streams only, or with the
# base-R writer (R/arrow-ipc.R) where neither is installed or cell metadata (`obs`, utf8
# columns) must go along. A file one of the packages wrote is read back and checked.
write_arrow_csr <- function(m, source, path, value_kind = NULL, obs = list()) {
  backend <- arrow_backend()
  metadata <- csr_metadata(m, source, value_kind)
  if (is.null(backend) || length(obs)) {
    path <- sub("\\.arrow$", ".arrows", path)
    con <- file(path, "wb")
    on.exit(close(con))
    write_ipc_csr(m, metadata, con, obs)
    close(con)
    on.exit()
    check_arrow_csr(list(names = c(names(csr_columns), names(obs)),
                         types = c(csr_columns, rep("utf8", length(obs))), metadata = metadata,
                         file_bytes = file.size(path)),
                    m, metadata, sprintf("The Arrow file R wrote (%s)", path))
    return(path)
  }
  data <- arrow_csr_data(m, metadata, backend)
  if (identical(backend, "arrow")) {
    arrow::write_ipc_file(data, path)
  } else {
    path <- sub("\\.arrow$", ".arrows", path)
    nanoarrow::write_nanoarrow(data, path)
  }
  check_arrow_csr(describe_arrow_written(path, backend), m, metadata,
                  sprintf("The Arrow file R wrote (%s)", path))
  path
}

# The matrix as Arrow IPC stream bytes for the http engine, read back and checked.
arrow_csr_stream <- function(m, source, value_kind = NULL) {
  backend <- arrow_backend()
  metadata <- csr_metadata(m, source, value_kind)
  data <- arrow_csr_data(m, metadata, backend)
  if (identical(backend, "arrow")) {
    bytes <- arrow::write_to_raw(data, format = "stream")
  } else {
    con <- rawConnection(raw(0), "wb")
    on.exit(close(con))
    nanoarrow::write_nanoarrow(data, con)
    bytes <- rawConnectionValue(con)
  }
  check_arrow_csr(describe_arrow_written(bytes, backend), m, metadata,
                  "The Arrow request body R wrote")
  bytes
}

# -- the http engine's reply ----------------------------------------------------------------
arrow_media_type <- "application/vnd.apache.arrow.stream"

# What the http engine asks the server to reply in. The Calls table's label columns are
# dictionary<utf8>, which nanoarrow's IPC reader does not read (0.8.0: "Schema message field
# with DictionaryEncoding not supported"): the calls come back as Arrow where the arrow
# package is installed to read them, else as JSON.
arrow_reply_type <- function() {
  if ("arrow" %in% arrow_backends()) arrow_media_type else "application/json"
}

# -- reading --------------------------------------------------------------------------------
# A Calls table (Arrow IPC stream bytes) as a data.frame for calls_from_json(): `label` as
# character (a dictionary arrives as a factor), `alternates` a list of data.frames (label,
# score), `markers` a list of character vectors. nanoarrow reads it only where the reply has
# no dictionary column (see arrow_reply_type()).
arrow_calls_records <- function(bytes) {
  df <- tryCatch({
    if ("arrow" %in% arrow_backends()) {
      as.data.frame(arrow::read_ipc_stream(bytes, as_data_frame = TRUE))
    } else {
      as.data.frame(nanoarrow::read_nanoarrow(bytes))
    }
  }, error = function(e) {
    abort(c("The endpoint's Arrow reply could not be read in R.",
            "options(scbridge.http_transport = \"json\") asks for JSON instead."),
          code = "remote_reply", remote = TRUE, parent = e)
  })
  for (column in intersect(names(df), c("label", "label_l1", "label_l2", "label_raw"))) {
    df[[column]] <- as.character(df[[column]])
  }
  df
}

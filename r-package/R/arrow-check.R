# Checking the Arrow CSR that R built and wrote, before a subprocess or a server sees it: a
# writer regression (unnamed columns, lost metadata, a wrong type or length) then fails here
# with a classed error that says what is wrong, instead of as a 400 `invalid_arrow` from the
# server or an exit status 2 from `scbridge annotate`.
#
# Either backend's batch, table or written bytes is first described the same way:
# list(names, types, metadata, n_cells, n_values), types spelled "utf8", "list<int32>",
# "list<float64>" (a nanoarrow file: file_bytes instead of the lengths); check_arrow_csr()
# then compares that description with the matrix and the metadata it was written with.

csr_columns <- c(cell = "utf8", indices = "list<int32>", values = "list<float64>")

# -- nanoarrow ------------------------------------------------------------------------------
nanoarrow_formats <- c(u = "utf8", U = "large_utf8", i = "int32", l = "int64", f = "float32",
                       g = "float64")

nanoarrow_type_name <- function(schema) {
  format <- schema$format
  if (format %in% c("+l", "+L")) {
    item <- if (length(schema$children)) nanoarrow_type_name(schema$children[[1L]]) else "?"
    return(sprintf("%s<%s>", if (format == "+l") "list" else "large_list", item))
  }
  if (format %in% names(nanoarrow_formats)) nanoarrow_formats[[format]] else format
}

describe_nanoarrow_schema <- function(schema) {
  children <- schema$children
  list(names = names(children) %||% character(0),
       types = vapply(children, nanoarrow_type_name, character(1), USE.NAMES = FALSE),
       metadata = lapply(schema$metadata, as.character))
}

# Number of list items in one list column of a batch (its child's length).
nanoarrow_list_items <- function(batch, column) {
  child <- batch$children[[column]]
  if (is.null(child) || !length(child$children)) return(NA_real_)
  as.double(child$children[[1L]]$length)
}

describe_nanoarrow_batches <- function(schema, batches) {
  out <- describe_nanoarrow_schema(schema)
  out$n_cells <- sum(vapply(batches, function(b) as.double(b$length), double(1)))
  out$n_values <- vapply(c(indices = "indices", values = "values"), function(column) {
    sum(vapply(batches, nanoarrow_list_items, double(1), column = column))
  }, double(1))
  out
}

describe_nanoarrow_batch <- function(batch) {
  describe_nanoarrow_batches(nanoarrow::infer_nanoarrow_schema(batch), list(batch))
}

# What IPC stream bytes hold, as nanoarrow reads them back: decoding bytes in memory shares
# their buffers, so it costs little.
describe_nanoarrow_bytes <- function(bytes) {
  stream <- nanoarrow::read_nanoarrow(bytes)
  on.exit(stream$release())
  schema <- stream$get_schema()
  batches <- list()
  while (!is.null(batch <- stream$get_next())) batches[[length(batches) + 1L]] <- batch
  describe_nanoarrow_batches(schema, batches)
}

# What an IPC stream file holds: its schema as nanoarrow reads it back, and its size in bytes
# (reading the batches back through an R connection would cost about as much as writing
# them; their lengths were checked on the batch that was written).
describe_nanoarrow_file <- function(path) {
  stream <- nanoarrow::read_nanoarrow(path, lazy = TRUE)
  on.exit(stream$release())
  out <- describe_nanoarrow_schema(stream$get_schema())
  out$file_bytes <- file.size(path)
  out
}

# -- arrow ----------------------------------------------------------------------------------
# arrow spells types as "string", "double", "list<item: int32 not null>".
arrow_type_name <- function(type) {
  name <- gsub("[A-Za-z0-9_]+: | not null", "", type$ToString())
  name <- gsub("\\bstring\\b", "utf8", name)
  name <- gsub("\\blarge_string\\b", "large_utf8", name)
  name <- gsub("\\bdouble\\b", "float64", name)
  gsub("\\bfloat\\b", "float32", name)
}

describe_arrow_table <- function(tab) {
  schema <- tab$schema
  names <- schema$names
  list_items <- function(column) {
    if (!column %in% names) return(NA_real_)
    lengths <- arrow::call_function("list_value_length", tab[[column]])
    sum(as.double(as.vector(lengths)))
  }
  list(names = names,
       types = vapply(names, function(n) arrow_type_name(schema$GetFieldByName(n)$type),
                      character(1), USE.NAMES = FALSE),
       metadata = lapply(schema$metadata, as.character),
       n_cells = as.double(tab$num_rows),
       n_values = c(indices = list_items("indices"), values = list_items("values")))
}

describe_arrow_written <- function(x, backend) {
  if (!identical(backend, "arrow")) {
    return(if (is.raw(x)) describe_nanoarrow_bytes(x) else describe_nanoarrow_file(x))
  }
  tab <- if (is.raw(x)) {
    arrow::read_ipc_stream(x, as_data_frame = FALSE)
  } else {
    arrow::read_ipc_file(x, as_data_frame = FALSE)
  }
  describe_arrow_table(tab)
}

# -- the check ------------------------------------------------------------------------------
# The problems of a described Arrow CSR batch for matrix `m` with `metadata` (character(0)
# when there are none).
arrow_csr_problems <- function(found, m, metadata) {
  problems <- character(0)
  if (!identical(found$names[seq_len(min(3L, length(found$names)))], names(csr_columns))) {
    problems <- c(problems, sprintf(
      "its columns are %s, not cell, indices, values",
      paste0("'", found$names, "'", collapse = ", ")))
  } else {
    types <- found$types[1:3]
    wrong <- types != csr_columns
    if (any(wrong)) {
      problems <- c(problems, sprintf("column '%s' is %s, not %s", names(csr_columns)[wrong],
                                      types[wrong], csr_columns[wrong]))
    }
  }
  for (key in names(metadata)) {
    have <- found$metadata[[key]]
    if (is.null(have)) {
      problems <- c(problems, sprintf("schema metadata '%s' is missing", key))
    } else if (!identical(have, metadata[[key]])) {
      problems <- c(problems, sprintf("schema metadata '%s' is %s, not %s", key,
                                      abbreviate_value(have), abbreviate_value(metadata[[key]])))
    }
  }
  c(problems, arrow_csr_size_problems(found, m))
}

# Lengths where they were read back (n_cells, n_values), else the least size of a file that
# holds the matrix (its indices and values alone take 12 bytes a non-zero).
arrow_csr_size_problems <- function(found, m) {
  nnz <- as.double(length(m@x))
  if (!is.null(found$file_bytes)) {
    if (is.na(found$file_bytes) || found$file_bytes < 12 * nnz) {
      return(sprintf("the file holds %s bytes, too few for %s non-zeros",
                     format(found$file_bytes), format(nnz)))
    }
    return(character(0))
  }
  problems <- character(0)
  if (!identical(found$n_cells, as.double(ncol(m)))) {
    problems <- sprintf("it holds %s cells, not %d", format(found$n_cells), ncol(m))
  }
  # NA: the column is not there, which the names check reports.
  wrong <- !is.na(found$n_values) & found$n_values != nnz
  if (any(wrong)) {
    problems <- c(problems, sprintf("column '%s' holds %s values, not the matrix's %s non-zeros",
                                    names(found$n_values)[wrong],
                                    format(found$n_values[wrong]), format(nnz)))
  }
  problems
}

abbreviate_value <- function(x) {
  x <- paste(x, collapse = " ")
  sprintf("'%s'", if (nchar(x) > 60L) paste0(substr(x, 1L, 57L), "...") else x)
}

check_arrow_csr <- function(found, m, metadata, where) {
  problems <- arrow_csr_problems(found, m, metadata)
  if (length(problems)) {
    backend <- arrow_backend() %||% "none"
    abort(c(
      sprintf("%s is not the Arrow CSR the scbridge core reads (docs/format.md): %s.", where,
              paste(problems, collapse = "; ")),
      sprintf(paste("This is a fault of the scbridge R package's Arrow writer with the R package",
                    "%s %s; please report it. Meanwhile options(scbridge.cli_transport = \"rds\",",
                    "scbridge.http_transport = \"json\") avoid it."),
              backend, tryCatch(format(utils::packageVersion(backend)), error = function(e) ""))
    ), code = "arrow_format")
  }
  invisible(TRUE)
}

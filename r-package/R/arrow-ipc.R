# Arrow IPC in base R, for when neither the R package nanoarrow nor arrow is installed (Debian
# packages neither): the cli engine hands its matrix to `scbridge` as an Arrow CSR stream
# (docs/format.md) written here, and reads the tables `scbridge` writes (.arrow IPC files)
# back here, so no R starts inside the subprocess and no JSON is printed or parsed.
#
# The writer writes exactly the Arrow CSR batch: `cell` utf8, `indices` list<int32>,
# `values` list<float64>, optional utf8 cell metadata columns (labels for
# build_reference()); its list offsets are the dgCMatrix's p slot and the list children its
# i and x slots, written straight from the slots. The reader reads what the core writes:
# utf8, bool, ints, floats, dictionary-encoded columns, list, fixed-size list and struct.
# Layouts (docs: https://arrow.apache.org/docs/format/Columnar.html): messages are
# 0xFFFFFFFF, an int32 metadata length, a FlatBuffers `Message` (R/flatbuffers.R), then
# the body, every buffer 8-aligned.

ipc_continuation <- as.raw(c(0xff, 0xff, 0xff, 0xff))
ipc_file_magic <- charToRaw("ARROW1")

# Type ids of the FlatBuffers `Type` union, and message header ids.
ipc_type_ids <- c(null = 1L, int = 2L, float = 3L, binary = 4L, utf8 = 5L, bool = 6L,
                  list = 12L, struct = 13L, fixed_size_list = 16L, large_utf8 = 20L,
                  large_list = 21L)
ipc_header_ids <- c(schema = 1L, dictionary = 2L, record_batch = 3L)
ipc_metadata_v5 <- 4L

# -- writing ---------------------------------------------------------------------------------
ipc_key_values <- function(metadata) {
  lapply(names(metadata), function(key) {
    fb_table(fb_field(0L, "string", key), fb_field(1L, "string", metadata[[key]]))
  })
}

# A Field table: name, nullable, type (union id + its table), children.
ipc_field <- function(name, type, nullable = FALSE, children = list()) {
  type_table <- switch(type,
    utf8 = , list = fb_table(),
    int32 = fb_table(fb_field(0L, "int32", 32L), fb_field(1L, "bool", TRUE)),
    float64 = fb_table(fb_field(0L, "int16", 2L)))
  type_id <- ipc_type_ids[[switch(type, int32 = "int", float64 = "float", type)]]
  fb_table(
    fb_field(0L, "string", name),
    fb_field(1L, "bool", nullable),
    fb_field(2L, "uint8", type_id),
    fb_field(3L, "table", type_table),
    fb_field(5L, "tables", children))
}

ipc_message <- function(header_id, header, body_length) {
  fb_finish(fb_table(
    fb_field(0L, "int16", ipc_metadata_v5),
    fb_field(1L, "uint8", header_id),
    fb_field(2L, "table", header),
    fb_field(3L, "int64", body_length)))
}

# The encapsulated message: continuation, metadata length, metadata (8-aligned in all).
ipc_frame <- function(metadata) {
  pad <- (-(length(metadata) + 8L)) %% 8L
  c(ipc_continuation, le_int(length(metadata) + pad), metadata, raw(pad))
}

csr_schema_message <- function(metadata, obs_names) {
  item <- function(type) list(ipc_field("item", type))
  fields <- c(list(
    ipc_field("cell", "utf8"),
    ipc_field("indices", "list", children = item("int32")),
    ipc_field("values", "list", children = item("float64"))),
    lapply(obs_names, ipc_field, type = "utf8", nullable = TRUE))
  schema <- fb_table(fb_field(1L, "tables", fields),
                     fb_field(2L, "tables", ipc_key_values(metadata)))
  ipc_frame(ipc_message(ipc_header_ids[["schema"]], schema, 0))
}

# One utf8 column as its buffers (validity, offsets, data) and null count.
utf8_buffers <- function(values) {
  missing <- is.na(values)
  values <- enc2utf8(as.character(values))
  values[missing] <- ""
  sizes <- nchar(values, type = "bytes")
  validity <- if (any(missing)) {
    bits <- c(!missing, logical((-length(values)) %% 8L))
    packBits(bits, type = "raw")
  } else {
    raw(0)
  }
  list(buffers = list(validity, le_int(c(0, cumsum(as.double(sizes)))),
                      charToRaw(paste(values, collapse = ""))),
       null_count = sum(missing))
}

# The record batch of matrix `m` (and utf8 columns `obs`): its framed metadata and the
# buffers of its body, in order. The p, i and x slots are the buffers themselves.
csr_batch_parts <- function(m, obs) {
  n <- ncol(m)
  nnz <- length(m@x)
  cell <- utf8_buffers(colnames(m) %||% character(0))
  offsets <- m@p
  buffers <- c(cell$buffers, list(raw(0), offsets, raw(0), m@i, raw(0), offsets, raw(0), m@x))
  nodes <- c(n, cell$null_count, n, 0, nnz, 0, n, 0, nnz, 0)
  for (column in obs) {
    col <- utf8_buffers(column)
    buffers <- c(buffers, col$buffers)
    nodes <- c(nodes, n, col$null_count)
  }
  sizes <- vapply(buffers, function(b) if (is.raw(b)) length(b) else 4 * length(b) *
                    (if (is.double(b)) 2 else 1), double(1))
  padded <- sizes + (-sizes %% 8)
  starts <- c(0, cumsum(padded))[seq_along(sizes)]
  header <- fb_table(
    fb_field(0L, "int64", n),
    fb_field(1L, "structs", le_int64(nodes), size = 16L),
    fb_field(2L, "structs", le_int64(as.vector(rbind(starts, sizes))), size = 16L))
  list(metadata = ipc_frame(ipc_message(ipc_header_ids[["record_batch"]], header, sum(padded))),
       buffers = buffers, padding = padded - sizes)
}

# Writes the Arrow CSR stream of `m` to connection `con`: schema, one record batch, end.
write_ipc_csr <- function(m, metadata, con, obs = list()) {
  if (!is.integer(m@p)) abort("write_ipc_csr() needs a dgCMatrix.", code = "invalid_input")
  writeBin(csr_schema_message(metadata, names(obs)), con)
  parts <- csr_batch_parts(m, obs)
  writeBin(parts$metadata, con)
  for (k in seq_along(parts$buffers)) {
    b <- parts$buffers[[k]]
    if (is.raw(b)) {
      writeBin(b, con)
    } else {
      writeBin(b, con, size = if (is.double(b)) 8L else 4L, endian = "little")
    }
    if (parts$padding[[k]]) writeBin(raw(parts$padding[[k]]), con)
  }
  writeBin(c(ipc_continuation, raw(4L)), con)
  invisible(TRUE)
}

# -- reading ---------------------------------------------------------------------------------
# An Arrow IPC file or stream (a path or raw bytes) as a named list of columns: atomic
# vectors (dictionary columns decoded to character), lists as list(offsets, values), structs
# as named lists of columns, fixed-size lists as list(size, values); `metadata` attribute:
# the schema's key-value metadata.
read_ipc <- function(x, what = "Arrow data") {
  bytes <- if (is.raw(x)) x else readBin(x, "raw", n = file.size(x))
  fail <- function(problem) {
    abort(sprintf("%s could not be read as Arrow IPC: %s.", what, problem), code = "invalid_arrow")
  }
  pos <- 0
  if (length(bytes) >= 8L && identical(bytes[1:6], ipc_file_magic)) pos <- 8
  schema <- NULL
  dictionaries <- list()
  batches <- list()
  repeat {
    if (pos + 4 > length(bytes)) break
    size <- fb_i32(bytes, pos)
    if (size == -1L) {
      if (pos + 8 > length(bytes)) break
      size <- fb_i32(bytes, pos + 4)
      pos <- pos + 8
    } else {
      pos <- pos + 4
    }
    if (size <= 0L) break
    if (pos + size > length(bytes)) fail("a message runs past the end of the data")
    meta <- bytes[pos + seq_len(size)]
    pos <- pos + size
    message <- fb_table_at(meta, fb_u32(meta, 0))
    header_id <- fb_get_scalar(message, 1L, fb_u8, 0L)
    body_length <- fb_get_scalar(message, 3L, fb_i64, 0)
    header <- fb_get_table(message, 2L)
    body <- if (body_length > 0) bytes[pos + seq_len(body_length)] else raw(0)
    pos <- pos + body_length
    if (header_id == ipc_header_ids[["schema"]]) {
      schema <- ipc_read_schema(header)
    } else if (header_id == ipc_header_ids[["dictionary"]]) {
      if (is.null(schema)) fail("a dictionary comes before the schema")
      id <- as.character(fb_get_scalar(header, 0L, fb_i64, 0))
      field <- schema$dictionaries[[id]]
      if (is.null(field)) fail(sprintf("dictionary %s belongs to no column", id))
      values <- ipc_read_batch(fb_get_table(header, 1L), body, list(field), list())[[1L]]
      is_delta <- fb_get_scalar(header, 2L, fb_u8, 0L) == 1L
      dictionaries[[id]] <- if (is_delta) c(dictionaries[[id]], values) else values
    } else if (header_id == ipc_header_ids[["record_batch"]]) {
      if (is.null(schema)) fail("a record batch comes before the schema")
      batches[[length(batches) + 1L]] <- ipc_read_batch(header, body, schema$fields, dictionaries)
    }
  }
  if (is.null(schema)) fail("no schema message")
  names(schema$fields) <- vapply(schema$fields, `[[`, "", "name")
  out <- lapply(seq_along(schema$fields), function(k) {
    ipc_concat(lapply(batches, `[[`, k), schema$fields[[k]])
  })
  names(out) <- names(schema$fields)
  attr(out, "metadata") <- schema$metadata
  out
}

ipc_read_schema <- function(tab) {
  dictionaries <- list()
  read_field <- function(f) {
    type_id <- fb_get_scalar(f, 2L, fb_u8, 0L)
    type_table <- fb_get_table(f, 3L)
    field <- list(name = fb_get_string(f, 0L) %||% "",
                  type = ipc_type_name(type_id, type_table),
                  children = lapply(fb_get_tables(f, 5L), read_field))
    dictionary <- fb_get_table(f, 4L)
    if (!is.null(dictionary)) {
      index <- fb_get_table(dictionary, 1L)
      value_field <- field
      field$dictionary <- as.character(fb_get_scalar(dictionary, 0L, fb_i64, 0))
      field$type <- if (is.null(index)) "int32" else ipc_int_name(index)
      dictionaries[[field$dictionary]] <<- value_field
    }
    field
  }
  fields <- lapply(fb_get_tables(tab, 1L), read_field)
  pairs <- fb_get_tables(tab, 2L)
  metadata <- lapply(pairs, function(kv) fb_get_string(kv, 1L) %||% "")
  names(metadata) <- vapply(pairs, function(kv) fb_get_string(kv, 0L) %||% "", "")
  list(fields = fields, metadata = metadata, dictionaries = dictionaries)
}

ipc_int_name <- function(tab) {
  bits <- fb_get_scalar(tab, 0L, fb_i32, 32L)
  signed <- fb_get_scalar(tab, 1L, fb_u8, 0L) == 1L
  paste0(if (signed) "int" else "uint", bits)
}

ipc_type_name <- function(type_id, tab) {
  name <- names(ipc_type_ids)[match(type_id, ipc_type_ids)]
  if (is.na(name)) {
    abort(sprintf("Arrow type id %d is not one scbridge reads in R.", type_id),
          code = "invalid_arrow")
  }
  switch(name,
    int = ipc_int_name(tab),
    float = c("float16", "float32", "float64")[[fb_get_scalar(tab, 0L, fb_i16, 0L) + 1L]],
    fixed_size_list = sprintf("fixed_size_list[%d]", fb_get_scalar(tab, 0L, fb_i32, 0L)),
    name)
}

# The columns of one record batch, consuming its nodes and buffers in schema order.
ipc_read_batch <- function(header, body, fields, dictionaries) {
  if (!is.null(fb_get_table(header, 3L))) {
    abort("A compressed Arrow body cannot be read in R without the arrow package.",
          code = "compressed_arrow")
  }
  state <- new.env(parent = emptyenv())
  state$nodes <- fb_get_int64_structs(header, 1L, 2L)
  state$buffers <- fb_get_int64_structs(header, 2L, 2L)
  state$node <- 0L
  state$buffer <- 0L
  state$body <- body
  state$dictionaries <- dictionaries
  lapply(fields, ipc_read_array, state = state)
}

ipc_next_buffer <- function(state) {
  state$buffer <- state$buffer + 1L
  spec <- state$buffers[state$buffer, ]
  if (spec[[2L]] == 0) return(raw(0))
  state$body[spec[[1L]] + seq_len(spec[[2L]])]
}

ipc_validity <- function(bitmap, n, null_count) {
  if (null_count == 0 || !length(bitmap)) return(NULL)
  as.logical(rawToBits(bitmap))[seq_len(n)]
}

ipc_ints <- function(bytes, type, n) {
  bits <- as.integer(sub("^u?int", "", type))
  signed <- startsWith(type, "int")
  if (bits == 64L) {
    words <- readBin(bytes, "integer", n = 2L * n, size = 4L, endian = "little")
    low <- words[c(TRUE, FALSE)]
    return(words[c(FALSE, TRUE)] * 4294967296 + ifelse(low < 0L, low + 4294967296, low))
  }
  if (bits == 32L && !signed) {
    v <- readBin(bytes, "integer", n = n, size = 4L, endian = "little")
    return(ifelse(v < 0L, v + 4294967296, as.double(v)))
  }
  readBin(bytes, "integer", n = n, size = bits %/% 8L, signed = signed || bits == 32L,
          endian = "little")
}

# Strings from utf8 offsets and data: one substring() over the data when it is ASCII (byte
# and character positions agree), else string by string.
ipc_strings <- function(offsets, data) {
  n <- length(offsets) - 1L
  if (n <= 0L) return(character(0))
  if (!length(data)) return(rep("", n))
  starts <- offsets[-length(offsets)] + 1
  ends <- offsets[-1L]
  if (all(data < as.raw(0x80)) && !any(data == as.raw(0))) {
    return(substring(rawToChar(data), starts, ends))
  }
  out <- vapply(seq_len(n), function(k) {
    if (ends[[k]] < starts[[k]]) return("")
    rawToChar(data[starts[[k]]:ends[[k]]])
  }, "")
  Encoding(out) <- "UTF-8"
  out
}

ipc_read_array <- function(field, state) {
  state$node <- state$node + 1L
  n <- state$nodes[state$node, 1L]
  null_count <- state$nodes[state$node, 2L]
  bitmap <- ipc_next_buffer(state)  # read before anything else: it is the node's first buffer
  valid <- ipc_validity(bitmap, n, null_count)
  type <- field$type
  values <- if (type == "null") {
    rep(NA, n)
  } else if (grepl("^u?int", type)) {
    ipc_ints(ipc_next_buffer(state), type, n)
  } else if (type %in% c("float32", "float64")) {
    readBin(ipc_next_buffer(state), "double", n = n, size = if (type == "float32") 4L else 8L,
            endian = "little")
  } else if (type == "bool") {
    as.logical(rawToBits(ipc_next_buffer(state)))[seq_len(n)]
  } else if (type == "utf8") {
    offsets <- ipc_ints(ipc_next_buffer(state), "int32", n + 1L)
    ipc_strings(offsets, ipc_next_buffer(state))
  } else if (type == "list") {
    offsets <- ipc_ints(ipc_next_buffer(state), "int32", n + 1L)
    list(offsets = offsets, values = ipc_read_array(field$children[[1L]], state))
  } else if (startsWith(type, "fixed_size_list")) {
    list(size = as.integer(gsub("\\D", "", type)),
         values = ipc_read_array(field$children[[1L]], state))
  } else if (type == "struct") {
    children <- lapply(field$children, ipc_read_array, state = state)
    names(children) <- vapply(field$children, `[[`, "", "name")
    children
  } else {
    abort(sprintf("Arrow column '%s' is of type %s, which scbridge does not read in R.",
                  field$name, type), code = "invalid_arrow")
  }
  if (!is.null(field$dictionary)) {
    levels <- state$dictionaries[[field$dictionary]]
    values <- levels[values + 1L]
  }
  if (!is.null(valid) && is.atomic(values)) values[!valid] <- NA
  values
}

# Batches of one column joined (lists: offsets shifted; structs: per child).
ipc_concat <- function(parts, field) {
  if (length(parts) == 1L) return(parts[[1L]])
  if (!length(parts)) return(ipc_empty(field))
  first <- parts[[1L]]
  if (is.atomic(first)) return(unlist(parts, use.names = FALSE))
  if (!is.null(first$offsets)) {
    ends <- cumsum(vapply(parts, function(p) p$offsets[[length(p$offsets)]] - p$offsets[[1L]],
                          double(1)))
    offsets <- c(0, unlist(lapply(seq_along(parts), function(k) {
      o <- parts[[k]]$offsets
      o[-1L] - o[[1L]] + c(0, ends)[[k]]
    })))
    values <- ipc_concat(lapply(parts, function(p) ipc_slice(p$values, p$offsets)),
                         field$children[[1L]])
    return(list(offsets = offsets, values = values))
  }
  if (!is.null(first$size)) {
    return(list(size = first$size,
                values = ipc_concat(lapply(parts, `[[`, "values"), field$children[[1L]])))
  }
  out <- lapply(seq_along(first), function(k) {
    ipc_concat(lapply(parts, `[[`, k), field$children[[k]])
  })
  names(out) <- names(first)
  out
}

ipc_empty <- function(field) {
  switch(field$type, utf8 = character(0), bool = logical(0), list = list(offsets = 0,
         values = ipc_empty(field$children[[1L]])), numeric(0))
}

# The values of a list column that its offsets cover (offsets need not start at 0).
ipc_slice <- function(values, offsets) {
  from <- offsets[[1L]]
  to <- offsets[[length(offsets)]]
  take <- if (to > from) seq.int(from + 1, to) else integer(0)
  if (is.atomic(values)) return(values[take])
  if (!is.null(values$offsets)) {
    return(list(offsets = values$offsets[seq.int(from + 1, to + 1)], values = values$values))
  }
  lapply(values, function(v) if (is.atomic(v)) v[take] else v)
}

# A list column's per-row lengths and its flat values, whatever its first offset.
ipc_list_parts <- function(column) {
  offsets <- column$offsets
  list(lengths = as.integer(diff(offsets)), values = ipc_slice(column$values, offsets))
}

# A table read by read_ipc() as a data.frame of its atomic columns (lists left out).
ipc_data_frame <- function(table) {
  atomic <- Filter(is.atomic, unclass(table))
  attr(atomic, "metadata") <- NULL
  as.data.frame(atomic, stringsAsFactors = FALSE, optional = TRUE)
}

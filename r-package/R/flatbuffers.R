# A minimal FlatBuffers writer and reader in base R: just what the Arrow IPC messages need
# (R/arrow-ipc.R). Arrow frames its IPC metadata (schemas, record batch headers) as
# FlatBuffers; the data itself are plain little-endian buffers.
#
# The writer lays a buffer out front to back: the root offset, then each table preceded by
# its vtable, then the table's children (strings, vectors, sub-tables) after it, so every
# uoffset points forward, as the format requires. Scalars sit at offsets aligned to their
# size, strings and vectors at 4 (vectors of 16-byte structs so that their elements are
# 8-aligned), which is what Arrow's flatbuffers verifier checks.

# -- little-endian scalars --------------------------------------------------------------------
le_int <- function(x, size = 4L) writeBin(as.integer(x), raw(), size = size, endian = "little")

# A uint32 / the low and high words of an int64 as the signed int32 with the same bits.
as_u32_bits <- function(x) {
  x <- x %% 4294967296
  as.integer(ifelse(x >= 2147483648, x - 4294967296, x))
}

le_int64 <- function(x) {
  x <- as.double(x)
  if (any(abs(x) >= 2^53)) abort("An Arrow length or offset is beyond 2^53.", code = "too_large")
  low <- x %% 4294967296
  high <- (x - low) / 4294967296
  le_int(as.vector(rbind(as_u32_bits(low), as_u32_bits(high))))
}

# -- writing ---------------------------------------------------------------------------------
# Fields of a table to write: fb_field(slot, kind, value); kinds "bool", "int8", "uint8",
# "int16", "int32", "int64" (scalars), "string", "table", "tables" (a vector of tables),
# "structs" (a vector of structs: value = their bytes, `size` bytes each, 8-aligned).
fb_field <- function(slot, kind, value, size = NULL) {
  list(slot = as.integer(slot), kind = kind, value = value, size = size)
}

fb_table <- function(...) {
  fields <- Filter(Negate(is.null), list(...))
  structure(list(fields = fields), class = "fb_table")
}

scalar_sizes <- c(bool = 1L, int8 = 1L, uint8 = 1L, int16 = 2L, int32 = 4L, int64 = 8L)

scalar_bytes <- function(kind, value) {
  switch(kind,
    bool = as.raw(isTRUE(value)),
    int8 = , uint8 = as.raw(bitwAnd(as.integer(value), 255L)),
    int16 = le_int(value, 2L),
    int32 = le_int(value, 4L),
    int64 = le_int64(value))
}

# A growable byte buffer in an environment (appends and in-place patches).
fb_buffer <- function() {
  env <- new.env(parent = emptyenv())
  env$bytes <- raw(1024L)
  env$pos <- 0L
  env
}

fb_reserve <- function(buf, n) {
  need <- buf$pos + n
  if (need > length(buf$bytes)) {
    grown <- raw(max(need, 2L * length(buf$bytes)))
    grown[seq_len(buf$pos)] <- buf$bytes[seq_len(buf$pos)]
    buf$bytes <- grown
  }
}

fb_put <- function(buf, bytes) {
  n <- length(bytes)
  if (n) {
    fb_reserve(buf, n)
    buf$bytes[buf$pos + seq_len(n)] <- bytes
    buf$pos <- buf$pos + n
  }
  invisible(buf$pos - n)
}

fb_pad <- function(buf, align, remainder = 0L) {
  gap <- (remainder - buf$pos) %% align
  if (gap) fb_put(buf, raw(gap))
  invisible(buf$pos)
}

fb_patch <- function(buf, at, bytes) {
  buf$bytes[at + seq_along(bytes)] <- bytes
}

# A uoffset at `at` pointing forward to `target`.
fb_patch_offset <- function(buf, at, target) fb_patch(buf, at, le_int(as_u32_bits(target - at)))

fb_string <- function(buf, text) {
  bytes <- charToRaw(enc2utf8(text))
  fb_pad(buf, 4L)
  at <- fb_put(buf, le_int(length(bytes)))
  fb_put(buf, c(bytes, as.raw(0L)))
  at
}

# Writes table `tab` (its vtable first) and its children; returns the table's position.
fb_write_table <- function(buf, tab) {
  fields <- tab$fields
  slots <- vapply(fields, `[[`, integer(1), "slot")
  n_slots <- if (length(slots)) max(slots) + 1L else 0L
  vtable_size <- 4L + 2L * n_slots
  fb_pad(buf, 2L)
  vtable_at <- buf$pos
  table_at <- vtable_at + vtable_size
  table_at <- table_at + (-table_at %% 4L)
  # Inline layout: the soffset, then fields largest first, each aligned (absolutely).
  sizes <- vapply(fields, function(f) scalar_sizes[f$kind] %|NA|% 4L, integer(1))
  order <- order(-sizes)
  at <- table_at + 4L
  where <- integer(length(fields))
  for (k in order) {
    at <- at + (-at %% sizes[[k]])
    where[[k]] <- at
    at <- at + sizes[[k]]
  }
  table_end <- at
  vtable <- integer(n_slots)
  vtable[slots + 1L] <- where - table_at
  fb_put(buf, le_int(c(vtable_size, table_end - table_at, vtable), 2L))
  fb_pad(buf, 4L)
  fb_put(buf, le_int(table_at - vtable_at))
  fb_put(buf, raw(table_end - buf$pos))
  for (k in seq_along(fields)) {
    f <- fields[[k]]
    if (f$kind %in% names(scalar_sizes)) fb_patch(buf, where[[k]], scalar_bytes(f$kind, f$value))
  }
  for (k in seq_along(fields)) {
    f <- fields[[k]]
    child <- switch(f$kind,
      string = fb_string(buf, f$value),
      table = fb_write_table(buf, f$value),
      tables = fb_write_tables(buf, f$value),
      structs = fb_write_structs(buf, f$value, f$size),
      NULL)
    if (!is.null(child)) fb_patch_offset(buf, where[[k]], child)
  }
  table_at
}

`%|NA|%` <- function(x, y) if (is.na(x)) y else unname(x)

fb_write_tables <- function(buf, tables) {
  fb_pad(buf, 4L)
  at <- fb_put(buf, le_int(length(tables)))
  slots <- fb_put(buf, raw(4L * length(tables)))
  for (k in seq_along(tables)) {
    child <- fb_write_table(buf, tables[[k]])
    fb_patch_offset(buf, slots + 4L * (k - 1L), child)
  }
  at
}

fb_write_structs <- function(buf, bytes, size) {
  fb_pad(buf, 8L, remainder = 4L)  # the elements, after the length, are 8-aligned
  at <- fb_put(buf, le_int(length(bytes) %/% size))
  fb_put(buf, bytes)
  at
}

# The finished buffer of root table `tab`, padded to a multiple of 8 bytes.
fb_finish <- function(tab) {
  buf <- fb_buffer()
  fb_put(buf, raw(4L))
  root <- fb_write_table(buf, tab)
  fb_patch_offset(buf, 0L, root)
  fb_pad(buf, 8L)
  buf$bytes[seq_len(buf$pos)]
}

# -- reading ---------------------------------------------------------------------------------
# Positions are 0-based byte offsets into the raw vector `buf`.
fb_u8 <- function(buf, at) as.integer(buf[[at + 1L]])

fb_i16 <- function(buf, at) readBin(buf[at + 1:2], "integer", size = 2L, endian = "little")

fb_u16 <- function(buf, at) {
  readBin(buf[at + 1:2], "integer", size = 2L, signed = FALSE, endian = "little")
}

fb_i32 <- function(buf, at) readBin(buf[at + 1:4], "integer", size = 4L, endian = "little")

fb_u32 <- function(buf, at) {
  v <- fb_i32(buf, at)
  if (v < 0L) v + 4294967296 else as.double(v)
}

fb_i64 <- function(buf, at) {
  words <- readBin(buf[at + 1:8], "integer", n = 2L, size = 4L, endian = "little")
  low <- if (words[[1L]] < 0L) words[[1L]] + 4294967296 else as.double(words[[1L]])
  words[[2L]] * 4294967296 + low
}

# A table at `at`: where each of its fields is (NA when absent).
fb_table_at <- function(buf, at) {
  vtable <- at - fb_i32(buf, at)
  vtable_size <- fb_u16(buf, vtable)
  list(buf = buf, at = at, vtable = vtable, n_slots = (vtable_size - 4L) %/% 2L)
}

fb_slot <- function(tab, slot) {
  if (slot >= tab$n_slots) return(NA_real_)
  off <- fb_u16(tab$buf, tab$vtable + 4L + 2L * slot)
  if (off == 0L) NA_real_ else tab$at + off
}

fb_get_scalar <- function(tab, slot, reader, default) {
  at <- fb_slot(tab, slot)
  if (is.na(at)) default else reader(tab$buf, at)
}

fb_get_offset <- function(tab, slot) {
  at <- fb_slot(tab, slot)
  if (is.na(at)) NA_real_ else at + fb_u32(tab$buf, at)
}

fb_get_table <- function(tab, slot) {
  at <- fb_get_offset(tab, slot)
  if (is.na(at)) NULL else fb_table_at(tab$buf, at)
}

fb_get_string <- function(tab, slot) {
  at <- fb_get_offset(tab, slot)
  if (is.na(at)) return(NULL)
  n <- fb_u32(tab$buf, at)
  bytes <- tab$buf[at + 4L + seq_len(n)]
  out <- rawToChar(bytes)
  Encoding(out) <- "UTF-8"
  out
}

fb_get_tables <- function(tab, slot) {
  at <- fb_get_offset(tab, slot)
  if (is.na(at)) return(list())
  n <- fb_u32(tab$buf, at)
  lapply(seq_len(n), function(k) {
    elem <- at + 4L * k
    fb_table_at(tab$buf, elem + fb_u32(tab$buf, elem))
  })
}

# A vector of structs of int64 fields as a matrix (one row per struct).
fb_get_int64_structs <- function(tab, slot, n_fields) {
  at <- fb_get_offset(tab, slot)
  if (is.na(at)) return(matrix(0, 0L, n_fields))
  n <- fb_u32(tab$buf, at)
  if (!n) return(matrix(0, 0L, n_fields))
  words <- readBin(tab$buf[at + 4L + seq_len(8L * n * n_fields)], "integer",
                   n = 2L * n * n_fields, size = 4L, endian = "little")
  low <- words[c(TRUE, FALSE)]
  low <- ifelse(low < 0L, low + 4294967296, as.double(low))
  matrix(words[c(FALSE, TRUE)] * 4294967296 + low, ncol = n_fields, byrow = TRUE)
}

# The FlatBuffers writer and reader in base R (R/flatbuffers.R): what is written reads back,
# aligned as flatbuffers verifiers require; pyarrow's own messages read (test-arrow-ipc.R).

fb <- function(name) get(name, envir = asNamespace("scbridge"))

test_that("a table of every field kind reads back as written", {
  fb_table <- fb("fb_table")
  fb_field <- fb("fb_field")
  child <- fb_table(fb_field(0L, "string", "inner"), fb_field(1L, "int32", -7L))
  structs <- fb("le_int64")(c(1, 2, 2^40, 0))
  tab <- fb_table(
    fb_field(0L, "int16", 4L),
    fb_field(1L, "uint8", 3L),
    fb_field(2L, "table", child),
    fb_field(3L, "int64", 2^40 + 5),
    fb_field(4L, "string", "caf\u00e9"),
    fb_field(5L, "tables", list(child, fb_table())),
    fb_field(6L, "structs", structs, size = 16L),
    fb_field(8L, "bool", TRUE))
  buf <- fb("fb_finish")(tab)
  expect_identical(length(buf) %% 8L, 0L)
  root <- fb("fb_table_at")(buf, fb("fb_u32")(buf, 0))
  expect_identical(fb("fb_get_scalar")(root, 0L, fb("fb_i16"), 0L), 4L)
  expect_identical(fb("fb_get_scalar")(root, 1L, fb("fb_u8"), 0L), 3L)
  expect_identical(fb("fb_get_scalar")(root, 3L, fb("fb_i64"), 0), 2^40 + 5)
  expect_identical(fb("fb_get_string")(root, 4L), "caf\u00e9")
  expect_identical(fb("fb_get_scalar")(root, 8L, fb("fb_u8"), 0L), 1L)
  # absent slots give the default
  expect_identical(fb("fb_get_scalar")(root, 7L, fb("fb_i32"), 99L), 99L)
  expect_null(fb("fb_get_string")(root, 7L))
  inner <- fb("fb_get_table")(root, 2L)
  expect_identical(fb("fb_get_string")(inner, 0L), "inner")
  expect_identical(fb("fb_get_scalar")(inner, 1L, fb("fb_i32"), 0L), -7L)
  tables <- fb("fb_get_tables")(root, 5L)
  expect_length(tables, 2L)
  expect_identical(fb("fb_get_string")(tables[[1]], 0L), "inner")
  expect_identical(fb("fb_get_int64_structs")(root, 6L, 2L),
                   matrix(c(1, 2, 2^40, 0), ncol = 2L, byrow = TRUE))
})

test_that("scalars, strings and struct vectors sit where a verifier wants them", {
  fb_table <- fb("fb_table")
  fb_field <- fb("fb_field")
  tab <- fb_table(fb_field(0L, "uint8", 1L), fb_field(1L, "int64", 12),
                  fb_field(2L, "structs", fb("le_int64")(c(5, 6)), size = 16L),
                  fb_field(3L, "string", "x"))
  buf <- fb("fb_finish")(tab)
  root <- fb("fb_table_at")(buf, fb("fb_u32")(buf, 0))
  expect_identical(root$at %% 4, 0)
  expect_identical(root$vtable %% 2, 0)
  expect_identical(fb("fb_slot")(root, 1L) %% 8, 0)  # the int64
  structs <- fb("fb_get_offset")(root, 2L)
  expect_identical((structs + 4) %% 8, 0)  # elements after the length are 8-aligned
  expect_identical(fb("fb_get_offset")(root, 3L) %% 4, 0)
})

test_that("int64 values beyond 2^53 are refused", {
  expect_error(fb("le_int64")(2^54), class = "scbridge_error_too_large")
})

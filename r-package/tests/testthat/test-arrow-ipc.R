# Arrow IPC in base R (R/arrow-ipc.R): the Arrow CSR stream R writes without nanoarrow or
# arrow, read by pyarrow and bridge.read; and the tables pyarrow and the core write, read by R.

test_that("the base-R Arrow CSR stream reads in pyarrow and bridge.read as the dgCMatrix", {
  counts <- plain(sim_counts())
  write <- function(m, source, value_kind = NULL) {
    path <- file.path(withr::local_tempdir(.local_envir = parent.frame(2)), "m.arrows")
    con <- file(path, "wb")
    scbridge:::write_ipc_csr(m, scbridge:::csr_metadata(m, source, value_kind), con)
    close(con)
    path
  }
  for (m in list(counts, lognorm(counts))) {
    found <- read_in_python_csr(write(m, "R dgCMatrix"))
    expect_same_csr(found, m, "R dgCMatrix")
    expect_identical(found$bridge$value_kind, scbridge:::detect_value_kind(m@x))
  }
  # Edge cases: cells without non-zeros, a single cell, no non-zeros at all.
  sparse <- counts[, 1:5]
  sparse[, 2] <- 0
  sparse <- Matrix::drop0(sparse)
  expect_same_csr(read_in_python_csr(write(sparse, "x")), sparse, "x")
  one <- counts[, 7, drop = FALSE]
  expect_same_csr(read_in_python_csr(write(one, "x")), one, "x")
  # TPM-like values travel as value kind "normalized" (format 1.1).
  tpm <- counts
  tpm@x <- tpm@x * 123.25
  found <- read_in_python_csr(write(tpm, "x"))
  expect_identical(found$bridge$value_kind, "normalized")
  expect_identical(found$pyarrow$metadata[["scbridge.format_version"]], "1.1")
  # A value kind named by the user wins over the guess.
  found <- read_in_python_csr(write(counts, "x", value_kind = "lognorm"))
  expect_identical(found$bridge$value_kind, "lognorm")
})

test_that("cell metadata columns (labels, with NA) travel beside the matrix", {
  m <- plain(sim_counts(n_cells = 12))
  labels <- rep(c("T", "B", NA, "NK \u00e9"), 3)
  path <- file.path(withr::local_tempdir(), "m.arrows")
  con <- file(path, "wb")
  scbridge:::write_ipc_csr(m, scbridge:::csr_metadata(m, "x"), con, obs = list(label = labels))
  close(con)
  found <- python_json(sprintf(paste0(
    "import json, pyarrow as pa, bridge\n",
    "t = pa.ipc.open_stream(pa.memory_map(%s)).read_all()\n",
    "m = bridge.read(%s)\n",
    "print(json.dumps({'names': t.schema.names, 'label': t.column('label').to_pylist(),",
    " 'obs': m.obs.column('label').to_pylist()}))"), deparse(path), deparse(path)))
  expect_identical(found$names, c("cell", "indices", "values", "label"))
  expect_identical(found$label, labels)
  expect_identical(found$obs, labels)
})

test_that("Arrow files and streams pyarrow writes are read in base R, every column type", {
  dir <- withr::local_tempdir()
  run_python_fixture("write_arrow_tables.py", dir)
  expected <- jsonlite::fromJSON(file.path(dir, "types.json"), simplifyVector = FALSE)
  as_num <- function(v) {
    unname(vapply(v, function(x) if (is.null(x)) NA_real_ else as.numeric(x), 0))
  }
  for (file in c("types.arrow", "types.arrows")) {
    t <- scbridge:::read_ipc(file.path(dir, file))
    expect_identical(names(t), c("s", "d", "i32", "i64", "f32", "f64", "b", "l", "ls", "fx"))
    expect_identical(attr(t, "metadata")[["scbridge.note"]], "written by write_arrow_tables.py")
    na_chr <- function(v) vapply(v, function(x) if (is.null(x)) NA_character_ else x, "")
    expect_identical(t$s, na_chr(expected$s))
    expect_identical(t$d, na_chr(expected$d))
    expect_identical(t$i32, as.integer(as_num(expected$i32)))
    expect_identical(t$i64, as_num(expected$i64))
    expect_identical(t$f32, as_num(expected$f32))
    expect_identical(t$f64, as_num(expected$f64))
    expect_identical(t$b, vapply(expected$b, function(x) if (is.null(x)) NA else x, NA))
    strings <- scbridge:::ipc_list_parts(t$l)
    expect_identical(strings$lengths, lengths(expected$l))
    expect_identical(strings$values, as.character(unlist(expected$l)))
    alts <- scbridge:::ipc_list_parts(t$ls)
    expect_identical(alts$lengths, lengths(expected$ls))
    flat <- unlist(expected$ls, recursive = FALSE)
    expect_identical(alts$values$label, vapply(flat, `[[`, "", "label"))
    expect_identical(alts$values$score, vapply(flat, function(a) as.numeric(a$score), 0))
    expect_identical(t$fx$size, 3L)
    expect_identical(t$fx$values, as_num(unlist(expected$fx)))
  }
})

test_that("a Calls table the core writes is read back as the calls", {
  skip_if_no_python()
  m <- plain(sim_counts())
  dir <- withr::local_tempdir()
  input <- scbridge:::write_arrow_csr(m, "R dgCMatrix", file.path(dir, "m.arrow"))
  out <- file.path(dir, "calls.arrow")
  python_json(sprintf(paste0(
    "import json, bridge\n",
    "from bridge.cli._annotate import write_calls\n",
    "write_calls(bridge.call_cells(bridge.read(%s), progress=False), %s)\n",
    "print('{}')"), deparse(input), deparse(out)))
  table <- scbridge:::read_ipc(out)
  expect_identical(attr(table, "metadata")[["scbridge.model"]], "markers")
  from_file <- scbridge:::calls_from_ipc(table, colnames(m))
  rownames(from_file) <- from_file$cell  # as annotate_cells() gives a matrix's calls
  expect_same_calls(from_file, annotate_cells(m, engine = "python"))
  expect_error(scbridge:::calls_from_ipc(table, rev(colnames(m))),
               class = "scbridge_error_engine_failure")
})

test_that("what is not Arrow IPC is refused with a classed error", {
  path <- withr::local_tempfile()
  writeBin(charToRaw("this is not arrow"), path)
  expect_error(scbridge:::read_ipc(path, "The file"), class = "scbridge_error_invalid_arrow")
  expect_error(scbridge:::read_ipc(raw(0)), class = "scbridge_error_invalid_arrow")
})

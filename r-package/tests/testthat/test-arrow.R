# The Arrow CSR transport (R/arrow.R, R/arrow-check.R) with each backend installed here: what
# R writes, read by pyarrow and by bridge.read; the cli and http engines over Arrow against
# the python engine; the check that refuses a malformed batch in R. Without nanoarrow or
# arrow these tests skip (the skip CI allows), naming the missing package.

arrow_cache <- new.env()

# The python engine's calls on the shared simulated matrix, computed once for this file.
python_reference <- function() {
  if (is.null(arrow_cache$python)) {
    arrow_cache$python <- annotate_cells(plain(sim_counts()), engine = "python")
  }
  arrow_cache$python
}

# Runs `code` once per installed backend (nanoarrow, arrow), that backend chosen.
for_each_backend <- function(code) {
  code <- substitute(code)
  env <- parent.frame()
  for (backend in skip_if_no_arrow()) {
    withr::with_options(list(scbridge.arrow_backend = backend), eval(code, env))
  }
}

# What pyarrow and bridge.read find in an Arrow CSR file or stream (fixtures/read_arrow_csr.py).
read_in_python <- function(path) {
  py <- test_python_path()
  if (!nzchar(py)) skip_engine("Arrow CSR read-back: no Python with the scbridge core (set SCBRIDGE_PYTHON)")
  out <- tempfile(fileext = ".json")
  res <- processx::run(py, c(test_path("fixtures", "read_arrow_csr.py"), path, out),
                       error_on_status = FALSE, env = scbridge:::subprocess_env())
  if (res$status != 0L) stop("read_arrow_csr.py failed:\n", res$stderr, call. = FALSE)
  jsonlite::fromJSON(out, simplifyVector = TRUE)
}

expect_same_matrix <- function(found, m, source) {
  pa <- found$pyarrow
  expect_identical(pa$names, c("cell", "indices", "values"))
  expect_identical(pa$types[[1]], "string")
  expect_match(pa$types[[2]], "^list<item: int32( not null)?>$")
  expect_match(pa$types[[3]], "^list<item: double( not null)?>$")
  expect_identical(pa$metadata[["scbridge.format"]], "scbridge.arrow-csr")
  expect_identical(pa$metadata[["scbridge.format_version"]], "1.0")
  expect_identical(pa$metadata[["scbridge.source"]], source)
  expect_identical(as.integer(pa$offsets), m@p)
  expect_identical(as.integer(pa$values_offsets), m@p)
  expect_identical(as.integer(pa$indices), m@i)
  expect_identical(as.double(pa$values), m@x)
  expect_identical(pa$cells, colnames(m))

  core <- found$bridge
  expect_identical(as.integer(core$indptr), m@p)
  expect_identical(as.integer(core$indices), m@i)
  expect_identical(as.double(core$data), m@x)
  expect_identical(core$cells, colnames(m))
  expect_identical(core$genes, rownames(m))
  expect_identical(core$source, source)
}

test_that("a matrix R writes as Arrow (file and stream) reads in pyarrow and bridge.read as the dgCMatrix", {
  counts <- plain(sim_counts())
  for_each_backend({
    for (m in list(counts, lognorm(counts))) {
      kind <- if (identical(m, counts)) "counts" else "lognorm"
      file <- scbridge:::write_arrow_csr(m, "R dgCMatrix", file.path(withr::local_tempdir(), "m.arrow"))
      found <- read_in_python(file)
      expect_same_matrix(found, m, "R dgCMatrix")
      expect_identical(found$bridge$value_kind, kind)

      stream <- file.path(withr::local_tempdir(), "m.arrows")
      writeBin(scbridge:::arrow_csr_stream(m, "Seurat assay RNA data"), stream)
      found <- read_in_python(stream)
      expect_same_matrix(found, m, "Seurat assay RNA data")
      expect_identical(found$pyarrow$metadata[["scbridge.value_kind"]], kind)
    }
    # Edge cases: cells without non-zeros, and a single cell.
    sparse <- counts[, 1:5]
    sparse[, 2] <- 0
    sparse <- Matrix::drop0(sparse)
    expect_same_matrix(read_in_python(scbridge:::write_arrow_csr(
      sparse, "x", file.path(withr::local_tempdir(), "s.arrow"))), sparse, "x")
    one <- counts[, 7, drop = FALSE]
    stream <- file.path(withr::local_tempdir(), "one.arrows")
    writeBin(scbridge:::arrow_csr_stream(one, "x"), stream)
    expect_same_matrix(read_in_python(stream), one, "x")
  })
})

test_that("nanoarrow builds the batch on the slots themselves, named, typed and with the metadata", {
  skip_if_no_arrow("nanoarrow")
  m <- plain(sim_counts())
  metadata <- scbridge:::csr_metadata(m, "R dgCMatrix")
  batch <- scbridge:::nanoarrow_csr_array(m, metadata)
  schema <- nanoarrow::infer_nanoarrow_schema(batch)
  expect_identical(names(schema$children), c("cell", "indices", "values"))
  expect_identical(vapply(schema$children, function(s) s$format, ""),
                   c(cell = "u", indices = "+l", values = "+l"))
  expect_identical(schema$children$indices$children[[1]]$format, "i")
  expect_identical(schema$children$values$children[[1]]$format, "g")
  expect_identical(schema$metadata, metadata)
  # Zero-copy: both lists' offsets are the p slot's memory, their children that of i and x.
  address <- function(buffer) format(nanoarrow:::nanoarrow_buffer_info(buffer)$data)
  slot <- function(x) address(nanoarrow::as_nanoarrow_buffer(x))
  expect_identical(address(batch$children$indices$buffers[[2]]), slot(m@p))
  expect_identical(address(batch$children$values$buffers[[2]]), slot(m@p))
  expect_identical(address(batch$children$indices$children[[1]]$buffers[[2]]), slot(m@i))
  expect_identical(address(batch$children$values$children[[1]]$buffers[[2]]), slot(m@x))
})

test_that("the Arrow CSR check refuses what is not the format with a classed error saying what is wrong", {
  m <- plain(sim_counts())
  metadata <- scbridge:::csr_metadata(m, "R dgCMatrix")
  check <- function(found) scbridge:::check_arrow_csr(found, m, metadata, "The batch")
  good <- list(names = c("cell", "indices", "values"),
               types = c("utf8", "list<int32>", "list<float64>"), metadata = metadata,
               n_cells = as.double(ncol(m)),
               n_values = c(indices = length(m@x), values = length(m@x)))
  expect_true(check(good))
  unnamed <- good
  unnamed$names <- c("", "", "")
  expect_error(check(unnamed), "columns are '', '', '', not cell, indices, values",
               class = "scbridge_error_arrow_format")
  wrong_type <- good
  wrong_type$types[[3]] <- "list<float32>"
  expect_error(check(wrong_type), "column 'values' is list<float32>, not list<float64>",
               class = "scbridge_error_arrow_format")
  no_metadata <- good
  no_metadata$metadata <- list()
  expect_error(check(no_metadata), "schema metadata 'scbridge.format' is missing",
               class = "scbridge_error_arrow_format")
  other_genes <- good
  other_genes$metadata$scbridge.genes <- "[\"A\"]"
  expect_error(check(other_genes), "'scbridge.genes' is '\\[\"A\"\\]'",
               class = "scbridge_error_arrow_format")
  short <- good
  short$n_cells <- 3
  short$n_values[["values"]] <- 10
  err <- expect_error(check(short), class = "scbridge_error_arrow_format")
  expect_match(conditionMessage(err), "holds 3 cells, not 120")
  expect_match(conditionMessage(err), "column 'values' holds 10 values")
  expect_match(conditionMessage(err), "scbridge.http_transport = \"json\"")
  tiny_file <- good[c("names", "types", "metadata")]
  tiny_file$file_bytes <- 100
  expect_error(check(tiny_file), "the file holds 100 bytes, too few",
               class = "scbridge_error_arrow_format")
})

test_that("a batch built as before issue 18 (unnamed columns), a file for other cells, a foreign table fail the check", {
  backends <- skip_if_no_arrow()
  m <- plain(sim_counts())
  metadata <- scbridge:::csr_metadata(m, "R dgCMatrix")
  check <- function(found) scbridge:::check_arrow_csr(found, m, metadata, "The batch")
  if ("nanoarrow" %in% backends) {
    # The batch as nanoarrow_array_modify() built it before issue 18: unnamed children.
    bad <- nanoarrow::nanoarrow_array_modify(
      nanoarrow::nanoarrow_array_init(scbridge:::nanoarrow_csr_schema(metadata)),
      list(length = ncol(m), null_count = 0L, children = list(
        nanoarrow::as_nanoarrow_array(colnames(m), schema = nanoarrow::na_string()),
        nanoarrow::as_nanoarrow_array(as.list(rep(1L, ncol(m))),
                                      schema = nanoarrow::na_list(nanoarrow::na_int32())),
        nanoarrow::as_nanoarrow_array(as.list(rep(1, ncol(m))),
                                      schema = nanoarrow::na_list(nanoarrow::na_double())))))
    found <- scbridge:::describe_nanoarrow_batch(bad)
    expect_identical(found$names, c("", "", ""))
    err <- expect_error(check(found), class = "scbridge_error_arrow_format")
    expect_match(conditionMessage(err), "columns are '', '', ''")

    # A file written for fewer cells than the matrix holds.
    small <- m[, 1:3]
    path <- scbridge:::write_arrow_csr(small, "x", file.path(withr::local_tempdir(), "small.arrow"))
    small_metadata <- scbridge:::csr_metadata(small, "x")
    found <- scbridge:::describe_arrow_written(path, "nanoarrow")
    expect_true(scbridge:::check_arrow_csr(found, small, small_metadata, path))
    expect_error(scbridge:::check_arrow_csr(found, m, small_metadata, path), "too few",
                 class = "scbridge_error_arrow_format")
  }
  if ("arrow" %in% backends) {
    tab <- arrow::Table$create(a = arrow::Array$create(colnames(m)))
    expect_error(check(scbridge:::describe_arrow_table(tab)), "columns are 'a'",
                 class = "scbridge_error_arrow_format")
  }
})

test_that("cli engine over Arrow agrees with python cell for cell on every class", {
  skip_if_no_python()
  skip_if_no_cli()
  m <- plain(sim_counts())
  ref <- python_reference()
  for_each_backend({
    withr::local_options(scbridge.cli_transport = "arrow", scbridge.verbose = TRUE)
    # arrow writes an IPC file, nanoarrow an IPC stream (.arrows).
    file <- if (getOption("scbridge.arrow_backend") == "arrow") "as matrix\\.arrow(\n|$)" else "as matrix\\.arrows"
    said <- capture_messages(out <- annotate_cells(m, engine = "cli"))
    expect_match(said, file, all = FALSE)
    expect_same_calls(out, ref)
    withr::local_options(scbridge.verbose = FALSE)
    expect_same_calls(calls(annotate_cells(make_seurat_v4(m), engine = "cli")), ref)
    expect_same_calls(calls(annotate_cells(make_seurat_v5_split(m), engine = "cli")), ref)
    expect_same_calls(calls(annotate_cells(make_sce(m), engine = "cli")), ref)
    expect_same_calls(calls(annotate_cells(make_seurat_v4(m), layer = "data", engine = "cli")),
                      calls(annotate_cells(make_seurat_v4(m), layer = "data", engine = "python")))
  })
})

test_that("http engine over Arrow agrees with python cell for cell on every class, chunked", {
  skip_if_no_python()
  server <- test_server()
  m <- plain(sim_counts())
  ref <- python_reference()
  http <- function(object, ...) {
    annotate_cells(object, engine = "http", endpoint = server$endpoint, api_key = server$key, ...)
  }
  for_each_backend({
    withr::local_options(scbridge.http_transport = "arrow")
    expect_same_calls(http(m, chunk_size = 37), ref)
    expect_same_calls(http(m), ref)
    expect_same_calls(calls(http(make_seurat_v4(m))), ref)
    expect_same_calls(calls(http(make_seurat_v5_split(m), chunk_size = 50)), ref)
    expect_same_calls(calls(http(make_sce(m))), ref)
    expect_same_calls(calls(http(make_seurat_v4(m), layer = "data")),
                      calls(annotate_cells(make_seurat_v4(m), layer = "data", engine = "python")))
    # Unknown arguments are refused before anything is sent; engine parameters other than
    # tissue and min_gene_fraction travel in JSON bodies only: auto picks JSON for them.
    expect_error(http(m, some_parameter = 1), class = "scbridge_error_unknown_parameter")
    withr::local_options(scbridge.http_transport = "auto")
    expect_identical(scbridge:::http_transport(), "arrow")
    expect_identical(scbridge:::http_transport(list(some_parameter = 1)), "json")
  })
})

test_that("an unknown or missing backend in options(scbridge.arrow_backend) is a dependency error", {
  withr::local_options(scbridge.arrow_backend = "feather")
  expect_error(scbridge:::arrow_backend(), class = "scbridge_error_invalid_parameter")
  for (backend in c("nanoarrow", "arrow")) {
    if (!backend %in% scbridge:::arrow_backends()) {
      withr::local_options(scbridge.arrow_backend = backend)
      expect_error(scbridge:::arrow_backend(), sprintf("the R package %s is not installed", backend),
                   class = "scbridge_error_missing_dependency")
    }
  }
})

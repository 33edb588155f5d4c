# Shared test code: simulated data, v5-layout Seurat objects, engine set-up and skips.

# The python engine's interpreter: CI sets SCBRIDGE_PYTHON (the venv with the scbridge core,
# numpy < 2 for Debian's reticulate 1.28). Must be set before reticulate starts Python.
if (nzchar(Sys.getenv("SCBRIDGE_PYTHON")) && !nzchar(Sys.getenv("RETICULATE_PYTHON"))) {
  Sys.setenv(RETICULATE_PYTHON = Sys.getenv("SCBRIDGE_PYTHON"))
}

# Outside users without Python get skips; CI (SCBRIDGE_REQUIRE_R=1) gets failures instead,
# so the engine tests can never pass by not running.
skip_engine <- function(reason) {
  if (identical(Sys.getenv("SCBRIDGE_REQUIRE_R"), "1")) {
    stop("SCBRIDGE_REQUIRE_R=1 but this engine test cannot run: ", reason, call. = FALSE)
  }
  testthat::skip(reason)
}

skip_if_no_python <- function() {
  # Only a Python named on purpose: never whatever reticulate would find on the PATH.
  if (!nzchar(Sys.getenv("RETICULATE_PYTHON")) && is.null(getOption("scbridge.python"))) {
    skip_engine("python engine: set SCBRIDGE_PYTHON to a Python with the scbridge core")
  }
  why <- scbridge:::python_status()
  if (!is.null(why)) skip_engine(paste("python engine:", why))
  invisible(TRUE)
}

test_python_path <- function() {
  py <- Sys.getenv("SCBRIDGE_PYTHON")
  if (nzchar(py)) return(py)
  Sys.getenv("RETICULATE_PYTHON")
}

skip_if_no_cli <- function() {
  if (!nzchar(Sys.getenv("SCBRIDGE_CLI")) && is.null(getOption("scbridge.cli"))) {
    py <- test_python_path()
    candidate <- if (nzchar(py)) file.path(dirname(py), "scbridge") else ""
    if (nzchar(candidate) && file.exists(candidate)) options(scbridge.cli = candidate)
  }
  why <- scbridge:::cli_status()
  if (!is.null(why)) skip_engine(paste("cli engine:", why))
  invisible(TRUE)
}

# The Arrow transport needs the R package nanoarrow (>= 0.6.0) or arrow, which Debian does not
# package. Its tests skip without them, with a message that starts "Arrow transport:" and
# names the missing package: the one skip CI allows (tests/test_r_package.py and
# r-package/tools/check.sh print it). `backend`: a test that needs that backend in particular.
skip_if_no_arrow <- function(backend = NULL) {
  found <- scbridge:::arrow_backends()
  wanted <- if (is.null(backend)) c("nanoarrow", "arrow") else backend
  if (!any(wanted %in% found)) {
    testthat::skip(paste("Arrow transport:", scbridge:::arrow_backend_missing(wanted)))
  }
  invisible(intersect(wanted, found))
}

# -- simulated data -------------------------------------------------------------------------
marker_sets <- list(
  T = c("CD3D", "CD3E", "IL7R", "CD2"),
  B = c("MS4A1", "CD79A", "CD79B", "CD19"),
  NK = c("NKG7", "GNLY", "KLRD1", "PRF1"),
  Mono = c("LYZ", "CD14", "S100A8", "S100A9")
)

# Gene symbols the core's built-in marker model knows (bridge/engines/data/markers.tsv), so
# that the simulated data meets its genes-found check; each simulated type expresses its
# markers strongly over a sparse background.
model_genes <- readLines(test_path("fixtures", "model_genes.txt"))

sim_counts <- function(n_cells = 120L, seed = 1L, density = 0.03) {
  set.seed(seed)
  markers <- unlist(marker_sets, use.names = FALSE)
  genes <- unique(c(markers, "PTPRC", model_genes))
  types <- rep(names(marker_sets), length.out = n_cells)
  cells <- sprintf("cell%04d", seq_len(n_cells))
  m <- Matrix::rsparsematrix(length(genes), n_cells, density = density,
                             rand.x = function(n) as.double(rpois(n, 1) + 1))
  m <- as(m, "CsparseMatrix")
  strong <- matrix(0, length(markers) + 1L, n_cells)
  for (k in seq_len(n_cells)) {
    rows <- match(marker_sets[[types[[k]]]], markers)
    strong[rows, k] <- rpois(length(rows), 12) + 3
    strong[length(markers) + 1L, k] <- rpois(1L, 8) + 2  # PTPRC: all are blood cells
  }
  m[seq_len(length(markers) + 1L), ] <- Matrix::Matrix(strong, sparse = TRUE)
  m <- Matrix::drop0(m)
  dimnames(m) <- list(genes, cells)
  attr(m, "types") <- types
  m
}

lognorm <- function(m) {
  out <- m
  out@x <- log1p(out@x / rep(unname(Matrix::colSums(m)), diff(m@p)) * 1e4)
  out
}

make_seurat_v4 <- function(m) {
  attr(m, "types") <- NULL
  meta <- data.frame(sample = rep(c("A", "B"), length.out = ncol(m)), row.names = colnames(m))
  obj <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = m, meta.data = meta))
  SeuratObject::SetAssayData(obj, slot = "data", new.data = lognorm(m))
}

# Seurat v5 (SeuratObject 5) classes, defined here from their source because only
# SeuratObject 4.1 is installable: Assay5 slots layers, cells (LogMap), features (LogMap),
# default, assay.orig, meta.data, misc, key; LogMap contains 'matrix'. Layers carry no
# dimnames. The same approach as tests/r/make_fixtures.R of the Python tests.
v5_classes <- new.env()
methods::setClass("LogMap", contains = "matrix", where = v5_classes, package = "SeuratObject")
methods::setClass("Assay5", where = v5_classes, package = "SeuratObject", slots = c(
  layers = "list", cells = "LogMap", features = "LogMap", default = "integer",
  assay.orig = "character", meta.data = "data.frame", misc = "list", key = "character"
))

logmap <- function(values, members) {
  m <- matrix(FALSE, nrow = length(values), ncol = length(members),
              dimnames = list(values, names(members)))
  for (n in names(members)) m[members[[n]], n] <- TRUE
  methods::new("LogMap", m)
}

# A v5-layout Seurat object whose RNA assay holds `layers` (named dgCMatrix with dimnames,
# which are dropped as SeuratObject 5 stores them).
make_seurat_v5 <- function(m, layers) {
  genes <- rownames(m)
  cells <- colnames(m)
  undimnamed <- function(x) { dimnames(x) <- list(NULL, NULL); x }
  assay <- methods::new("Assay5",
    layers = lapply(layers, undimnamed),
    cells = logmap(cells, lapply(layers, colnames)),
    features = logmap(genes, lapply(layers, rownames)),
    default = 1L, assay.orig = character(0),
    meta.data = data.frame(row.names = seq_along(genes))[, FALSE, drop = FALSE],
    misc = list(), key = "rna_")
  obj <- make_seurat_v4(m)
  assays <- attr(obj, "assays")
  assays[["RNA"]] <- assay
  attr(obj, "assays") <- assays
  attr(obj, "version") <- package_version("5.0.2")
  obj
}

# Split layers counts.A / counts.B with the cells of A and B interleaved in the object.
make_seurat_v5_split <- function(m) {
  in_a <- seq_len(ncol(m)) %% 3 != 0
  make_seurat_v5(m, list(counts.A = m[, in_a], counts.B = m[, !in_a], data = lognorm(m)))
}

make_sce <- function(m) {
  attr(m, "types") <- NULL
  SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = m, logcounts = lognorm(m)),
    colData = S4Vectors::DataFrame(sample = rep(c("A", "B"), length.out = ncol(m)),
                                   row.names = colnames(m)))
}

plain <- function(m) {
  attr(m, "types") <- NULL
  m
}

# -- a real `scbridge serve` on loopback, started once per test run ---------------------------
test_server_env <- new.env()

test_server <- function() {
  if (!is.null(test_server_env$info)) return(test_server_env$info)
  if (!requireNamespace("processx", quietly = TRUE)) skip_engine("http engine: processx is not installed")
  if (!requireNamespace("httr2", quietly = TRUE)) skip_engine("http engine: httr2 is not installed")
  py <- test_python_path()
  if (!nzchar(py)) skip_engine("http engine: no Python with the scbridge core (set SCBRIDGE_PYTHON)")
  key <- "test-key-0123456789"
  keyfile <- tempfile("keys")
  writeLines(key, keyfile)
  for (attempt in 1:5) {
    port <- sample(20000:45000, 1L)
    proc <- processx::process$new(py, c("-m", "bridge", "serve", "--host", "127.0.0.1",
                                        "--port", port, "--api-keys", keyfile),
                                  stdout = "|", stderr = "|", cleanup = TRUE,
                                  env = scbridge:::subprocess_env())
    endpoint <- sprintf("http://127.0.0.1:%d", port)
    ready <- FALSE
    deadline <- Sys.time() + 60
    while (Sys.time() < deadline && proc$is_alive()) {
      ok <- tryCatch({
        resp <- httr2::req_perform(httr2::req_timeout(
          httr2::request(paste0(endpoint, "/healthz")), 2))
        httr2::resp_status(resp) == 200
      }, error = function(e) FALSE)
      if (ok) { ready <- TRUE; break }
      Sys.sleep(0.2)
    }
    if (ready) break
    err <- if (proc$is_alive()) "" else proc$read_all_error()
    proc$kill()
    if (!grepl("address already in use", err, ignore.case = TRUE)) {
      skip_engine(paste("http engine: `python -m bridge serve` did not start:", err))
    }
  }
  if (!ready) skip_engine("http engine: the test server did not become ready")
  withr::defer(proc$kill(), envir = testthat::teardown_env())
  test_server_env$info <- list(endpoint = endpoint, key = key, process = proc)
  test_server_env$info
}

# A port on which nothing listens.
closed_port_endpoint <- function() {
  "http://127.0.0.1:9"
}

expect_same_calls <- function(a, b) {
  attr(a, "provenance") <- NULL
  attr(b, "provenance") <- NULL
  expect_identical(a, b)
}

# Runs a fixture script (fixtures/NAME) with the Python of the scbridge core; fails the test
# with the script's stderr when it fails.
run_python_fixture <- function(name, args = character(0)) {
  py <- test_python_path()
  if (!nzchar(py)) skip_engine(sprintf("%s: no Python with the scbridge core (set SCBRIDGE_PYTHON)", name))
  res <- processx::run(py, c(test_path("fixtures", name), args), error_on_status = FALSE,
                       env = scbridge:::subprocess_env())
  if (res$status != 0L) stop(name, " failed:\n", res$stderr, call. = FALSE)
  res$stdout
}

# Python code run with the core's Python, its stdout parsed as JSON.
python_json <- function(code) {
  py <- test_python_path()
  if (!nzchar(py)) skip_engine("no Python with the scbridge core (set SCBRIDGE_PYTHON)")
  res <- processx::run(py, c("-c", code), error_on_status = FALSE,
                       env = scbridge:::subprocess_env())
  if (res$status != 0L) stop("python -c failed:\n", res$stderr, call. = FALSE)
  jsonlite::fromJSON(res$stdout, simplifyVector = TRUE)
}

# Silence the progress steps and the core's notes unless a test asks for them.
options(scbridge.verbose = FALSE)

# What pyarrow and bridge.read find in an Arrow CSR file or stream (fixtures/read_arrow_csr.py).
read_in_python_csr <- function(path) {
  out <- tempfile(fileext = ".json")
  run_python_fixture("read_arrow_csr.py", c(path, out))
  jsonlite::fromJSON(out, simplifyVector = TRUE)
}

expect_same_csr <- function(found, m, source) {
  pa <- found$pyarrow
  expect_identical(pa$names[1:3], c("cell", "indices", "values"))
  expect_identical(pa$types[[1]], "string")
  expect_match(pa$types[[2]], "^list<item: int32( not null)?>$")
  expect_match(pa$types[[3]], "^list<item: double( not null)?>$")
  expect_identical(pa$metadata[["scbridge.format"]], "scbridge.arrow-csr")
  expect_identical(pa$metadata[["scbridge.source"]], source)
  expect_identical(as.integer(pa$offsets), m@p)
  expect_identical(as.integer(pa$values_offsets), m@p)
  expect_identical(as.integer(pa$indices), m@i)
  expect_identical(as.double(pa$values), m@x)
  expect_identical(as.character(pa$cells), colnames(m))
  core <- found$bridge
  expect_identical(as.integer(core$indptr), m@p)
  expect_identical(as.integer(core$indices), m@i)
  expect_identical(as.double(core$data), m@x)
  expect_identical(as.character(core$cells), colnames(m))
  expect_identical(core$genes, rownames(m))
  expect_identical(core$source, source)
}

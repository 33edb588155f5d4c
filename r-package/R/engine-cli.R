# The cli engine: `scbridge annotate IN --out calls.json` in a subprocess.
#
# IN is an Arrow CSR file (docs/format.md) when the R package nanoarrow or arrow is installed
# (R/arrow.R), otherwise an uncompressed .rds of the dgCMatrix (with its cell and gene names)
# that the core reads through rpy2. The .json result is the Calls contract, which jsonlite
# reads natively.

cli_path <- function() {
  path <- getOption("scbridge.cli") %||% Sys.getenv("SCBRIDGE_CLI")
  if (!nzchar(path)) path <- unname(Sys.which("scbridge"))
  path
}

cli_status <- function() {
  if (!requireNamespace("jsonlite", quietly = TRUE)) {
    return("the R package jsonlite is not installed")
  }
  path <- cli_path()
  if (!nzchar(path)) return("no `scbridge` command on the PATH, and neither options(scbridge.cli) nor SCBRIDGE_CLI is set")
  if (!file.exists(path)) return(sprintf("the scbridge command '%s' does not exist", path))
  NULL
}

cli_check <- function() {
  why <- cli_status()
  if (!is.null(why)) {
    abort(c(sprintf("The 'cli' engine is not available: %s.", why),
            paste("To set it up:", engine_setup[["cli"]])), kind = "engine_unavailable")
  }
  cli_path()
}

# Which file format carries the matrix to the subprocess.
cli_transport <- function() {
  wanted <- getOption("scbridge.cli_transport", "auto")
  if (identical(wanted, "auto")) {
    return(if (is.null(arrow_backend())) "rds" else "arrow")
  }
  wanted <- match.arg(wanted, c("arrow", "rds"))
  if (wanted == "arrow" && is.null(arrow_backend())) {
    need_arrow_backend("The Arrow transport (options(scbridge.cli_transport = \"arrow\"))")
  }
  wanted
}

write_cli_input <- function(m, source, dir) {
  if (cli_transport() == "arrow") {
    path <- write_arrow_csr(m, source, file.path(dir, "matrix.arrow"))
  } else {
    path <- file.path(dir, "matrix.rds")
    # Uncompressed: the core's readRDS of it is then a plain read.
    saveRDS(m, path, compress = FALSE)
  }
  inform("cli: the matrix goes to the subprocess as ", basename(path))
  path
}

run_cli <- function(args, what) {
  exe <- cli_check()
  inform("running ", exe, " ", paste(args, collapse = " "))
  env <- subprocess_env()
  if (requireNamespace("processx", quietly = TRUE)) {
    res <- processx::run(exe, args, error_on_status = FALSE, stderr_to_stdout = FALSE, env = env)
    status <- res$status
    stderr <- res$stderr
  } else {
    errfile <- tempfile()
    on.exit(unlink(errfile), add = TRUE)
    status <- system2(exe, shQuote(args), stdout = FALSE, stderr = errfile,
                      env = paste0("LD_LIBRARY_PATH=", shQuote(env[["LD_LIBRARY_PATH"]])))
    stderr <- paste(readLines(errfile, warn = FALSE), collapse = "\n")
  }
  if (status != 0L) {
    text <- trimws(stderr)
    lines <- strsplit(text, "\n", fixed = TRUE)[[1L]]
    said <- grep("error(\\[[a-z_]+\\])?:", lines, value = TRUE)
    message <- if (length(said)) said[[length(said)]] else utils::tail(lines, 5L)
    abort(c(sprintf("`scbridge %s` failed (exit status %d):", what, status), message),
          kind = cli_error_kind(text), stderr = text)
  }
  invisible(TRUE)
}

# The command line prints one line per user error; its wording says which kind it was.
cli_error_kind <- function(text) {
  if (grepl("gene id|gene symbol|genes matched|Ensembl", text, ignore.case = TRUE)) {
    return(c("gene_ids", "input"))
  }
  if (grepl("non-zeros|too large|capacity", text, ignore.case = TRUE)) return(c("capacity", "input"))
  if (grepl("unknown model|no model|not found|no assay|no layer", text, ignore.case = TRUE)) {
    return("not_found")
  }
  "engine"
}

# Engine parameters the command line takes, as its flags (min_gene_fraction = 0.05 becomes
# --min-gene-fraction 0.05); any other parameter is refused, naming these.
cli_param_flags <- c(min_gene_fraction = "--min-gene-fraction", tissue = "--tissue")

cli_engine_flags <- function(params) {
  unknown <- setdiff(names(params), names(cli_param_flags))
  if (length(unknown) || (length(params) && is.null(names(params)))) {
    abort(sprintf(
      "The cli engine passes the engine parameters %s; not %s. Use the python engine for the others.",
      paste(names(cli_param_flags), collapse = " and "),
      paste(unknown, collapse = ", ") %||% "unnamed ones"), kind = "unsupported")
  }
  unlist(lapply(names(params), function(name) {
    value <- params[[name]]
    if (length(value) != 1L || is.na(value)) {
      abort(sprintf("`%s` must be one value.", name), kind = "input")
    }
    c(cli_param_flags[[name]], format(value, scientific = FALSE))
  }), use.names = FALSE)
}

cli_annotate <- function(m, source, model, atlas, chunk_size, params) {
  cli_check()
  check_nnz(m, "cli")
  dir <- tempfile("scbridge")
  dir.create(dir)
  on.exit(unlink(dir, recursive = TRUE), add = TRUE)
  input <- write_cli_input(m, source, dir)
  out <- file.path(dir, "calls.json")
  args <- c("annotate", input, "--out", out, "--model", model, "--no-qc",
            "--chunk-size", format(as.integer(chunk_size), scientific = FALSE), "--quiet")
  if (!is.null(atlas)) args <- c(args, "--atlas", atlas)
  args <- c(args, cli_engine_flags(params))
  run_cli(args, "annotate")
  body <- jsonlite::parse_json(paste(readLines(out, warn = FALSE), collapse = "\n"),
                               simplifyVector = FALSE)
  calls <- calls_from_records(body$calls, cells = NULL)
  if (!identical(calls$cell, colnames(m))) {
    abort("`scbridge annotate` returned calls for other cells than it was given.", kind = "engine")
  }
  calls
}

# A calls data.frame from the JSON contract's `calls` array as jsonlite::parse_json() gives it
# (a list of records, unsimplified: several times faster than fromJSON()'s simplification for
# many cells). `cells`: the ids of the cells sent, for replies without a `cell` field.
calls_from_records <- function(records, cells = NULL) {
  n <- length(records)
  field <- function(name, empty) {
    vapply(records, function(r) {
      v <- r[[name]]
      if (is.null(v)) empty else as.vector(v, typeof(empty))
    }, empty)
  }
  cell <- if (is.null(cells)) field("cell", NA_character_) else cells
  if (length(cell) != n) {
    abort(sprintf("The engine returned %d calls for %d cells.", n, length(cell)), kind = "engine")
  }
  alternates <- lapply(records, `[[`, "alternates")
  flat <- unlist(alternates, recursive = FALSE)
  markers <- lapply(records, function(r) as.character(unlist(r[["markers"]])))
  extra_names <- setdiff(names(records[[1L]] %||% list()), core_columns)
  extra <- lapply(stats::setNames(extra_names, extra_names), function(name) {
    unlist(lapply(records, function(r) r[[name]] %||% NA))
  })
  new_calls(
    cell = cell, label = field("label", NA_character_),
    ontology_id = field("ontology_id", NA_character_),
    confidence = field("confidence", NA_real_),
    alt_n = lengths(alternates),
    alt_label = vapply(flat, function(a) as.character(a[["label"]]), ""),
    alt_score = vapply(flat, function(a) as.double(a[["score"]] %||% NA_real_), 0),
    marker_n = lengths(markers), marker_gene = unlist(markers) %||% character(0),
    extra = extra)
}

# A calls data.frame from the `calls` array as jsonlite::fromJSON() simplifies it (a
# data.frame with list columns), or from an Arrow reply read as a data.frame.
# `cells`: the ids of the cells sent, for replies that carry no `cell` field (the HTTP reply).
calls_from_json <- function(records, cells = NULL) {
  if (is.null(records) || (is.list(records) && !is.data.frame(records) && !length(records))) {
    records <- data.frame()
  }
  n <- NROW(records)
  column <- function(name, empty) {
    v <- records[[name]]
    if (is.null(v)) return(rep(empty, n))
    if (is.list(v)) v <- vapply(v, function(e) if (is.null(e) || !length(e)) empty else e, empty)
    v
  }
  cell <- if (is.null(cells)) column("cell", NA_character_) else cells
  if (length(cell) != n) {
    abort(sprintf("The engine returned %d calls for %d cells.", n, length(cell)), kind = "engine")
  }
  alternates <- records[["alternates"]] %||% rep(list(NULL), n)
  markers <- records[["markers"]] %||% rep(list(NULL), n)
  alt_label <- lapply(alternates, function(a) if (length(a)) as.character(a[["label"]]) else character(0))
  alt_score <- lapply(alternates, function(a) if (length(a)) as.double(a[["score"]]) else numeric(0))
  marker_gene <- lapply(markers, function(g) as.character(unlist(g)))
  extra_names <- setdiff(names(records), core_columns)
  extra <- lapply(stats::setNames(extra_names, extra_names), function(name) {
    v <- records[[name]]
    if (is.list(v)) v <- unlist(lapply(v, function(e) if (is.null(e)) NA else e))
    v
  })
  new_calls(
    cell = cell, label = column("label", NA_character_),
    ontology_id = as.character(column("ontology_id", NA_character_)),
    confidence = as.double(column("confidence", NA_real_)),
    alt_n = lengths(alt_label), alt_label = unlist(alt_label) %||% character(0),
    alt_score = unlist(alt_score) %||% numeric(0),
    marker_n = lengths(marker_gene), marker_gene = unlist(marker_gene) %||% character(0),
    extra = extra)
}

# The environment for a Python subprocess. R prepends its own library directories (R's lib,
# the system lib directory, Java's) to LD_LIBRARY_PATH; a Python built with a RUNPATH to its
# own libpython (pyenv, conda) would then load the system's libpython of another patch
# release and fail in odd places (e.g. "undefined symbol" importing ssl). Those entries are
# dropped; the system directories are searched by default anyway, after the RUNPATH.
subprocess_env <- function() {
  env <- Sys.getenv()
  paths <- strsplit(env[["LD_LIBRARY_PATH"]] %||% "", ":", fixed = TRUE)[[1L]]
  r_added <- c(R.home("lib"), "/usr/lib/R/lib", Sys.getenv("R_JAVA_LD_LIBRARY_PATH"))
  system_dirs <- "^/(usr/)?lib(64)?(/[a-z0-9_]+-linux-gnu)?/?$"
  keep <- paths[nzchar(paths) & !paths %in% r_added & !grepl(system_dirs, paths) &
                  !grepl("/jvm/.*/lib(/server)?/?$", paths)]
  env[["LD_LIBRARY_PATH"]] <- paste(keep, collapse = ":")
  stats::setNames(as.character(env), names(env))
}

# `scbridge embed` / `scbridge markers` write any table as JSON {"rows": [...], "metadata"}.
cli_rows <- function(path) {
  jsonlite::parse_json(paste(readLines(path, warn = FALSE), collapse = "\n"),
                       simplifyVector = FALSE)$rows
}

cli_embed <- function(m, source, n_components, params) {
  cli_check()
  check_nnz(m, "cli")
  dir <- tempfile("scbridge")
  dir.create(dir)
  on.exit(unlink(dir, recursive = TRUE), add = TRUE)
  input <- write_cli_input(m, source, dir)
  out <- file.path(dir, "embedding.json")
  args <- c("embed", input, "--out", out, "--n-components", as.integer(n_components), "--quiet")
  for (name in intersect(names(params), c("n_top_genes", "seed"))) {
    args <- c(args, paste0("--", gsub("_", "-", name)), as.integer(params[[name]]))
  }
  run_cli(args, "embed")
  rows <- cli_rows(out)
  emb <- do.call(rbind, lapply(rows, function(r) as.double(unlist(r$embedding))))
  dimnames(emb) <- list(vapply(rows, function(r) as.character(r$cell), ""), NULL)
  emb
}

cli_markers <- function(m, source, labels, top_n, method, params) {
  cli_check()
  check_nnz(m, "cli")
  dir <- tempfile("scbridge")
  dir.create(dir)
  on.exit(unlink(dir, recursive = TRUE), add = TRUE)
  input <- write_cli_input(m, source, dir)
  # Cells without a label are left out of the calls file, as the core leaves them out.
  labelled <- !is.na(labels)
  calls_file <- file.path(dir, "labels.csv")
  utils::write.csv(data.frame(cell = colnames(m)[labelled], label = labels[labelled]),
                   calls_file, row.names = FALSE)
  out <- file.path(dir, "markers.json")
  args <- c("rank-markers", input, "--calls", calls_file, "--out", out, "--top-n", as.integer(top_n),
            "--method", method, "--quiet")
  if (!is.null(params$min_cells)) args <- c(args, "--min-cells", as.integer(params$min_cells))
  run_cli(args, "rank-markers")
  rows <- cli_rows(out)
  columns <- unique(unlist(lapply(rows, names)))
  out <- lapply(stats::setNames(columns, columns), function(name) {
    unlist(lapply(rows, function(r) r[[name]] %||% NA))
  })
  as.data.frame(out, stringsAsFactors = FALSE)
}

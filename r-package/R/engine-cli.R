# The cli engine: the `scbridge` command in a subprocess (`scbridge annotate IN --out
# calls.arrow`, and `qc`, `build-reference`, `rank-markers`, `embed`), run in the session's
# `scbridge worker` (one warm process for all the session's commands) where the command has
# it, else in a process of its own.
#
# IN is an Arrow CSR stream (docs/format.md) written straight from the dgCMatrix slots:
# uncompressed, read by the core without starting R (R/arrow.R: the R package nanoarrow or
# arrow where installed, else R/arrow-ipc.R). The tables the command writes come back as
# Arrow IPC files, read in base R (R/arrow-ipc.R): no JSON to print or parse. With
# options(scbridge.cli_transport = "rds") the matrix goes as an uncompressed .rds instead,
# which the core reads through rpy2 (a second R inside the subprocess: slower).
#
# What the command prints on stderr is re-raised in R: its one error line `scbridge CMD:
# error[CODE]: message` as the classed error of CODE, its warnings as scbridge_warning_core,
# its INFO log lines (with verbose) as messages.

cli_engine <- function() {
  new_engine(
    "cli", "the scbridge command line in a subprocess",
    status = function(endpoint = NULL) cli_status(),
    setup = paste(
      "cli: put the `scbridge` command (from the scbridge Python package) on the PATH, or name",
      "it with options(scbridge.cli = \"/path/to/bin/scbridge\") or Sys.setenv(SCBRIDGE_CLI =",
      "...)."),
    where = function(endpoint = NULL) cli_path(),
    annotate = cli_annotate, qc = cli_qc, build_reference = cli_build_reference,
    embed = cli_embed, markers = cli_markers)
}

cli_path <- function() {
  path <- getOption("scbridge.cli") %||% Sys.getenv("SCBRIDGE_CLI")
  if (!nzchar(path)) path <- unname(Sys.which("scbridge"))
  python <- Sys.getenv("SCBRIDGE_PYTHON")
  if (!nzchar(path) && nzchar(python)) {
    beside <- file.path(dirname(python), "scbridge")
    if (file.exists(beside)) path <- beside
  }
  path
}

cli_status <- function() {
  path <- cli_path()
  if (!nzchar(path)) {
    return("no `scbridge` command on the PATH, and neither options(scbridge.cli) nor SCBRIDGE_CLI is set")
  }
  if (!file.exists(path)) return(sprintf("the scbridge command '%s' does not exist", path))
  if (identical(cli_transport(), "rds") && !requireNamespace("jsonlite", quietly = TRUE)) {
    return("the R package jsonlite is not installed")
  }
  NULL
}

cli_check <- function() {
  why <- cli_status()
  if (!is.null(why)) engine_unavailable("cli", why, "annotate")
  cli_path()
}

# Which file format carries the matrix to the subprocess: "arrow" (default) or "rds".
cli_transport <- function() {
  check_choice(getOption("scbridge.cli_transport", "auto"), c("auto", "arrow", "rds"),
               "options(scbridge.cli_transport)")
  wanted <- getOption("scbridge.cli_transport", "auto")
  if (identical(wanted, "auto")) "arrow" else wanted
}

# The input file: an Arrow CSR stream (with the utf8 columns `obs`, e.g. labels), or .rds.
write_cli_input <- function(m, source, dir, value_kind = NULL, obs = list()) {
  if (cli_transport() == "arrow") {
    path <- write_arrow_csr(m, source, file.path(dir, "matrix.arrow"), value_kind = value_kind,
                            obs = obs)
  } else {
    if (length(obs)) {
      abort("Cell labels travel to the cli engine in Arrow files only; unset options(scbridge.cli_transport).",
            code = "unsupported")
    }
    path <- file.path(dir, "matrix.rds")
    # Uncompressed: the core's readRDS of it is then a plain read.
    saveRDS(m, path, compress = FALSE)
  }
  inform("cli: the matrix goes to the subprocess as ", basename(path))
  path
}

# Runs `scbridge CMD args` and re-raises its stderr in R (see above): in the session's
# `scbridge worker` where it can, else in a process of its own.
run_cli <- function(command, args) {
  exe <- cli_check()
  args <- c(if (is_verbose()) "-v", command, args)
  done <- cli_worker_run(exe, args) %||% cli_run_once(exe, args)
  said <- cli_stderr_records(done$stderr, command)
  signal_core_conditions(Filter(function(r) r$level != "error", said))
  if (done$status != 0L) {
    errors <- Filter(function(r) r$level == "error", said)
    if (length(errors)) {
      last <- errors[[length(errors)]]
      abort(sprintf("`scbridge %s` failed: %s", command, last$message), code = last$code,
            stderr = done$stderr)
    }
    tail <- utils::tail(strsplit(trimws(done$stderr), "\n", fixed = TRUE)[[1L]], 5L)
    abort(c(sprintf("`scbridge %s` failed (exit status %d):", command, done$status), tail),
          code = "engine_failure", stderr = done$stderr)
  }
  invisible(TRUE)
}

# One command in a process of its own: list(status, stderr).
cli_run_once <- function(exe, args) {
  env <- subprocess_env()
  if (requireNamespace("processx", quietly = TRUE)) {
    res <- processx::run(exe, args, error_on_status = FALSE, env = env)
    return(list(status = res$status, stderr = res$stderr))
  }
  errfile <- tempfile()
  on.exit(unlink(errfile), add = TRUE)
  status <- system2(exe, shQuote(args), stdout = FALSE, stderr = errfile,
                    env = paste0("LD_LIBRARY_PATH=", shQuote(env[["LD_LIBRARY_PATH"]])))
  list(status = status, stderr = paste(readLines(errfile, warn = FALSE), collapse = "\n"))
}

# -- the session's worker ----------------------------------------------------------------
# `scbridge worker` runs the commands it reads on stdin (one JSON array of arguments per line)
# in one process and answers each with one JSON line {status, stdout, stderr}: the Python
# start, the imports and the engines built are paid for once per session instead of once per
# command (about a second each). options(scbridge.cli_worker = FALSE) turns it off; a
# `scbridge` without the command, or without processx / jsonlite here, runs each command on
# its own. The worker is started again when the command or the environment changed, and
# stopped when a reply does not come (an interrupt, a crash): nothing is read out of turn.
cli_worker_wanted <- function() {
  isTRUE(getOption("scbridge.cli_worker", TRUE)) &&
    requireNamespace("processx", quietly = TRUE) && requireNamespace("jsonlite", quietly = TRUE)
}

# list(status, stderr) of the command run in the worker, or NULL when there is no worker.
cli_worker_run <- function(exe, args) {
  if (!cli_worker_wanted()) return(NULL)
  worker <- cli_worker(exe)
  if (is.null(worker)) return(NULL)
  reply <- cli_worker_ask(worker, args)
  if (is.null(reply)) {
    stderr <- tryCatch(worker$process$read_all_error(), error = function(e) "")
    cli_worker_stop()
    abort(c("The `scbridge worker` process stopped without answering.",
            utils::tail(strsplit(trimws(stderr), "\n", fixed = TRUE)[[1L]], 5L),
            "The next call starts a new one; options(scbridge.cli_worker = FALSE) runs each command on its own."),
          code = "engine_failure", stderr = stderr)
  }
  list(status = as.integer(reply$status), stderr = as.character(reply$stderr %||% ""))
}

cli_worker <- function(exe) {
  env <- subprocess_env()
  key <- paste(c(exe, env), collapse = "\r")
  worker <- the$cli_worker
  if (!is.null(worker) && identical(worker$key, key) && worker$process$is_alive()) return(worker)
  cli_worker_stop()
  if (key %in% the$cli_worker_refused) return(NULL)
  process <- processx::process$new(exe, "worker", stdin = "|", stdout = "|", stderr = "|",
                                   env = env, cleanup = TRUE)
  worker <- list(key = key, process = process)
  # A scbridge without the worker command exits at once with a usage error.
  hello <- cli_worker_ask(worker, "--version")
  if (is.null(hello) || !identical(as.integer(hello$status), 0L)) {
    try(process$kill(), silent = TRUE)
    the$cli_worker_refused <- c(the$cli_worker_refused, key)
    return(NULL)
  }
  the$cli_worker <- worker
  worker
}

cli_worker_stop <- function() {
  if (!is.null(the$cli_worker)) try(the$cli_worker$process$kill(), silent = TRUE)
  the$cli_worker <- NULL
}

# Sends one command; its reply, or NULL when the worker ended first. A reply not read (an
# interrupt while waiting) stops the worker, so no later call reads it.
cli_worker_ask <- function(worker, args) {
  process <- worker$process
  answered <- FALSE
  on.exit(if (!answered) {
    try(process$kill(), silent = TRUE)
    if (identical(the$cli_worker$key, worker$key)) the$cli_worker <- NULL
  }, add = TRUE)
  sent <- tryCatch({
    process$write_input(paste0(json_strings(args), "\n"))
    TRUE
  }, error = function(e) FALSE)  # it ended: the pipe is closed
  if (!sent) return(NULL)
  buffer <- ""
  repeat {
    process$poll_io(1000L)
    buffer <- paste0(buffer, process$read_output())
    if (grepl("\n", buffer, fixed = TRUE)) break
    if (!process$is_alive()) {
      buffer <- paste0(buffer, process$read_all_output())
      if (!grepl("\n", buffer, fixed = TRUE)) return(NULL)
      break
    }
  }
  answered <- TRUE
  jsonlite::parse_json(sub("\n.*$", "", buffer))
}

# The lines the command printed on stderr as records: list(level, message, code), continuation
# lines joined to the record before them. Formats: `scbridge CMD: error[CODE]: msg`,
# `scbridge CMD: warning: msg` (Python warnings), `scbridge: LEVEL: msg` (log records).
cli_stderr_records <- function(stderr, command) {
  lines <- strsplit(stderr, "\n", fixed = TRUE)[[1L]]
  records <- list()
  error_prefix <- sprintf("scbridge %s: error[", command)
  warning_prefix <- sprintf("scbridge %s: warning: ", command)
  for (line in lines) {
    record <- if (startsWith(line, error_prefix)) {
      list(level = "error", code = cli_error_code(line),
           message = sub("^[^]]*\\]: ", "", line))
    } else if (startsWith(line, warning_prefix)) {
      list(level = "warning", message = substring(line, nchar(warning_prefix) + 1L))
    } else if (grepl("^scbridge: (WARNING|ERROR|CRITICAL): ", line)) {
      list(level = "warning", message = sub("^scbridge: [A-Z]+: ", "", line))
    } else if (grepl("^scbridge: (INFO|DEBUG): ", line)) {
      list(level = "info", message = sub("^scbridge: [A-Z]+: ", "", line))
    } else {
      NULL
    }
    if (!is.null(record)) {
      records[[length(records) + 1L]] <- record
    } else if (length(records) && nzchar(trimws(line))) {
      k <- length(records)
      records[[k]]$message <- paste(records[[k]]$message, line, sep = "\n")
    }
  }
  records
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

# A scratch directory for one command, removed when the calling function exits.
cli_workdir <- function(envir = parent.frame()) {
  dir <- tempfile("scbridge")
  dir.create(dir)
  do.call(on.exit, list(substitute(unlink(d, recursive = TRUE), list(d = dir)), add = TRUE),
          envir = envir)
  dir
}

# Engine parameters the command line takes, as its flags (min_gene_fraction = 0.05 becomes
# --min-gene-fraction 0.05); any other parameter is refused, naming these.
cli_param_flags <- c(min_gene_fraction = "--min-gene-fraction", tissue = "--tissue")

cli_engine_flags <- function(params) {
  unknown <- setdiff(names(params), names(cli_param_flags))
  if (length(unknown)) {
    abort(sprintf(
      "The cli engine passes the engine parameters %s; not %s. Use the python engine for the others.",
      paste(names(cli_param_flags), collapse = " and "), paste(unknown, collapse = ", ")),
      code = "unsupported")
  }
  unlist(lapply(names(params), function(name) {
    c(cli_param_flags[[name]], format(params[[name]], scientific = FALSE))
  }), use.names = FALSE)
}

cli_annotate <- function(m, source, request) {
  cli_check()
  check_nnz(m, "cli")
  dir <- cli_workdir()
  input <- write_cli_input(m, source, dir, request$value_kind)
  out <- file.path(dir, "calls.arrow")
  args <- c(input, "--out", out, "--model", request$model, "--no-qc", "--quiet",
            "--chunk-size", format(as.integer(request$chunk_size), scientific = FALSE))
  if (!is.null(request$atlas)) args <- c(args, "--atlas", request$atlas)
  if (!is.null(request$value_kind)) args <- c(args, "--value-kind", request$value_kind)
  args <- c(args, cli_engine_flags(request$params))
  run_cli("annotate", args)
  calls_from_ipc(read_ipc(out, "The calls `scbridge annotate` wrote"), colnames(m))
}

cli_qc <- function(m, source, request) {
  cli_check()
  dir <- cli_workdir()
  input <- write_cli_input(m, source, dir, request$value_kind)
  out <- file.path(dir, "qc.arrow")
  doublets <- if (isTRUE(request$doublets)) "builtin" else if (isFALSE(request$doublets)) {
    "none"
  } else {
    request$doublets
  }
  args <- c(input, "--out", out, "--doublets", doublets, "--quiet")
  for (name in names(request$thresholds)) {
    args <- c(args, paste0("--", gsub("_", "-", name)),
              format(request$thresholds[[name]], scientific = FALSE))
  }
  run_cli("qc", args)
  table <- read_ipc(out, "The QC table `scbridge qc` wrote")
  columns <- unclass(table)[setdiff(names(table), "cell")]
  qc_table(colnames(m), columns, attr(table, "metadata")[["scbridge.qc_thresholds"]])
}

# build_reference() parameters and their flags.
cli_reference_flags <- c(genes_per_label = "--genes-per-label",
                         regularization = "--regularization",
                         min_cells_per_label = "--min-cells-per-label",
                         max_cells_per_label = "--max-cells-per-label", seed = "--seed")

cli_build_reference <- function(m, source, request) {
  cli_check()
  dir <- cli_workdir()
  obs <- stats::setNames(list(request$labels), request$label_column)
  input <- write_cli_input(m, source, dir, request$value_kind, obs = obs)
  args <- c(input, "--label-column", request$label_column, "--out", request$file, "--quiet")
  params <- request$params
  unknown <- setdiff(names(params), c(names(cli_reference_flags), "calibrate"))
  if (length(unknown)) {
    abort(sprintf("The cli engine's build-reference does not take %s.",
                  paste(unknown, collapse = ", ")), code = "unknown_parameter")
  }
  for (name in intersect(names(params), names(cli_reference_flags))) {
    args <- c(args, cli_reference_flags[[name]], format(params[[name]], scientific = FALSE))
  }
  if (isFALSE(params$calibrate)) args <- c(args, "--no-calibrate")
  run_cli("build-reference", args)
  NULL
}

cli_embed <- function(m, source, request) {
  cli_check()
  check_nnz(m, "cli")
  dir <- cli_workdir()
  input <- write_cli_input(m, source, dir, request$value_kind)
  out <- file.path(dir, "embedding.arrow")
  args <- c(input, "--out", out, "--n-components", as.integer(request$n_components), "--quiet")
  for (name in intersect(names(request$params), c("n_top_genes", "seed"))) {
    args <- c(args, paste0("--", gsub("_", "-", name)), as.integer(request$params[[name]]))
  }
  run_cli("embed", args)
  table <- read_ipc(out, "The embedding `scbridge embed` wrote")
  column <- table$embedding
  width <- column$size %||% (length(column$values) / length(table$cell))
  values <- if (is.null(column$size)) ipc_list_parts(column)$values else column$values
  matrix(as.double(values), nrow = length(table$cell), ncol = width, byrow = TRUE,
         dimnames = list(table$cell, NULL))
}

cli_markers <- function(m, source, request) {
  cli_check()
  check_nnz(m, "cli")
  dir <- cli_workdir()
  input <- write_cli_input(m, source, dir, request$value_kind)
  # Cells without a label are left out of the calls file, as the core leaves them out.
  labels <- request$labels
  labelled <- !is.na(labels)
  calls_file <- file.path(dir, "labels.csv")
  utils::write.csv(data.frame(cell = colnames(m)[labelled], label = labels[labelled]),
                   calls_file, row.names = FALSE)
  out <- file.path(dir, "markers.arrow")
  args <- c(input, "--calls", calls_file, "--out", out, "--top-n", as.integer(request$top_n),
            "--method", request$method, "--quiet")
  if (!is.null(request$params$min_cells)) {
    args <- c(args, "--min-cells", as.integer(request$params$min_cells))
  }
  run_cli("rank-markers", args)
  ipc_data_frame(read_ipc(out, "The markers `scbridge rank-markers` wrote"))
}

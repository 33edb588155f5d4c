# The http engine: POST /v1/singlecell/annotate of `scbridge serve`, or of any endpoint of the
# same contract, with the public tutorial's JSON body (genes, matrix {indptr, indices, data,
# shape} of the cells x genes CSR, model, reference_atlas) and a Bearer key. The CSR arrays are
# the dgCMatrix slots. Cells go in chunks of `chunk_size`, in order; 429 and 5xx replies are
# retried with exponential backoff. With the R package nanoarrow or arrow installed, the body
# is an Arrow CSR stream instead (about 4x smaller, no number formatting), and so is the reply
# with arrow (R/arrow.R).
#
# A refusal is the classed error of the `code` in the server's error body (R/codes.R), with
# its message and hint, plus the class scbridge_error_remote.

http_engine <- function() {
  new_engine(
    "http", "an annotation service over HTTP",
    status = http_status,
    setup = paste(
      "http: start a server with `scbridge serve --api-keys keys.txt` (or use any endpoint of the",
      "Cell Atlas contract) and pass endpoint = \"http://host:port\" (or",
      "options(scbridge.endpoint = ...)) and api_key = ... (or Sys.setenv(SCBRIDGE_API_KEY = ...));",
      "needs the R packages httr2 and jsonlite."),
    where = function(endpoint = NULL) endpoint,
    annotate = http_annotate, embed = http_embed, markers = http_markers)
}

http_status <- function(endpoint) {
  for (package in c("httr2", "jsonlite")) {
    if (!requireNamespace(package, quietly = TRUE)) {
      return(sprintf("the R package %s is not installed", package))
    }
  }
  if (is.null(endpoint) || !nzchar(endpoint)) {
    return("no endpoint given (endpoint = , options(scbridge.endpoint) or SCBRIDGE_ENDPOINT)")
  }
  NULL
}

# Engine parameters other than `tissue` and `min_gene_fraction` (which the Arrow variant takes
# in its query string) travel in the JSON body only, so they make "auto" pick JSON.
http_transport <- function(params = list()) {
  wanted <- getOption("scbridge.http_transport", "auto")
  json_only <- setdiff(names(params), http_query_params)
  if (identical(wanted, "auto")) {
    return(if (is.null(arrow_backend()) || length(json_only)) "json" else "arrow")
  }
  wanted <- check_choice(wanted, c("auto", "arrow", "json"), "options(scbridge.http_transport)")
  if (wanted == "arrow" && is.null(arrow_backend())) {
    need_arrow_backend("The Arrow transport (options(scbridge.http_transport = \"arrow\"))")
  }
  if (wanted == "arrow" && length(json_only)) {
    abort(paste("Engine parameters other than `tissue` and `min_gene_fraction` travel in the",
                "JSON body only; use",
                "options(scbridge.http_transport = \"json\") or \"auto\" to pass them."),
          code = "unsupported")
  }
  wanted
}

http_query_params <- c("tissue", "min_gene_fraction")

# Numbers exactly as the server must see them: counts as "3.0" (floats, like a Python client
# sending a float64 CSR), other values with 17 significant digits (jsonlite stops at 15).
json_numbers <- function(x) {
  if (!length(x)) return("[]")
  if (all(x == round(x)) && max(abs(x)) < 1e15) {
    return(as.character(jsonlite::toJSON(x, digits = NA, always_decimal = TRUE)))
  }
  paste0("[", paste(sprintf("%.17g", x), collapse = ","), "]")
}

json_ints <- function(x) {
  if (!length(x)) return("[]")
  as.character(jsonlite::toJSON(as.integer(x)))
}

json_body <- function(block, genes_json, model, atlas, extra = list()) {
  fields <- c(list(model = model, reference_atlas = atlas), extra)
  tail <- vapply(names(fields), function(k) {
    paste0("\"", k, "\":", jsonlite::toJSON(fields[[k]], auto_unbox = TRUE, null = "null", na = "null",
                                              digits = NA))
  }, character(1))
  paste0("{\"genes\":", genes_json,
         ",\"matrix\":{\"indptr\":", json_ints(block$indptr),
         ",\"indices\":", json_ints(block$indices),
         ",\"data\":", json_numbers(block$data),
         ",\"shape\":[", length(block$cells), ",", block$n_genes, "]},",
         paste(tail, collapse = ","), "}")
}

max_request_bytes <- function() getOption("scbridge.max_request_bytes", .Machine$integer.max)

# Refuse, before building it, a body that R (one string < 2^31 bytes) or the configured limit
# cannot hold, and say which chunk_size would fit. `per_nonzero`: about 30 bytes in JSON, 12
# in Arrow (an int32 index and a float64 value).
check_body_size <- function(nnz, n_cells, n_genes_bytes, per_nonzero = 30) {
  estimate <- per_nonzero * nnz + 12 * n_cells + n_genes_bytes + 200
  limit <- max_request_bytes()
  if (estimate > limit) {
    fit <- floor(n_cells * (limit - n_genes_bytes - 200) / (estimate - n_genes_bytes - 200))
    advice <- if (fit >= 1) {
      sprintf("use chunk_size = %d or less", as.integer(fit))
    } else {
      "a single cell exceeds it; raise options(scbridge.max_request_bytes) or use the python or cli engine"
    }
    abort(sprintf(
      "A request of %s cells with %s non-zeros would need about %s bytes, more than the http engine can carry (%s bytes); %s.",
      format(n_cells, big.mark = ","), format(nnz, big.mark = ","),
      format(estimate, big.mark = ",", scientific = FALSE),
      format(limit, big.mark = ",", scientific = FALSE), advice), code = "too_large")
  }
}

http_request <- function(endpoint, path, api_key, timeout, retries) {
  req <- httr2::request(sub("/+$", "", endpoint))
  req <- httr2::req_url_path_append(req, path)
  if (!is.null(api_key) && nzchar(api_key)) req <- httr2::req_auth_bearer_token(req, api_key)
  req <- httr2::req_user_agent(req, "scbridge-r")
  req <- httr2::req_timeout(req, timeout)
  req <- httr2::req_retry(req, max_tries = retries,
                          is_transient = function(resp) httr2::resp_status(resp) %in% c(429, 500, 502, 503, 504),
                          backoff = function(i) min(30, 0.25 * 2^(i - 1)))
  # Status codes are turned into classed errors here, with the server's message and hint.
  httr2::req_error(req, is_error = function(resp) FALSE)
}

http_perform <- function(req, endpoint) {
  resp <- tryCatch(httr2::req_perform(req), error = function(e) {
    abort(c(sprintf("Could not reach the annotation endpoint %s.", endpoint),
            "Check the URL and that the server is running (scbridge serve --host ... --port ...)."),
          code = "remote_unreachable", parent = e)
  })
  status <- httr2::resp_status(resp)
  if (status >= 400) http_fail(resp, status, endpoint)
  resp
}

# A refusal as the classed error of the server's code (else of its HTTP status).
http_fail <- function(resp, status, endpoint) {
  body <- tryCatch(jsonlite::fromJSON(httr2::resp_body_string(resp)), error = function(e) NULL)
  err <- if (is.list(body) && is.list(body$error)) body$error else list()
  code <- err$code %||% ""
  if (!is.character(code) || !nzchar(code)) {
    code <- if (status %in% c(401L, 403L)) "auth" else if (status == 413L) "too_large" else
      "remote_error"
  }
  said <- err$message %||% (httr2::resp_status_desc(resp) %||% "")
  advice <- if (code_family(code, remote = TRUE) == "auth") {
    "Check the API key (api_key = , or Sys.setenv(SCBRIDGE_API_KEY = ...))."
  }
  abort(c(sprintf("The annotation endpoint %s answered HTTP %d (%s): %s", endpoint, status, code,
                  said), advice),
        code = code, remote = TRUE, hint = err$hint, status = status)
}

http_timeout <- function() getOption("scbridge.http_timeout", 300)

# Tries per request: 429 / 5xx replies and failed connections are retried with backoff.
http_retries <- function() getOption("scbridge.http_retries", 5L)

# Chunks in flight at once (like the Python client's max_concurrency).
http_concurrency <- function() max(1L, as.integer(getOption("scbridge.http_concurrency", 4L)))

http_annotate <- function(m, source, request) {
  model <- request$model
  atlas <- request$atlas
  chunk_size <- request$chunk_size
  params <- request$params
  endpoint <- request$endpoint
  api_key <- request$api_key
  timeout <- http_timeout()
  retries <- http_retries()
  transport <- http_transport(params)
  check_json_value_kind(m, request$value_kind, transport)
  n <- ncol(m)
  genes_json <- as.character(jsonlite::toJSON(rownames(m)))
  starts <- chunk_starts(n, chunk_size)
  if (length(starts) > 1L && is.null(params$tissue) && identical(model, "markers")) {
    # tissue = "auto" over several requests: one context for all of them.
    params$tissue <- http_run_tissue(m, source, request, transport, genes_json)
  }
  request_for <- function(k) {
    from <- starts[[k]]
    to <- min(from + chunk_size - 1L, n)
    req <- http_request(endpoint, "v1/singlecell/annotate", api_key, timeout, retries)
    if (transport == "arrow") {
      check_body_size(m@p[[to + 1L]] - m@p[[from]], to - from + 1L,
                      nchar(genes_json, "bytes"), per_nonzero = 12)
      # One chunk: the matrix itself (its slots become the batch without a copy).
      block_matrix <- if (from == 1L && to == n) m else m[, from:to, drop = FALSE]
      req <- httr2::req_url_query(req, model = model, reference_atlas = atlas,
                                  tissue = params$tissue,
                                  min_gene_fraction = params$min_gene_fraction)
      req <- httr2::req_headers(req, Accept = arrow_reply_type())
      req <- httr2::req_body_raw(req, arrow_csr_stream(block_matrix, source, request$value_kind),
                                 type = arrow_media_type)
      return(list(req = req, cells = colnames(block_matrix)))
    }
    block <- csr_block(m, from, to)
    block$n_genes <- nrow(m)
    check_body_size(length(block$data), length(block$cells), nchar(genes_json, "bytes"))
    req <- httr2::req_body_raw(req, json_body(block, genes_json, model, atlas, params),
                               type = "application/json")
    list(req = req, cells = block$cells)
  }
  parts <- vector("list", length(starts))
  tick <- progress_bar("annotating over http", length(starts))
  # Batches of `http_concurrency()` chunks go out together (bodies of one batch in memory at
  # once); a chunk whose concurrent try failed for any reason is sent again on its own, with
  # the retries, backoff and classed errors of http_perform().
  batches <- split(seq_along(starts), ceiling(seq_along(starts) / http_concurrency()))
  for (batch in batches) {
    pending <- lapply(batch, request_for)
    replies <- if (length(pending) > 1L) {
      httr2::multi_req_perform(lapply(pending, `[[`, "req"))
    } else {
      list(NULL)
    }
    for (j in seq_along(batch)) {
      resp <- replies[[j]]
      ok <- inherits(resp, "httr2_response") && httr2::resp_status(resp) < 400
      if (!ok) resp <- http_perform(pending[[j]]$req, endpoint)
      parts[[batch[[j]]]] <- http_calls(resp, pending[[j]]$cells, transport, endpoint)
    }
    tick(batch[[length(batch)]])
  }
  if (!length(parts)) return(calls_from_json(NULL, cells = character(0)))
  out <- do.call(rbind, parts)
  rownames(out) <- NULL
  out
}

# About `n` of `total` cells as `windows` evenly spaced runs, 0-based c(start, stop) pairs:
# bridge.numerics.spread_runs() in integer arithmetic, so both pick the same cells.
spread_runs <- function(total, n = 2000, windows = 8) {
  if (total <= n) return(list(c(0, total)))
  width <- max(1, n %/% windows)
  starts <- ((seq_len(windows) - 1) * (as.numeric(total) - width)) %/% (windows - 1)
  lapply(starts, function(s) c(s, s + width))
}

# The tissue context for every chunk of a run with tissue = "auto". Each request on its own
# would have its context inferred from its own cells, so the calls would depend on
# chunk_size: the service is first sent the cells the embedded engine samples for its
# inference (spread_runs() over all cells), and the context it infers from them is then asked
# for by name (as the Python client does). NULL for a reply without a tissue context.
http_run_tissue <- function(m, source, request, transport, genes_json) {
  cells <- unlist(lapply(spread_runs(ncol(m)), function(r) seq.int(r[[1]] + 1, r[[2]])))
  sample <- m[, cells, drop = FALSE]
  req <- http_request(request$endpoint, "v1/singlecell/annotate", request$api_key,
                      http_timeout(), http_retries())
  req <- httr2::req_headers(req, Accept = "application/json")
  if (transport == "arrow") {
    req <- httr2::req_url_query(req, model = request$model, reference_atlas = request$atlas,
                                min_gene_fraction = request$params$min_gene_fraction)
    req <- httr2::req_body_raw(req, arrow_csr_stream(sample, source, request$value_kind),
                               type = arrow_media_type)
  } else {
    block <- csr_block(sample, 1L, ncol(sample))
    block$n_genes <- nrow(sample)
    req <- httr2::req_body_raw(req, json_body(block, genes_json, request$model, request$atlas,
                                              request$params),
                               type = "application/json")
  }
  reply <- jsonlite::parse_json(httr2::resp_body_string(http_perform(req, request$endpoint)))
  context <- tryCatch(jsonlite::parse_json(reply$metadata[["scbridge.tissue"]]),
                      error = function(e) NULL)
  if (!is.list(context)) return(NULL)
  # inferred: no tissue (the sample asked for "auto"); every request expects the same
  if (identical(context$source, "none")) return("unknown")
  tissues <- unlist(context$tissues)
  if (!identical(context$source, "inferred") || !length(tissues)) return(NULL)
  paste(tissues, collapse = ";")
}

# The reply is read as what it is (Content-Type), whatever was asked for.
http_calls <- function(resp, cells, transport, endpoint) {
  if (identical(httr2::resp_content_type(resp), arrow_media_type)) {
    return(calls_from_json(arrow_calls_records(httr2::resp_body_raw(resp)), cells = cells))
  }
  reply <- jsonlite::parse_json(httr2::resp_body_string(resp), simplifyVector = FALSE)
  if (!is.list(reply) || !is.list(reply$calls)) {
    abort(sprintf("The endpoint %s replied without a 'calls' list; is it an annotate URL of the Cell Atlas contract?",
                  endpoint), code = "remote_reply", remote = TRUE)
  }
  records <- lapply(reply$calls, function(r) {
    r$cell <- NULL
    r
  })
  calls_from_records(records, cells = cells)
}

http_embed <- function(m, source, request) {
  n_components <- request$n_components
  params <- request$params
  endpoint <- request$endpoint
  api_key <- request$api_key
  timeout <- http_timeout()
  retries <- http_retries()
  block <- csr_block(m, 1L, ncol(m))
  block$n_genes <- nrow(m)
  genes_json <- as.character(jsonlite::toJSON(rownames(m)))
  check_body_size(length(block$data), ncol(m), nchar(genes_json, "bytes"))
  fields <- c(list(n_components = as.integer(n_components)), params)
  body <- json_body(block, genes_json, NULL, NULL, fields)
  req <- http_request(endpoint, "v1/singlecell/embed", api_key, timeout, retries)
  req <- httr2::req_body_raw(req, body, type = "application/json")
  reply <- jsonlite::fromJSON(httr2::resp_body_string(http_perform(req, endpoint)))
  emb <- reply$embeddings
  if (!is.matrix(emb)) emb <- matrix(unlist(emb), nrow = ncol(m), byrow = TRUE)
  storage.mode(emb) <- "double"
  dimnames(emb) <- list(colnames(m), NULL)
  emb
}

http_markers <- function(m, source, request) {
  labels <- request$labels
  top_n <- request$top_n
  method <- request$method
  params <- request$params
  endpoint <- request$endpoint
  api_key <- request$api_key
  timeout <- http_timeout()
  retries <- http_retries()
  block <- csr_block(m, 1L, ncol(m))
  block$n_genes <- nrow(m)
  genes_json <- as.character(jsonlite::toJSON(rownames(m)))
  check_body_size(length(block$data), ncol(m), nchar(genes_json, "bytes"))
  if (!is.null(params$min_cells) && params$min_cells != 3L) {
    abort("The http engine's markers endpoint keeps labels of 3 cells or more; use the python or cli engine for another min_cells.",
          code = "unsupported")
  }
  params$min_cells <- NULL
  fields <- c(list(labels = as.list(as.character(labels)), top_n = as.integer(top_n),
                   method = method), params)
  body <- json_body(block, genes_json, NULL, NULL, fields)
  req <- http_request(endpoint, "v1/singlecell/markers", api_key, timeout, retries)
  req <- httr2::req_body_raw(req, body, type = "application/json")
  reply <- jsonlite::fromJSON(httr2::resp_body_string(http_perform(req, endpoint)))
  out <- as.data.frame(reply$markers, stringsAsFactors = FALSE)
  rownames(out) <- NULL
  out
}

# The JSON contract carries no value kind: the service tells it from the values. A value kind
# given that it would not tell is refused rather than silently ignored.
check_json_value_kind <- function(m, value_kind, transport) {
  if (is.null(value_kind) || transport != "json") return(invisible(TRUE))
  if (!identical(value_kind, detect_value_kind(m@x))) {
    abort(c(sprintf(paste("value_kind = \"%s\" cannot travel in the http engine's JSON body, and",
                          "the service would take these values for \"%s\"."), value_kind,
                    detect_value_kind(m@x)),
            "Use the python or cli engine, or install the R package nanoarrow (Arrow bodies carry it)."),
          code = "unsupported")
  }
  invisible(TRUE)
}

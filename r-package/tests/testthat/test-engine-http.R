# The http engine against a real `scbridge serve` on loopback (and a flaky stand-in endpoint).

test_that("an unreachable endpoint is a classed error naming the endpoint", {
  skip_if_not_installed("httr2")
  withr::local_options(scbridge.http_retries = 2L)
  m <- plain(sim_counts())
  err <- expect_error(annotate_cells(m, engine = "http", endpoint = "http://127.0.0.1:9"),
                      class = "scbridge_error_remote_unreachable")
  expect_s3_class(err, "scbridge_error_unreachable")
  expect_match(conditionMessage(err), "Could not reach the annotation endpoint http://127.0.0.1:9",
               fixed = TRUE)
})

test_that("a bad API key is a classed error that says to check the key", {
  server <- test_server()
  m <- plain(sim_counts())
  err <- expect_error(annotate_cells(m, engine = "http", endpoint = server$endpoint,
                                     api_key = "wrong"), class = "scbridge_error_invalid_api_key")
  expect_s3_class(err, c("scbridge_error_auth", "scbridge_error_remote"))
  expect_identical(err$status, 401L)
  expect_snapshot(annotate_cells(m, engine = "http", endpoint = server$endpoint, api_key = "wrong"),
                  error = TRUE, transform = function(x) gsub(server$endpoint, "<endpoint>", x,
                                                             fixed = TRUE))
  expect_error(annotate_cells(m, engine = "http", endpoint = server$endpoint, api_key = ""),
               class = "scbridge_error_missing_api_key")
})

test_that("a request body beyond what the http engine carries is refused with a chunk_size that fits", {
  m <- plain(sim_counts())
  withr::local_options(scbridge.max_request_bytes = 20000)
  err <- expect_error(annotate_cells(m, engine = "http", endpoint = "http://127.0.0.1:9"),
                      class = "scbridge_error_capacity")
  expect_match(conditionMessage(err), "use chunk_size = [0-9]+ or less")
  withr::local_options(scbridge.max_request_bytes = 100)
  err <- expect_error(annotate_cells(m, engine = "http", endpoint = "http://127.0.0.1:9"),
                      class = "scbridge_error_too_large")
  expect_match(conditionMessage(err), "a single cell exceeds it", fixed = TRUE)
})

test_that("429 and 5xx replies are retried with backoff, chunks stay in order", {
  skip_if_not_installed("processx")
  py <- test_python_path()
  if (!nzchar(py)) skip_engine("http retry test: no Python (set SCBRIDGE_PYTHON)")
  # The stand-in speaks the JSON contract only, whatever Arrow backend is installed.
  withr::local_options(scbridge.http_transport = "json")
  for (status in c(503L, 429L)) {
    log <- tempfile()
    port <- sample(45001:55000, 1L)
    proc <- processx::process$new(py, c(test_path("fixtures", "flaky_server.py"), port, 2L,
                                        status, log), cleanup = TRUE,
                                  env = scbridge:::subprocess_env())
    withr::defer(proc$kill())
    endpoint <- sprintf("http://127.0.0.1:%d", port)
    for (i in 1:100) {
      up <- tryCatch(httr2::resp_status(httr2::req_perform(httr2::request(endpoint))) == 200,
                     error = function(e) FALSE)
      if (up) break
      Sys.sleep(0.1)
    }
    m <- plain(sim_counts())
    out <- annotate_cells(m, engine = "http", endpoint = endpoint, api_key = "k", chunk_size = 50)
    expect_identical(out$cell, colnames(m))
    expect_true(all(out$label == "T cell"))
    expect_identical(out$alternates[[120]], c(`NK cell` = 0.25))
    # The first request is the tissue inference's sample (tissue = "auto", three chunks),
    # retried twice; then the three chunks.
    expect_identical(readLines(log),
                     c(as.character(c(status, status)), "200", "200", "200", "200"))
    proc$kill()
  }
})

test_that("a refusal arrives as the classed error of the server's code, with its hint", {
  skip_if_no_python()
  server <- test_server()
  m <- plain(sim_counts())
  http <- function(...) {
    annotate_cells(m, engine = "http", endpoint = server$endpoint, api_key = server$key, ...)
  }
  err <- expect_error(http(model = "no-such-model"), class = "scbridge_error_unknown_model")
  expect_s3_class(err, c("scbridge_error_not_found", "scbridge_error_remote"))
  expect_identical(err$status, 422L)
  expect_match(err$hint, "GET /v1/models", fixed = TRUE)
  # the tissue reaches the service's engine (an unknown one is its own refusal)
  expect_same_calls(http(tissue = "blood"), annotate_cells(m, engine = "python", tissue = "blood"))
  # min_gene_fraction reaches the service's engine too
  expect_same_calls(http(min_gene_fraction = 0.01),
                    annotate_cells(m, engine = "python", min_gene_fraction = 0.01))
  expect_error(http(min_gene_fraction = 1.5), class = "scbridge_error_invalid_parameter")
  # a reference is local: the http engine cannot send it
  expect_error(http(reference = test_path("fixtures", "model_genes.txt")),
               class = "scbridge_error_unsupported")
})

test_that("a value kind the JSON body cannot carry is refused, not ignored", {
  m <- plain(sim_counts())
  withr::local_options(scbridge.http_transport = "json", scbridge.http_retries = 1L)
  expect_error(annotate_cells(m, engine = "http", endpoint = closed_port_endpoint(),
                              value_kind = "lognorm"), class = "scbridge_error_unsupported")
  # the kind the service would tell anyway goes through (to the closed port here)
  expect_error(annotate_cells(m, engine = "http", endpoint = closed_port_endpoint(),
                              value_kind = "counts"), class = "scbridge_error_remote_unreachable")
})

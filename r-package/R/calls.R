# The calls data.frame: one row per cell, in the object's cell order, the same whatever engine
# made it. Columns: cell, label, ontology_id, confidence, alternates (list of named numeric
# vectors: runner-up label = score, best first), markers (list of character vectors), then
# any extra columns the engine returned (label_l1 / label_l2, the compartment and lineage of
# the call, and unknown_reason where the model reports them) and those R adds (label_raw with
# min_confidence, label_smoothed / smoothed_confidence with groups, the QC columns with qc).
#
# The decoders of every engine's reply live here: calls_from_columns() (python engine),
# calls_from_ipc() (Arrow read in base R: cli engine), calls_from_records() (JSON: http
# engine), calls_from_json() (a data.frame with list columns: Arrow read by the arrow
# package, or JSON simplified by jsonlite).

core_columns <- c("cell", "label", "ontology_id", "confidence", "alternates", "markers")
# Extra columns that are strings whatever a reply's encoding made of them (a JSON column of
# nulls only, as unknown_reason is when every cell got a call, arrives as logical NA).
string_columns <- c("label_l1", "label_l2", "unknown_reason")

# Build it from flat pieces: alternates and markers arrive as flat vectors plus per-cell counts.
new_calls <- function(cell, label, ontology_id, confidence, alt_n, alt_label, alt_score,
                      marker_n, marker_gene, extra = list()) {
  n <- length(cell)
  df <- data.frame(cell = as.character(cell), label = as.character(label),
                   ontology_id = as.character(ontology_id), confidence = as.double(confidence),
                   stringsAsFactors = FALSE)
  df$alternates <- split_by_counts(stats_named(as.double(alt_score), as.character(alt_label)),
                                   alt_n, n, stats::setNames(numeric(0), character(0)))
  df$markers <- split_by_counts(as.character(marker_gene), marker_n, n, character(0))
  for (name in names(extra)) {
    df[[name]] <- if (name %in% string_columns) as.character(extra[[name]]) else extra[[name]]
  }
  rownames(df) <- NULL
  df
}

stats_named <- function(values, names) {
  names(values) <- names
  values
}

# values split into n pieces of sizes counts (zero-length pieces kept, typed like `empty`).
split_by_counts <- function(values, counts, n, empty) {
  counts <- as.integer(counts)
  if (length(counts) != n || sum(counts) != length(values)) {
    abort("The engine returned list columns that do not match the number of cells.",
          code = "engine_failure")
  }
  if (!length(values)) return(rep(list(empty), n))
  # A factor built directly (factor() would sort and match 'n' levels it already knows).
  groups <- structure(rep.int(seq_len(n), counts), levels = as.character(seq_len(n)),
                      class = "factor")
  out <- split(values, groups)
  names(out) <- NULL
  out
}

check_reply_size <- function(n, cells) {
  if (length(cells) != n) {
    abort(sprintf("The engine returned %d calls for %d cells.", n, length(cells)),
          code = "engine_failure")
  }
}

# -- python engine: flat columns, strings as dictionary codes --------------------------------
decode_codes <- function(coded) {
  codes <- as.integer(coded[[1L]])
  levels <- as.character(unlist(coded[[2L]]))
  codes[codes < 0L] <- NA_integer_
  levels[codes + 1L]
}

# Extra columns of scbridge_r.py: list(codes | values, na, integer) per column.
decode_extra <- function(extra) {
  lapply(extra, function(col) {
    values <- if (!is.null(col$codes)) decode_codes(col$codes) else col$values
    if (isTRUE(col$integer)) values <- as.integer(round(values))
    if (is.logical(values) || is.numeric(values) || is.character(values)) {
      values <- as.vector(values)
    }
    if (length(col$na)) values[as.logical(col$na)] <- NA
    values
  })
}

# The column dict of scbridge_r.calls_columns() as a calls data.frame (`cells`: the cells
# sent, which the Python side checked the calls are for, in that order).
calls_from_columns <- function(out, cells) {
  check_reply_size(out$n, cells)
  new_calls(
    cell = cells, label = decode_codes(out$label), ontology_id = decode_codes(out$ontology_id),
    confidence = as.double(out$confidence),
    alt_n = out$alt_n, alt_label = decode_codes(out$alt_label),
    alt_score = as.double(out$alt_score),
    marker_n = out$marker_n, marker_gene = decode_codes(out$marker_gene),
    extra = decode_extra(out$extra))
}

# -- cli engine: a Calls table read by read_ipc() (R/arrow-ipc.R) ----------------------------
calls_from_ipc <- function(table, cells) {
  n <- length(table$cell)
  check_reply_size(n, cells)
  if (!identical(as.character(table$cell), as.character(cells))) {
    abort("The engine returned calls for other cells, or in another order, than it was given.",
          code = "engine_failure")
  }
  alternates <- ipc_list_parts(table$alternates)
  markers <- ipc_list_parts(table$markers)
  extra_names <- setdiff(names(table), core_columns)
  extra <- Filter(is.atomic, unclass(table)[extra_names])
  new_calls(
    cell = cells, label = table$label, ontology_id = table$ontology_id,
    confidence = table$confidence,
    alt_n = alternates$lengths, alt_label = alternates$values$label %||% character(0),
    alt_score = alternates$values$score %||% numeric(0),
    marker_n = markers$lengths, marker_gene = markers$values,
    extra = extra)
}

# -- http engine: JSON --------------------------------------------------------------------
# A calls data.frame from the JSON contract's `calls` array as jsonlite::parse_json() gives it
# (a list of records, unsimplified: several times faster than fromJSON()'s simplification for
# many cells). `cells`: the ids of the cells sent, for replies without a `cell` field.
calls_from_records <- function(records, cells = NULL) {
  n <- length(records)
  field <- function(name, type) {
    values <- lapply(records, `[[`, name)
    values[vapply(values, is.null, TRUE)] <- NA
    as.vector(unlist(values, use.names = FALSE), type)
  }
  cell <- if (is.null(cells)) field("cell", "character") else cells
  check_reply_size(n, cell)
  alternates <- lapply(records, `[[`, "alternates")
  flat <- unlist(alternates, recursive = FALSE, use.names = FALSE)
  markers <- lapply(records, function(r) as.character(unlist(r[["markers"]])))
  extra_names <- setdiff(unique(unlist(lapply(records, names))), core_columns)
  extra <- lapply(stats::setNames(extra_names, extra_names), function(name) {
    values <- lapply(records, `[[`, name)
    values[vapply(values, is.null, TRUE)] <- NA
    unlist(values, use.names = FALSE)
  })
  new_calls(
    cell = cell, label = field("label", "character"),
    ontology_id = field("ontology_id", "character"),
    confidence = field("confidence", "double"),
    alt_n = lengths(alternates),
    alt_label = as.character(unlist(lapply(flat, `[[`, "label"), use.names = FALSE)),
    alt_score = as.double(unlist(lapply(flat, function(a) a[["score"]] %||% NA_real_),
                                 use.names = FALSE)),
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
  check_reply_size(n, cell)
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

# -- what R adds, the same for every engine ------------------------------------------------
# min_confidence: cells below it get "Unknown"; the raw call stays in label_raw. Done in R,
# once, for every engine, so all engines agree exactly.
apply_min_confidence <- function(calls, min_confidence) {
  if (is.null(min_confidence)) return(calls)
  check_min_confidence(min_confidence)
  calls$label_raw <- calls$label
  low <- !is.na(calls$confidence) & calls$confidence < min_confidence
  calls$label[low] <- "Unknown"
  calls
}

check_min_confidence <- function(min_confidence) {
  if (!is.null(min_confidence) &&
      (!is.numeric(min_confidence) || length(min_confidence) != 1L || is.na(min_confidence) ||
       min_confidence < 0 || min_confidence > 1)) {
    abort("`min_confidence` must be NULL or one number in [0, 1].", code = "invalid_parameter")
  }
  invisible(min_confidence)
}

# Cluster-level labels: within each group the most frequent label wins (ties: the label that
# sorts first, by code point), `smoothed_confidence` is its share of the group. The core's
# rule (bridge._smoothing, majority vote as CellTypist's), applied in R so every engine
# gives the same; tests/testthat/test-calls.R checks the two agree.
majority_by_group <- function(labels, groups) {
  groups <- as.character(groups)
  groups[is.na(groups)] <- ""
  labels <- as.character(labels)
  label_levels <- sort(unique(labels), method = "radix")
  group_levels <- sort(unique(groups), method = "radix")
  g <- match(groups, group_levels)
  l <- match(labels, label_levels)
  counts <- matrix(tabulate(g + (l - 1L) * length(group_levels),
                            length(group_levels) * length(label_levels)),
                   nrow = length(group_levels))
  winner <- max.col(counts, ties.method = "first")
  share <- counts[cbind(seq_along(group_levels), winner)] / rowSums(counts)
  list(label = label_levels[winner][g], share = share[g])
}

# The label columns of each depth: "label" (the call itself), "l2" (lineage), "l1"
# (compartment), as the core names them.
level_columns <- c(label = "label", l2 = "label_l2", l1 = "label_l1")

check_level <- function(level) check_choice(level, names(level_columns), "level")

level_values <- function(calls, level) {
  column <- level_columns[[level]]
  values <- calls[[column]]
  if (is.null(values)) {
    model <- attr(calls, "provenance")$model %||% "this"
    abort(c(sprintf("level = \"%s\" needs the calls' '%s' column, which the %s model did not report.",
                    level, column, model),
            "Use level = \"label\", or a model that reports compartments and lineages."),
          code = "level_unavailable")
  }
  as.character(values)
}

# Lists as plain strings, as the core's CSV writes them: alternates "label:score;...",
# markers "GENE;GENE" (write.csv() cannot write list columns).
flatten_calls <- function(calls) {
  calls$alternates <- vapply(calls$alternates, function(a) {
    paste(sprintf("%s:%s", names(a), format_score(a)), collapse = ";")
  }, "")
  calls$markers <- vapply(calls$markers, paste, "", collapse = ";")
  calls
}

format_score <- function(x) if (length(x)) formatC(x, digits = 4L, format = "g") else character(0)

# A QC table: cell, then the core's QC columns, as bridge.qc / `scbridge qc` make them.
qc_table <- function(cells, columns, notes = NULL) {
  out <- data.frame(cell = cells, stringsAsFactors = FALSE)
  for (name in names(columns)) out[[name]] <- columns[[name]]
  rownames(out) <- cells
  if (!is.null(notes)) attr(out, "thresholds") <- jsonlite_or_text(notes)
  class(out) <- c("scbridge_qc", "data.frame")
  out
}

jsonlite_or_text <- function(text) {
  if (requireNamespace("jsonlite", quietly = TRUE)) {
    tryCatch(jsonlite::fromJSON(text), error = function(e) text)
  } else {
    text
  }
}

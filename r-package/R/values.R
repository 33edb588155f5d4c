# What the values of a matrix are, and the silent bad results they would otherwise give:
# a matrix with no expression at all, non-integer values in a counts layer, a transposed
# (cells x genes) matrix. Checked in R before any engine runs, so every engine answers alike.

value_kinds <- c("counts", "lognorm", "normalized")

# The core's rule (bridge.numerics.detect_value_kind): whole numbers (in the first 2^20
# stored values) are counts; non-integers above 50 (no log-scale value gets there) are
# normalised values (TPM, CPM, FPKM); other non-integers are log-normalised.
detect_value_kind <- function(x) {
  x <- x[seq_len(min(length(x), 1048576L))]
  if (all(x == round(x))) return("counts")
  if (length(x) && max(x) > 50) "normalized" else "lognorm"
}

check_value_kind <- function(value_kind) {
  if (is.null(value_kind)) return(NULL)
  check_choice(value_kind, value_kinds, "value_kind")
}

# The layer names that hold raw counts (the core's COUNT_LAYERS, split v5 layers included).
is_counts_layer <- function(layer) {
  tolower(sub("\\..*$", "", layer %||% "")) %in% c("counts", "raw_counts", "umi", "umis",
                                                    "spliced")
}

# Refuses a matrix without a single expressed value; warns about cells without any; checks
# what a counts layer holds against `value_kind`. Returns the value kind: `value_kind` when
# given, else the one detected, marked attr "detected" (the engines detect it themselves).
check_expression <- function(m, where, layer, value_kind) {
  x <- m@x
  # Stored values are non-zero nearly always: the full scan only when the first one is zero.
  if (!length(x) || (x[[1L]] == 0 && !any(x != 0))) {
    abort(c(sprintf("%s holds no expression at all: every value of its %d cells is zero.",
                    where, ncol(m)),
            "Check the layer (layer = \"counts\" or \"data\") or the subset you annotate."),
          code = "empty_cells")
  }
  empty <- which(diff(m@p) == 0L)
  if (length(empty)) {
    warn(sprintf(paste("%d of the %d cells of %s have no expression (e.g. '%s'); they",
                       "cannot be called. Filter them first (e.g. subset(seu, nCount_RNA > 0))."),
                 length(empty), ncol(m), where, colnames(m)[[empty[[1L]]]]),
         code = "empty_cells")
  }
  found <- detect_value_kind(x)
  if (identical(value_kind, "counts") && found != "counts") {
    abort(sprintf(paste("value_kind = \"counts\" but %s holds non-integer values (e.g. %s):",
                        "raw counts are whole numbers. Give the counts, or the value kind these",
                        "values are (\"lognorm\" or \"normalized\")."), where,
                  format(x[x != round(x)][[1L]], digits = 6)),
          code = "non_integer_counts")
  }
  if (is.null(value_kind) && is_counts_layer(layer) && found != "counts") {
    warn(sprintf(paste("%s is a counts layer but holds non-integer values (e.g. %s): they are",
                       "annotated as %s values. If they are normalised counts (TPM, CPM) say so",
                       "with value_kind = \"normalized\"; if raw counts exist elsewhere, use",
                       "those."), where, format(x[x != round(x)][[1L]], digits = 6),
                 if (found == "lognorm") "log-normalised" else "normalised"),
         code = "non_integer_counts")
  }
  value_kind %||% structure(found, detected = TRUE)
}

# Common gene symbols found in almost every scRNA-seq data set, to tell which side of a
# matrix holds the genes.
ubiquitous_genes <- c("ACTB", "B2M", "MALAT1", "TMSB4X", "EEF1A1", "RPL13", "RPS27", "RPLP1",
                      "RPS12", "TPT1", "FTL", "GAPDH", "MT-CO1", "RPL41", "RPS18", "Actb",
                      "B2m", "Malat1", "Tmsb4x", "Eef1a1", "Rpl13", "Rps27", "Rplp1", "Ftl1")

looks_like_barcodes <- function(ids) {
  ids <- utils::head(ids, 200L)
  length(ids) > 0L && mean(grepl("^([A-Za-z0-9_]+[_:#-])?[ACGTN]{10,}(-[0-9]+)?$", ids)) > 0.5
}

# TRUE when the matrix looks cells x genes: its columns named like genes and its rows like
# cells (10x barcodes), or the ubiquitous genes among the columns and none among the rows.
looks_transposed <- function(m) {
  rows <- rownames(m)
  cols <- colnames(m)
  in_cols <- sum(cols %in% ubiquitous_genes)
  in_rows <- sum(rows %in% ubiquitous_genes)
  (looks_like_barcodes(rows) && !looks_like_barcodes(cols)) || (in_cols >= 3L && in_rows == 0L)
}

check_orientation <- function(m, where) {
  if (looks_transposed(m)) {
    abort(c(sprintf(paste("%s looks transposed: its rows are named like cells (e.g. '%s') and",
                          "its columns like genes (e.g. '%s'), but scbridge expects genes x",
                          "cells."), where, rownames(m)[[1L]], colnames(m)[[1L]]),
            "Pass t(m) instead."),
          code = "transposed")
  }
  invisible(m)
}

# A hint for a gene-id error on a matrix that may be transposed (weaker evidence than above).
transposed_hint <- function(m) {
  if (sum(colnames(m) %in% ubiquitous_genes) > sum(rownames(m) %in% ubiquitous_genes) ||
      looks_like_barcodes(rownames(m))) {
    "the matrix may be transposed: scbridge expects genes x cells (pass t(m))"
  }
}

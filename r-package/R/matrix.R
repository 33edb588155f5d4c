# Finding the expression matrix inside an object, as one genes x cells dgCMatrix with dimnames.
#
# A genes x cells dgCMatrix's slots p, i, x *are* the cells x genes CSR every engine takes,
# so nothing here transposes. Copies happen only where the layout differs: split Seurat v5
# layers (joined in the object's cell order), and non-dgCMatrix classes (coerced).
#
# Seurat objects are read from their slots, never through SeuratObject methods, so that v5
# objects (Assay5: @layers, LogMap @cells / @features) work where SeuratObject 5 is absent.

# A list(matrix, source, layer) for any supported object. `layer = NULL`: the shared rules'
# default (inst/extdata/layer_rules.tsv).
expression_matrix <- function(object, assay = NULL, layer = NULL) {
  if (inherits(object, "Seurat")) return(seurat_matrix(object, assay, layer))
  if (methods::is(object, "SummarizedExperiment")) return(sce_matrix(object, assay, layer))
  if (is_matrix_like(object)) {
    m <- as_dgc(object, "the matrix")
    check_dimnames(m, "the matrix")
    return(list(matrix = m, source = paste("R", class(object)[[1L]]), layer = "matrix"))
  }
  abort(sprintf(
    "scbridge cannot annotate an object of class %s; give a Seurat object, a SingleCellExperiment, or a genes x cells sparse matrix.",
    class(object)[[1L]]), kind = "unsupported")
}

is_matrix_like <- function(x) {
  is.matrix(x) || methods::is(x, "Matrix") || methods::is(x, "DelayedArray")
}

as_dgc <- function(m, where) {
  if (methods::is(m, "dgCMatrix")) return(m)
  if (is.matrix(m) && !is.numeric(m) && !is.logical(m)) {
    abort(sprintf("%s is a %s matrix, not numeric expression values.", where, typeof(m)))
  }
  out <- tryCatch(methods::as(m, "CsparseMatrix"), error = function(e) {
    abort(sprintf("%s (class %s) cannot be converted to a sparse matrix.", where, class(m)[[1L]]),
          parent = e)
  })
  if (!methods::is(out, "generalMatrix")) out <- methods::as(out, "generalMatrix")
  if (!methods::is(out, "dMatrix")) out <- methods::as(out, "dMatrix")
  out
}

check_dimnames <- function(m, where) {
  if (is.null(rownames(m)) || is.null(colnames(m))) {
    abort(sprintf(
      "%s has no %s. Set dimnames(m) <- list(genes, cells); scbridge expects genes x cells.",
      where, if (is.null(rownames(m))) "rownames (gene ids)" else "colnames (cell ids)"))
  }
  if (anyDuplicated(colnames(m))) {
    abort(sprintf("%s has duplicated cell ids (e.g. '%s'); make them unique.", where,
                  colnames(m)[anyDuplicated(colnames(m))]))
  }
  if (anyDuplicated(rownames(m))) {
    abort(sprintf("%s has duplicated gene ids (e.g. '%s'); make them unique.", where,
                  rownames(m)[anyDuplicated(rownames(m))]))
  }
  invisible(m)
}

# -- Seurat -------------------------------------------------------------------------------
seurat_assays <- function(object) attr(object, "assays")

seurat_default_assay <- function(object) as.character(attr(object, "active.assay"))

seurat_cells <- function(object) rownames(attr(object, "meta.data"))

choose_assay <- function(object, assay) {
  assays <- seurat_assays(object)
  assay <- assay %||% seurat_default_assay(object)
  if (!assay %in% names(assays)) {
    abort(sprintf("The Seurat object has no assay '%s'; available assays: %s.", assay,
                  paste(names(assays), collapse = ", ")), kind = "not_found")
  }
  assay
}

is_assay5 <- function(a) !is.null(attr(a, "layers"))

# Non-empty layer names of an assay (v3/v4: of counts, data, scale.data): the empty counts
# of an SCTAssay whose counts were dropped are no layer.
assay_layers <- function(a) {
  non_empty <- function(m) !is.null(m) && length(dim(m)) == 2L && prod(dim(m)) > 0
  if (is_assay5(a)) {
    layers <- attr(a, "layers")
    return(names(layers)[vapply(layers, non_empty, logical(1))])
  }
  present <- vapply(c("counts", "data", "scale.data"), function(s) non_empty(attr(a, s)),
                    logical(1))
  names(present)[present]
}

# -- which layer / assay: the rules shared with the Python core ----------------------------
# inst/extdata/layer_rules.tsv is byte-identical to the core's bridge/io/data/layer_rules.tsv
# (a test checks), so both pick the same matrix, fall back the same way (with a warning) and
# refuse the same layers.
layer_rules_path <- function() {
  system.file("extdata", "layer_rules.tsv", package = "scbridge", mustWork = TRUE)
}

layer_rules <- function() {
  if (is.null(the$layer_rules)) {
    the$layer_rules <- utils::read.delim(layer_rules_path(), comment.char = "#", quote = "",
                                         stringsAsFactors = FALSE)
  }
  the$layer_rules
}

# list(layer, covered): the layer to read and the available layers it stands for (several
# for split v5 layers when `split`). `requested = NULL`: the rules' default, then fallbacks.
choose_layer <- function(container, requested, available, split, what) {
  rules <- layer_rules()
  rules <- rules[rules$container == container, , drop = FALSE]
  word <- if (container == "sce") "assay" else "layer"
  usable <- rules$layer[rules$use != "refused"]
  listing <- if (length(available)) paste(available, collapse = ", ") else "none"
  matching <- function(layer) {
    exact <- available[available == layer]
    if (length(exact) || !split) return(exact)
    available[startsWith(available, paste0(layer, "."))]
  }
  if (!is.null(requested)) {
    if (!is.character(requested) || length(requested) != 1L || is.na(requested)) {
      abort(sprintf("`%s` must be one %s name, e.g. \"%s\".", word, word, usable[[1L]]))
    }
    refused <- rules[rules$use == "refused" & rules$layer == requested, , drop = FALSE]
    if (nrow(refused)) {
      abort(sprintf("%s%s '%s' of %s holds %s; choose %s = %s.", toupper(substr(word, 1L, 1L)),
                    substring(word, 2L), requested,
                    what, refused$note[[1L]], word,
                    paste(sprintf("\"%s\"", usable), collapse = " or ")))
    }
    covered <- matching(requested)
    if (!length(covered)) {
      abort(sprintf("%s has no %s '%s'; available %ss: %s.", what, word, requested, word, listing),
            kind = "not_found")
    }
    return(list(layer = requested, covered = covered))
  }
  tried <- character(0)
  for (k in which(rules$use != "refused")) {
    covered <- matching(rules$layer[[k]])
    if (length(covered)) {
      if (rules$use[[k]] == "fallback") {
        warning(sprintf("%s has no %s; using its '%s' %s (%s) instead.", what,
                        paste(sprintf("'%s'", tried), collapse = " or "), rules$layer[[k]], word,
                        rules$note[[k]]), call. = FALSE)
      }
      return(list(layer = rules$layer[[k]], covered = covered))
    }
    tried <- c(tried, rules$layer[[k]])
  }
  abort(sprintf("%s holds none of the %ss scbridge reads by default (%s); available %ss: %s. Name one with %s = .",
                what, word, paste(tried, collapse = ", "), word, listing, word),
        kind = "not_found")
}

seurat_matrix <- function(object, assay, layer) {
  assay <- choose_assay(object, assay)
  a <- seurat_assays(object)[[assay]]
  v5 <- is_assay5(a)
  chosen <- choose_layer("seurat", layer, assay_layers(a), split = v5,
                         what = sprintf("Assay '%s'", assay))
  if (v5) return(assay5_matrix(a, assay, chosen$layer, chosen$covered))
  layer <- chosen$layer
  m <- as_dgc(attr(a, layer), sprintf("Seurat assay %s layer %s", assay, layer))
  check_dimnames(m, sprintf("Seurat assay %s layer %s", assay, layer))
  # meta.data's cell order is the object's; an assay's matrix is normally in it already.
  cells <- seurat_cells(object)
  if (!identical(colnames(m), cells) && all(cells %in% colnames(m))) m <- m[, cells, drop = FALSE]
  list(matrix = m, source = sprintf("Seurat assay %s %s", assay, layer), layer = layer)
}

# v5: layer `counts`, or the split layers `counts.A`, `counts.B`, ... (`matching`) joined in
# the assay's cell order. Layers are stored without dimnames; their cells and genes are the
# rows of the @cells / @features LogMaps whose column for that layer is TRUE.
assay5_matrix <- function(a, assay, layer, matching) {
  cell_map <- unclass(attr(a, "cells"))
  gene_map <- unclass(attr(a, "features"))
  all_cells <- rownames(cell_map)
  all_genes <- rownames(gene_map)
  parts <- lapply(matching, function(name) {
    m <- as_dgc(attr(a, "layers")[[name]], sprintf("Seurat v5 assay %s layer %s", assay, name))
    cells <- if (name %in% colnames(cell_map)) all_cells[cell_map[, name]] else colnames(m)
    genes <- if (name %in% colnames(gene_map)) all_genes[gene_map[, name]] else rownames(m)
    if (length(cells) != ncol(m) || length(genes) != nrow(m)) {
      abort(sprintf(
        "Seurat v5 assay %s layer %s is %d x %d but its LogMaps name %d genes and %d cells; the object is damaged.",
        assay, name, nrow(m), ncol(m), length(genes), length(cells)))
    }
    dimnames(m) <- list(genes, cells)
    m
  })
  source <- sprintf("Seurat v5 assay %s layer %s", assay, paste(matching, collapse = "+"))
  if (length(parts) == 1L && identical(rownames(parts[[1L]]), all_genes)) {
    m <- parts[[1L]]
  } else {
    inform("joining split layers ", paste(matching, collapse = ", "), " (a copy)")
    m <- join_layers(parts, all_genes, all_cells, source)
    source <- paste(source, "(joined)")
  }
  check_dimnames(m, source)
  list(matrix = m, source = source, layer = layer)
}

# Stack layers over the union gene space (a gene absent from a layer is zero there), then put
# the columns in the assay's cell order.
join_layers <- function(parts, all_genes, all_cells, where) {
  total <- sum(vapply(parts, function(m) as.double(length(m@x)), double(1)))
  if (total > max_nnz()) {
    abort(sprintf(
      "%s: the joined layers hold %s non-zeros, more than one dgCMatrix (and so the engines, which are given one) can carry (%s). Annotate one layer at a time (layer = \"counts.A\", ...) and combine the calls.",
      where, format(total, big.mark = ",", scientific = FALSE),
      format(max_nnz(), big.mark = ",", scientific = FALSE)), kind = c("capacity", "input"))
  }
  widened <- lapply(parts, function(m) {
    if (identical(rownames(m), all_genes)) return(m)
    rows <- match(rownames(m), all_genes)
    Matrix::sparseMatrix(i = rows[m@i + 1L], p = m@p, x = m@x,
                         dims = c(length(all_genes), ncol(m)),
                         dimnames = list(all_genes, colnames(m)))
  })
  joined <- do.call(cbind, widened)
  cells <- colnames(joined)
  if (anyDuplicated(cells)) {
    abort(sprintf("%s: cell '%s' appears in more than one of the split layers.", where,
                  cells[anyDuplicated(cells)]))
  }
  order <- all_cells[all_cells %in% cells]
  joined[, order, drop = FALSE]
}

# -- SingleCellExperiment --------------------------------------------------------------------
# `assay = "altexp:HTO"` reads the alternative experiment HTO (the same as in the core).
altexp_prefix <- "altexp:"

sce_matrix <- function(object, assay, layer) {
  need_package("SummarizedExperiment", "Annotating a SingleCellExperiment")
  alt_names <- if (methods::is(object, "SingleCellExperiment")) {
    SingleCellExperiment::altExpNames(object)
  } else {
    character(0)
  }
  experiment <- object
  what <- "The SingleCellExperiment"
  label <- "SingleCellExperiment"
  in_alt <- FALSE
  if (!is.null(assay) && startsWith(tolower(assay), altexp_prefix)) {
    alt <- substring(assay, nchar(altexp_prefix) + 1L)
    if (!alt %in% alt_names) {
      abort(sprintf("The SingleCellExperiment has no altExp '%s'; its altExps: %s.", alt,
                    if (length(alt_names)) paste(alt_names, collapse = ", ") else "none"),
            kind = "not_found")
    }
    experiment <- SingleCellExperiment::altExp(object, alt, withDimnames = TRUE)
    what <- sprintf("AltExp '%s'", alt)
    label <- sprintf("SingleCellExperiment altExp %s", alt)
    in_alt <- TRUE
    assay <- NULL  # within the altExp, `layer` names its assay
  }
  # For an SCE the assay *is* the layer: assay = "logcounts" or layer = "logcounts" both work.
  if (!is.null(assay) && !is.null(layer) && !identical(assay, layer)) {
    abort(sprintf("For a SingleCellExperiment give the assay name once (assay = \"%s\").", assay))
  }
  requested <- assay %||% layer
  chosen <- tryCatch(
    choose_layer("sce", requested, SummarizedExperiment::assayNames(experiment), FALSE, what),
    scbridge_error_not_found = function(e) {
      if (!in_alt && !is.null(requested) && requested %in% alt_names) {
        abort(c(conditionMessage(e), sprintf(
          "'%s' is an altExp (alternative experiment) of this object: read it with assay = \"%s%s\".",
          requested, altexp_prefix, requested)), kind = "not_found")
      }
      stop(e)
    })
  name <- chosen$layer
  where <- sprintf("%s assay %s", label, name)
  m <- as_dgc(SummarizedExperiment::assay(experiment, name, withDimnames = FALSE), where)
  dimnames(m) <- list(rownames(experiment), colnames(experiment))
  check_dimnames(m, where)
  list(matrix = m, source = where, layer = name)
}

# -- pieces of a matrix ----------------------------------------------------------------------
# Cells [from, to] (1-based) as the CSR arrays of that block, straight from the slots.
csr_block <- function(m, from, to) {
  lo <- m@p[[from]]
  hi <- m@p[[to + 1L]]
  take <- if (hi > lo) seq.int(lo + 1, hi) else integer(0)
  list(indptr = m@p[seq.int(from, to + 1L)] - lo, indices = m@i[take], data = m@x[take],
       cells = colnames(m)[seq.int(from, to)])
}

chunk_starts <- function(n, chunk_size) {
  if (n == 0L) return(integer(0))
  seq.int(1L, n, by = chunk_size)
}

# Gene ids that look like Ensembl ids (ENSG..., ENSMUSG...): the core maps them to symbols.
looks_ensembl <- function(genes) {
  n <- min(length(genes), 1000L)
  n > 0L && mean(grepl("^ENS[A-Z]*G[0-9]{6,}", genes[seq_len(n)])) > 0.5
}

# Values every engine refuses, refused here once so the error is the same whatever the engine.
check_values <- function(m, where) {
  x <- m@x
  # range(): one pass, no vector allocated (any(is.infinite(x)) allocates one as long as x).
  r <- if (length(x) && !anyNA(x)) range(x) else c(0, 0)
  bad <- if (anyNA(x)) "NA / NaN" else if (any(is.infinite(r))) "infinite" else if (r[[1L]] < 0) "negative" else NULL
  if (!is.null(bad)) {
    first <- which(if (bad == "NA / NaN") is.na(x) else if (bad == "infinite") is.infinite(x) else x < 0)[[1L]]
    cell <- colnames(m)[[findInterval(first - 1, m@p, rightmost.closed = FALSE)]]
    abort(sprintf(
      "%s holds %s values (first in cell '%s'); expression values must be finite and >= 0. Fix or drop them before annotating.",
      where, bad, cell))
  }
  invisible(m)
}

# R side of scbridge's readers and writers, sourced once into a private environment.
#
# Everything here works from slots and attributes rather than from SeuratObject methods, so
# that Seurat v5 objects (Assay5, layers, LogMap) can be read where only SeuratObject 4 is
# installed, and so that nothing here copies a matrix unless the layout forces it.

# A data set or object exported by an installed package, e.g. SeuratObject::pbmc_small.
scb_package_object <- function(package, name) {
  if (!requireNamespace(package, quietly = TRUE)) {
    stop("scbridge[not_found]: R package '", package, "' is not installed; install it or pass a file path")
  }
  ns <- asNamespace(package)
  lazy <- ns[[".__NAMESPACE__."]][["lazydata"]]
  if (!is.null(lazy) && exists(name, envir = lazy, inherits = FALSE)) {
    return(get(name, envir = lazy))
  }
  if (exists(name, envir = ns, inherits = FALSE)) return(get(name, envir = ns))
  env <- new.env()
  found <- suppressWarnings(utils::data(list = name, package = package, envir = env))
  if (exists(name, envir = env, inherits = FALSE)) return(get(name, envir = env))
  stop("scbridge[not_found]: package '", package, "' has no data set or object called '", name, "'")
}

# Where the object to read sits in a file, as the reader and write-back both see it:
# `object`, the .rda object's `name` among all `names` the file holds (NA / empty for .rds),
# and, when the object was unwrapped from a plain list, its `index` there and the `container`.
scb_locate <- function(path) {
  ext <- tolower(tools::file_ext(path))
  if (ext %in% c("rdata", "rda")) {
    env <- new.env(parent = emptyenv())
    names <- load(path, envir = env)
    name <- scb_choose_name(names, env, path)
    where <- if (length(names) > 1L) sprintf("%s (object '%s')", path, name) else path
    found <- scb_unwrap(get(name, envir = env), where)
    return(c(found, list(env = env, name = name, names = names)))
  }
  c(scb_unwrap(readRDS(path), path), list(env = NULL, name = NA_character_, names = character(0)))
}

scb_load <- function(path) scb_locate(path)$object

# A plain list holding one supported object (a common saveRDS(list(obj))) stands for it.
scb_is_plain_list <- function(x) is.list(x) && !is.object(x)

scb_supported <- function(x) {
  scb_kind(x) != "other" || (scb_is_plain_list(x) && length(scb_list_candidates(x)) == 1L)
}

scb_list_candidates <- function(x) which(vapply(x, function(el) scb_kind(el) != "other", logical(1)))

scb_describe_elements <- function(objects, labels) {
  classes <- vapply(objects, scb_class, character(1))
  paste(sprintf("%s (%s)", labels, classes), collapse = ", ")
}

# A list without any supported element stays as it is (the reader then names what it reads).
scb_unwrap <- function(x, where) {
  ok <- if (scb_is_plain_list(x)) scb_list_candidates(x) else integer(0)
  if (!length(ok)) return(list(object = x, index = NA_integer_, container = NULL))
  if (length(ok) == 1L) return(list(object = x[[ok]], index = unname(ok), container = x))
  labels <- sprintf("[[%d]]", seq_along(x))
  if (!is.null(names(x))) labels <- ifelse(nzchar(names(x)), sprintf("[[\"%s\"]]", names(x)), labels)
  stop("scbridge[ambiguous_object]: ", where, " holds a list of ", length(ok), " objects scbridge ",
       "could read: ", scb_describe_elements(x[ok], labels[ok]), ". Save the one to use alone, ",
       "e.g. in R: saveRDS(x", labels[ok[[1L]]], ", \"one.rds\")")
}

# The object of an .rda / .RData to read: the only one, or the only supported one.
scb_choose_name <- function(names, env, path) {
  if (length(names) == 0L) stop("scbridge[not_found]: ", path, " holds no objects")
  if (length(names) == 1L) return(names[[1L]])
  ok <- names[vapply(names, function(n) scb_supported(get(n, envir = env)), logical(1))]
  if (length(ok) == 1L) return(ok)
  objects <- lapply(names, get, envir = env)
  listing <- scb_describe_elements(objects, sprintf("'%s'", names))
  if (!length(ok)) {
    stop("scbridge[unsupported]: ", path, " holds ", length(names), " objects, none of them a ",
         "Seurat object, SingleCellExperiment or matrix: ", listing)
  }
  stop("scbridge[ambiguous_object]: ", path, " holds several objects (",
       paste(ok, collapse = ", "), ") scbridge could read: ", listing,
       "; save the one to use alone, e.g. in R: saveRDS(", ok[[1L]], ", \"", ok[[1L]], ".rds\")")
}

scb_class <- function(x) as.character(class(x))[[1L]]

scb_kind <- function(x) {
  cls <- class(x)
  if ("Seurat" %in% cls) return("seurat")
  if ("seurat" %in% cls) return("seurat2")
  if (any(c("SingleCellExperiment", "SummarizedExperiment") %in% cls)) return("sce")
  if (scb_is_matrix(x)) return("matrix")
  "other"
}

scb_is_matrix <- function(x) {
  is.matrix(x) || methods::is(x, "Matrix") || methods::is(x, "DelayedArray") ||
    scb_class(x) %in% c("dgCMatrix", "dgTMatrix", "dgRMatrix")
}

scb_dims <- function(x) {
  d <- dim(x)
  if (is.null(d)) c(NA_integer_, NA_integer_) else as.double(d)
}

scb_nnz <- function(x) {
  cls <- scb_class(x)
  if (cls %in% c("dgCMatrix", "dgRMatrix", "dgTMatrix")) return(as.double(length(x@x)))
  if (is.matrix(x)) return(as.double(sum(x != 0, na.rm = TRUE)))
  NA_real_
}

# -- Seurat ---------------------------------------------------------------------------------
scb_seurat_assays <- function(obj) attr(obj, "assays")

scb_seurat_active_assay <- function(obj) as.character(attr(obj, "active.assay"))

scb_seurat_version <- function(obj) {
  v <- attr(obj, "version")
  if (is.null(v)) "unknown" else as.character(v)
}

scb_assay_is_v5 <- function(assay) !is.null(attr(assay, "layers"))

scb_logmap_names <- function(map) rownames(unclass(map))

# Layer descriptions of a Seurat assay: name, class, dims (as stored), nnz.
scb_assay_layers <- function(assay) {
  if (scb_assay_is_v5(assay)) {
    layers <- attr(assay, "layers")
    return(lapply(layers, function(m) list(class = scb_class(m), dim = scb_dims(m), nnz = scb_nnz(m))))
  }
  out <- list()
  for (slot in c("counts", "data", "scale.data")) {
    m <- attr(assay, slot)
    if (!is.null(m) && length(dim(m)) == 2L && prod(dim(m)) > 0) {
      out[[slot]] <- list(class = scb_class(m), dim = scb_dims(m), nnz = scb_nnz(m))
    }
  }
  out
}

scb_assay_matrix_v3 <- function(assay, layer) {
  m <- attr(assay, layer)
  list(matrix = m, cells = colnames(m), genes = rownames(m))
}

# One v5 layer with the cell and feature names it covers (layers are stored without dimnames).
scb_assay_layer_v5 <- function(assay, layer) {
  cells <- unclass(attr(assay, "cells"))
  features <- unclass(attr(assay, "features"))
  m <- attr(assay, "layers")[[layer]]
  layer_cells <- if (layer %in% colnames(cells)) rownames(cells)[cells[, layer]] else colnames(m)
  layer_genes <- if (layer %in% colnames(features)) rownames(features)[features[, layer]] else rownames(m)
  list(matrix = m, cells = layer_cells, genes = layer_genes)
}

scb_assay_all_cells <- function(assay) rownames(unclass(attr(assay, "cells")))
scb_assay_all_genes <- function(assay) rownames(unclass(attr(assay, "features")))

scb_seurat_cells <- function(obj) rownames(attr(obj, "meta.data"))

# -- SingleCellExperiment -------------------------------------------------------------------
scb_sce_assay_names <- function(sce) SummarizedExperiment::assayNames(sce)

scb_sce_assay <- function(sce, name) {
  m <- SummarizedExperiment::assay(sce, name, withDimnames = FALSE)
  # rownames(sce) of a RangedSummarizedExperiment (every SCE) is names(rowRanges(sce)), and the
  # rowRanges() accessor costs ~4 ms for 20,000 genes; the slot's names are the same vector.
  genes <- if (methods::is(sce, "RangedSummarizedExperiment")) names(sce@rowRanges) else names(sce)
  list(matrix = m, cells = colnames(sce), genes = genes)
}

# Alternative experiments (altExps: HTO, ADT, spike-ins) of a SingleCellExperiment.
scb_sce_altexp_names <- function(sce) {
  if (!methods::is(sce, "SingleCellExperiment")) return(character(0))
  # The internal column holding them: ~2 ms, where altExpNames() takes ~0.1 s.
  stored <- tryCatch(names(SingleCellExperiment::int_colData(sce)[["altExps"]]),
                     error = function(e) NULL)
  if (is.null(stored)) SingleCellExperiment::altExpNames(sce) else stored
}

scb_sce_altexp <- function(sce, name) SingleCellExperiment::altExp(sce, name, withDimnames = TRUE)

scb_sce_coldata <- function(sce) {
  cd <- SummarizedExperiment::colData(sce)
  if (ncol(cd) == 0L) return(data.frame())
  as.data.frame(cd, optional = TRUE)
}

# -- matrices -------------------------------------------------------------------------------
# A block of cells [start, end] (1-based, inclusive) of any matrix-like, as a dgCMatrix.
scb_block_dgc <- function(x, start, end) {
  block <- x[, seq.int(start, end), drop = FALSE]
  if (methods::is(block, "DelayedArray")) block <- as(block, "dgCMatrix")
  if (is.matrix(block)) block <- Matrix::Matrix(block, sparse = TRUE)
  if (!methods::is(block, "dgCMatrix")) block <- as(as(block, "CsparseMatrix"), "generalMatrix")
  if (!methods::is(block, "dgCMatrix")) block <- as(block, "dMatrix")
  block
}

scb_as_dgc <- function(x) {
  out <- as(x, "CsparseMatrix")
  if (!methods::is(out, "generalMatrix")) out <- as(out, "generalMatrix")
  if (!methods::is(out, "dMatrix")) out <- as(out, "dMatrix")
  out
}

# -- metadata columns -----------------------------------------------------------------------
# Each column of a data.frame as list(kind, values, na, levels, ordered) for the Python side,
# by position; na is NULL when the column has no missing value (the common case: no 20,000-long
# logical vector to allocate and convert), levels / ordered are NULL except for factors.
scb_identical <- function(a, b) identical(a, b)

scb_columns <- function(df) {
  missing_mask <- function(col, keep_nan = FALSE) {
    if (!anyNA(col)) return(NULL)
    na <- if (keep_nan) is.na(col) & !is.nan(col) else is.na(col)
    if (any(na)) na else NULL
  }
  lapply(df, function(col) {
    if (is.factor(col)) {
      return(list("factor", as.integer(col), missing_mask(col), levels(col), is.ordered(col)))
    }
    if (is.logical(col)) return(list("logical", col, missing_mask(col), NULL, NULL))
    if (is.integer(col)) return(list("integer", col, missing_mask(col), NULL, NULL))
    if (is.double(col) && is.null(attr(col, "class"))) {
      # NaN stays a value (Arrow has NaN); only NA becomes null.
      return(list("double", col, missing_mask(col, keep_nan = TRUE), NULL, NULL))
    }
    chr <- as.character(col)
    list("character", chr, missing_mask(chr), NULL, NULL)
  })
}

# Build a data.frame from Python column specs (same shape as scb_columns output).
scb_frame <- function(specs, cells) {
  cols <- lapply(specs, function(s) {
    v <- s$values
    if (identical(s$kind, "factor")) {
      v <- factor(s$levels[v], levels = s$levels, ordered = isTRUE(s$ordered))
    }
    if (length(s$na)) v[as.logical(s$na)] <- NA
    v
  })
  df <- as.data.frame(cols, stringsAsFactors = FALSE, optional = TRUE)
  names(df) <- names(specs)
  rownames(df) <- cells
  df
}

# -- write-back -----------------------------------------------------------------------------
scb_object_cells <- function(obj) {
  kind <- scb_kind(obj)
  if (kind == "seurat") return(rownames(attr(obj, "meta.data")))
  if (kind == "sce") return(colnames(obj))
  stop("scbridge[unsupported]: write-back needs a Seurat or SingleCellExperiment object, got ", scb_class(obj))
}

scb_add_columns <- function(obj, df, overwrite) {
  kind <- scb_kind(obj)
  cells <- scb_object_cells(obj)
  idx <- match(cells, rownames(df))
  if (kind == "seurat") {
    meta <- attr(obj, "meta.data")
    for (name in names(df)) meta[[name]] <- df[[name]][idx]
    # attr<- keeps every other slot exactly as it was and needs no class definition (v5).
    attr(obj, "meta.data") <- meta
  } else {
    cd <- SummarizedExperiment::colData(obj)
    for (name in names(df)) cd[[name]] <- df[[name]][idx]
    SummarizedExperiment::colData(obj) <- cd
  }
  obj
}

# Save `updated` (the located object with its new columns) to `out`, keeping what the source
# file held around it where the format can: an .rds of a list stays that list, an .rda keeps
# the file's other objects; an .rds written from an .rda holds the object alone.
scb_save_updated <- function(located, updated, out) {
  in_container <- function(container) {
    if (is.na(located$index)) return(updated)
    container[[located$index]] <- updated
    container
  }
  ext <- tolower(tools::file_ext(out))
  if (ext %in% c("rda", "rdata")) {
    env <- new.env(parent = emptyenv())
    for (n in located$names) assign(n, get(n, envir = located$env), envir = env)
    assign(located$name, in_container(located$container), envir = env)
    save(list = located$names, envir = env, file = out)
  } else if (is.null(located$env)) {
    saveRDS(in_container(located$container), out)
  } else {
    saveRDS(updated, out)
  }
  invisible(out)
}

scb_existing_columns <- function(obj) {
  kind <- scb_kind(obj)
  if (kind == "seurat") return(colnames(attr(obj, "meta.data")))
  if (kind == "sce") return(colnames(SummarizedExperiment::colData(obj)))
  character(0)
}

# -- writing matrices -----------------------------------------------------------------------
# The cells x genes CSR arrays are the genes x cells dgCMatrix slots as they stand.
scb_make_dgc <- function(i, p, x, n_genes, n_cells, genes, cells) {
  methods::new("dgCMatrix", i = i, p = p, x = x, Dim = c(as.integer(n_genes), as.integer(n_cells)),
               Dimnames = list(genes, cells))
}

scb_make_container <- function(m, container, meta) {
  if (identical(container, "dgCMatrix")) return(m)
  if (identical(container, "SingleCellExperiment")) {
    if (!requireNamespace("SingleCellExperiment", quietly = TRUE)) {
      stop("scbridge[missing_dependency]: writing a SingleCellExperiment needs the Bioconductor package SingleCellExperiment")
    }
    cd <- if (is.null(meta)) S4Vectors::DataFrame(row.names = colnames(m)) else S4Vectors::DataFrame(meta, check.names = FALSE)
    return(SingleCellExperiment::SingleCellExperiment(assays = list(counts = m), colData = cd))
  }
  if (!requireNamespace("SeuratObject", quietly = TRUE)) {
    stop("scbridge[missing_dependency]: writing a Seurat object needs the R package SeuratObject")
  }
  SeuratObject::CreateSeuratObject(counts = m, meta.data = meta)
}

# -- write-back of a 2-D layout (bridge/io/_write_layout.py) ---------------------------------
scb_reduction_names <- function(obj) {
  kind <- scb_kind(obj)
  if (kind == "seurat") return(names(attr(obj, "reductions")))
  if (kind == "sce") return(SingleCellExperiment::reducedDimNames(obj))
  character(0)
}

# coords: cells x 2 in the object's cell order. Seurat: a DimReduc (SeuratObject's own
# constructor, so Embeddings(), DimPlot() and friends read it), set through attr<- like the
# meta.data columns above so that v5 objects need no v5 class definitions; SCE: reducedDim.
scb_add_reduction <- function(obj, name, key, coords, cells, assay) {
  rownames(coords) <- cells
  colnames(coords) <- paste0(key, seq_len(ncol(coords)))
  if (scb_kind(obj) == "seurat") {
    if (!requireNamespace("SeuratObject", quietly = TRUE)) {
      stop("scbridge: writing a layout into a Seurat object needs the R package SeuratObject")
    }
    if (!nzchar(assay)) assay <- as.character(attr(obj, "active.assay"))
    reduction <- SeuratObject::CreateDimReducObject(embeddings = coords, key = key,
                                                    assay = assay, global = FALSE)
    reductions <- attr(obj, "reductions")
    if (is.null(reductions)) reductions <- list()
    reductions[[name]] <- reduction
    attr(obj, "reductions") <- reductions
    return(obj)
  }
  SingleCellExperiment::reducedDim(obj, name) <- coords
  obj
}

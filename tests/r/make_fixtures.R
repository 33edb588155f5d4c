# Builds the R fixtures for the Python reader tests, and next to each one the exact values R
# itself reports: the expected cells x genes CSR (== the genes x cells dgCMatrix) as raw binary
# p / i / x, plus cell and gene names.  Usage: Rscript make_fixtures.R OUTDIR
suppressPackageStartupMessages({
  library(Matrix)
  library(SeuratObject)
  library(SingleCellExperiment)
  library(DelayedArray)
})
args <- commandArgs(trailingOnly = TRUE)
out <- args[[1]]
dir.create(out, showWarnings = FALSE, recursive = TRUE)
set.seed(1)

n_genes <- 40L
n_cells <- 30L
genes <- c("CD3E", "MS4A1", "NKG7", "LYZ", paste0("GENE", seq_len(n_genes - 4L)))
cells <- sprintf("cell_%02d", seq_len(n_cells))
counts <- Matrix::rsparsematrix(n_genes, n_cells, density = 0.3,
                                rand.x = function(n) as.double(rpois(n, 4) + 1))
dimnames(counts) <- list(genes, cells)
lognorm <- counts
lognorm@x <- log1p(lognorm@x / rep(Matrix::colSums(counts), diff(counts@p)) * 1e4)

# Expected values: m is genes x cells; its p/i/x are the cells x genes CSR.
expect <- function(name, m, cells, genes) {
  m <- as(m, "CsparseMatrix")
  writeBin(as.integer(m@p), file.path(out, paste0(name, ".p.bin")), size = 4)
  writeBin(as.integer(m@i), file.path(out, paste0(name, ".i.bin")), size = 4)
  writeBin(as.double(m@x), file.path(out, paste0(name, ".x.bin")), size = 8)
  writeLines(cells, file.path(out, paste0(name, ".cells.txt")))
  writeLines(genes, file.path(out, paste0(name, ".genes.txt")))
}
save_fixture <- function(obj, name) saveRDS(obj, file.path(out, paste0(name, ".rds")))

# -- Seurat v4 (SeuratObject 4.1 Assay) ----------------------------------------------------
meta <- data.frame(
  group = factor(rep(c("a", "b", "c"), length.out = n_cells), levels = c("c", "b", "a", "unused")),
  score = seq_len(n_cells) / 7,
  flag = rep(c(TRUE, FALSE, NA), length.out = n_cells),
  note = rep(c("x", NA, "z"), length.out = n_cells),
  row.names = cells
)
seu <- CreateSeuratObject(counts = counts, meta.data = meta)
seu <- SetAssayData(seu, slot = "data", new.data = lognorm)
adt <- Matrix::rsparsematrix(5L, n_cells, density = 0.6, rand.x = function(n) as.double(rpois(n, 20) + 1))
dimnames(adt) <- list(paste0("ADT", 1:5), cells)
seu[["ADT"]] <- CreateAssayObject(counts = adt)
save_fixture(seu, "seurat_v4")
expect("seurat_v4_counts", counts, cells, genes)
expect("seurat_v4_data", lognorm, cells, genes)
expect("seurat_v4_adt", adt, cells, rownames(adt))
writeLines(levels(meta$group), file.path(out, "seurat_v4.levels.txt"))

# -- Seurat v5 layout (SeuratObject 5 classes, defined here from their source) -------------
# StdAssay slots: layers, cells (LogMap), features (LogMap), default, assay.orig, meta.data,
# misc, key.  LogMap contains 'matrix'.  Layers are stored without dimnames.
v5 <- new.env()
setClass("LogMap", contains = "matrix", where = v5, package = "SeuratObject")
setClass("Assay5", where = v5, package = "SeuratObject", slots = c(
  layers = "list", cells = "LogMap", features = "LogMap", default = "integer",
  assay.orig = "character", meta.data = "data.frame", misc = "list", key = "character"
))
logmap <- function(values, members) {
  m <- matrix(FALSE, nrow = length(values), ncol = length(members),
              dimnames = list(values, names(members)))
  for (n in names(members)) m[members[[n]], n] <- TRUE
  new("LogMap", m)
}
undimnamed <- function(m) { dimnames(m) <- list(NULL, NULL); m }
make_v5 <- function(layers, layer_cells, layer_genes) {
  assay <- new("Assay5",
    layers = lapply(layers, undimnamed),
    cells = logmap(cells, layer_cells),
    features = logmap(genes, layer_genes),
    default = 1L, assay.orig = character(0),
    meta.data = data.frame(row.names = seq_along(genes))[, FALSE, drop = FALSE],
    misc = list(), key = "rna_")
  obj <- seu
  assays <- attr(obj, "assays")
  assays[["RNA"]] <- assay
  assays[["ADT"]] <- NULL
  attr(obj, "assays") <- assays
  attr(obj, "version") <- package_version("5.0.2")
  obj
}
all_cells <- setNames(list(cells, cells), c("counts", "data"))
all_genes <- setNames(list(genes, genes), c("counts", "data"))
save_fixture(make_v5(list(counts = counts, data = lognorm), all_cells, all_genes), "seurat_v5")
# Split layers: cells of samples A and B interleaved in the object's order.
in_a <- seq_len(n_cells) %% 3 != 0
cells_a <- cells[in_a]
cells_b <- cells[!in_a]
split <- make_v5(
  list(counts.A = counts[, cells_a], counts.B = counts[, cells_b], data = lognorm),
  list(counts.A = cells_a, counts.B = cells_b, data = cells),
  list(counts.A = genes, counts.B = genes, data = genes))
save_fixture(split, "seurat_v5_split")
# Split layers whose features differ (a gene absent from sample B's layer).
genes_b <- genes[-2]
split_genes <- make_v5(
  list(counts.A = counts[, cells_a], counts.B = counts[genes_b, cells_b]),
  list(counts.A = cells_a, counts.B = cells_b),
  list(counts.A = genes, counts.B = genes_b))
save_fixture(split_genes, "seurat_v5_split_genes")
counts_b_zeroed <- counts
counts_b_zeroed[2, cells_b] <- 0
expect("seurat_v5_split_genes", Matrix::drop0(counts_b_zeroed), cells, genes)

# -- SingleCellExperiment with each matrix class ------------------------------------------
coldata <- S4Vectors::DataFrame(meta)
make_sce <- function(m, name = "counts") {
  assays <- setNames(list(m), name)
  sce <- SingleCellExperiment(assays = assays, colData = coldata)
  rownames(sce) <- genes
  colnames(sce) <- cells
  sce
}
save_fixture(make_sce(counts), "sce_dgc")
save_fixture(make_sce(as(counts, "TsparseMatrix")), "sce_dgt")
save_fixture(make_sce(as.matrix(counts)), "sce_dense")
save_fixture(make_sce(DelayedArray(as.matrix(counts))), "sce_delayed")
save_fixture(make_sce(lognorm, "logcounts"), "sce_logcounts")
sce_both <- make_sce(counts)
SummarizedExperiment::assay(sce_both, "logcounts") <- lognorm
save_fixture(sce_both, "sce_both")
sce_no_coldata <- SingleCellExperiment(assays = list(counts = counts))  # colData with 0 columns
save_fixture(sce_no_coldata, "sce_no_coldata")

# -- bare matrices --------------------------------------------------------------------------
save_fixture(counts, "bare_dgc")
save_fixture(as(counts, "TsparseMatrix"), "bare_dgt")
save_fixture(as(counts, "RsparseMatrix"), "bare_dgr")
dense <- as.matrix(counts)
save_fixture(dense, "bare_dense")
dense_int <- dense
storage.mode(dense_int) <- "integer"
save_fixture(dense_int, "bare_dense_int")
bare <- counts
save(bare, file = file.path(out, "bare_dgc.RData"))

# -- bad inputs -----------------------------------------------------------------------------
bad <- counts; bad@x[3] <- NaN; save_fixture(bad, "bad_nan")
bad <- counts; bad@x[3] <- Inf; save_fixture(bad, "bad_inf")
bad <- counts; bad@x[3] <- -2; save_fixture(bad, "bad_negative")
bad <- counts; colnames(bad)[2] <- colnames(bad)[1]; save_fixture(bad, "bad_dup_cells")
bad <- counts; rownames(bad)[2] <- rownames(bad)[1]; save_fixture(bad, "bad_dup_genes")
bad <- counts
first_col <- seq.int(bad@p[1] + 1L, bad@p[2])
bad@i[first_col] <- rev(bad@i[first_col])  # @<- skips validity: unsorted row indices
bad@x[first_col] <- rev(bad@x[first_col])
save_fixture(bad, "bad_unsorted")
bad_seu <- seu
assay <- attr(bad_seu, "assays")[["RNA"]]
m <- attr(assay, "counts"); m@x[5] <- 2.5; attr(assay, "counts") <- m
assays <- attr(bad_seu, "assays"); assays[["RNA"]] <- assay; attr(bad_seu, "assays") <- assays
save_fixture(bad_seu, "bad_noninteger_counts")
zero <- SingleCellExperiment(assays = list(counts = counts[, 0]))
save_fixture(zero, "bad_zero_cells")
save_fixture(list(a = 1), "bad_class")
no_names <- counts; dimnames(no_names) <- list(NULL, NULL); save_fixture(no_names, "bad_no_names")
cat("fixtures written to", out, "\n")

# Objects as they come "from the wild" (issue 17), built with the real R packages, and next
# to each the exact values R itself reports (p / i / x of the genes x cells dgCMatrix, which
# are the cells x genes CSR, plus cell and gene names), as tests/r/make_fixtures.R does.
#
#   Rscript make_wild_fixtures.R OUTDIR ENSEMBL_TSV
#
# ENSEMBL_TSV: symbol<TAB>ensembl of genes the built-in marker model reads
# (r-package/tests/testthat/fixtures/model_genes_ensembl.tsv).
suppressPackageStartupMessages({
  library(Matrix)
  library(SeuratObject)
  library(SingleCellExperiment)
})
# The SCTAssay class comes with Seurat; without it a plain Assay with the same empty counts
# takes the same path through both readers.
has_seurat <- requireNamespace("Seurat", quietly = TRUE)
args <- commandArgs(trailingOnly = TRUE)
out <- args[[1]]
ids <- utils::read.delim(args[[2]], stringsAsFactors = FALSE)
dir.create(out, showWarnings = FALSE, recursive = TRUE)
set.seed(17)

expect <- function(name, m) {
  m <- as(m, "CsparseMatrix")
  writeBin(as.integer(m@p), file.path(out, paste0(name, ".p.bin")), size = 4)
  writeBin(as.integer(m@i), file.path(out, paste0(name, ".i.bin")), size = 4)
  writeBin(as.double(m@x), file.path(out, paste0(name, ".x.bin")), size = 8)
  writeLines(colnames(m), file.path(out, paste0(name, ".cells.txt")))
  writeLines(rownames(m), file.path(out, paste0(name, ".genes.txt")))
}
counts_for <- function(genes, cells, density = 0.2) {
  m <- Matrix::rsparsematrix(length(genes), length(cells), density = density,
                             rand.x = function(n) as.double(rpois(n, 3) + 1))
  dimnames(m) <- list(genes, cells)
  m
}
lognorm_of <- function(m) {
  m@x <- log1p(m@x / rep(Matrix::colSums(m), diff(m@p)) * 1e4)
  m
}

cells <- sprintf("AAAC%02d-1", seq_len(40L))
genes <- ids$symbol
counts <- counts_for(genes, cells)
seu <- suppressWarnings(CreateSeuratObject(
  counts = counts, meta.data = data.frame(sample = rep(c("A", "B"), 20L), row.names = cells)))
expect("wild_counts", counts)

# -- an .rda with two objects: the Seurat object and a data.frame (R packages' data/) ----------
pbmc <- seu
pbmc_markers <- data.frame(gene = genes[1:5], cluster = 1:5)
save(pbmc, pbmc_markers, file = file.path(out, "two_objects.rda"))
# Two objects scbridge could read: refused, both named.
pbmc_again <- seu
save(pbmc, pbmc_again, file = file.path(out, "two_seurats.RData"))

# -- lists: one supported object (a common saveRDS(list(obj))), or two -----------------------
saveRDS(list(seu), file.path(out, "list_one.rds"))
saveRDS(list(note = "filtered cells", pbmc = seu), file.path(out, "list_named.rds"))
sce <- SingleCellExperiment(assays = list(counts = counts))
saveRDS(list(seurat = seu, sce = sce), file.path(out, "list_two.rds"))

# -- mixed gene ids: Ensembl for 55% of the genes, symbols for the rest ----------------------
mixed <- counts
as_ensembl <- seq_len(length(genes)) <= round(0.55 * length(genes))
rownames(mixed)[as_ensembl] <- ids$ensembl[as_ensembl]
saveRDS(suppressWarnings(CreateSeuratObject(counts = mixed)), file.path(out, "mixed_ids.rds"))
expect("mixed_ids", mixed)

# -- an SCTAssay whose counts were dropped (DietSeurat(counts = FALSE)) ----------------------
lognorm <- lognorm_of(counts)
sct <- CreateAssayObject(data = lognorm)
if (has_seurat) sct <- methods::new("SCTAssay", sct, SCTModel.list = list())
stopifnot(prod(dim(attr(sct, "counts"))) == 0)
sct_seu <- seu
sct_seu[["SCT"]] <- sct
DefaultAssay(sct_seu) <- "SCT"
saveRDS(sct_seu, file.path(out, "sct_empty_counts.rds"))
expect("sct_data", lognorm)

# -- a SingleCellExperiment with an altExp (hashtag oligos) ----------------------------------
hto <- counts_for(sprintf("HTO-%d", 1:4), cells, density = 0.9)
sce_alt <- SingleCellExperiment(assays = list(counts = counts),
                                colData = S4Vectors::DataFrame(sample = rep(c("A", "B"), 20L),
                                                               row.names = cells))
altExp(sce_alt, "HTO") <- SummarizedExperiment::SummarizedExperiment(list(counts = hto))
saveRDS(sce_alt, file.path(out, "sce_altexp.rds"))
expect("hto_counts", hto)
# Only logcounts: the SCE twin of the SCTAssay case.
saveRDS(SingleCellExperiment(assays = list(logcounts = lognorm)),
        file.path(out, "sce_logcounts_only.rds"))
cat("wild fixtures written to", out, "\n")

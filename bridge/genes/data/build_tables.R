# Builds the gene tables shipped in bridge/genes/data from Bioconductor's org.Hs.eg.db
# (Debian: apt-get install r-bioc-org.hs.eg.db).  Run from the repository root:
#   Rscript bridge/genes/data/build_tables.R bridge/genes/data
# Nothing is downloaded at run time; these files are the whole mapping.
suppressPackageStartupMessages(library(org.Hs.eg.db))
args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[[1]] else "bridge/genes/data"
version <- as.character(packageVersion("org.Hs.eg.db"))

write_gz <- function(df, file, header) {
  con <- gzfile(file.path(out, file), "w")
  writeLines(header, con)
  write.table(df, con, sep = "\t", quote = FALSE, row.names = FALSE, col.names = FALSE)
  close(con)
}

symbols <- AnnotationDbi::toTable(org.Hs.egSYMBOL)          # gene_id, symbol
# Entrez names mitochondrial genes COX1, ND1, ...; HGNC (and every 10x / Ensembl reference)
# names them MT-CO1, MT-ND1, ...: use the HGNC form so "MT-" keeps meaning mitochondrial.
chr <- AnnotationDbi::toTable(org.Hs.egCHR)
mito <- symbols$gene_id %in% chr$gene_id[chr$chromosome == "MT"]
hgnc <- sub("^TRN", "T", sub("^CYTB$", "CYB", sub("^COX", "CO", symbols$symbol[mito])))
symbols$symbol[mito] <- paste0("MT-", hgnc)
ensembl <- AnnotationDbi::toTable(org.Hs.egENSEMBL)         # gene_id, ensembl_id
ens <- merge(ensembl, symbols, by = "gene_id")
# One symbol per Ensembl id: ids shared by several Entrez genes are ambiguous; drop them.
ens <- ens[!(ens$ensembl_id %in% ens$ensembl_id[duplicated(ens$ensembl_id)]), ]
ens <- ens[order(ens$ensembl_id), c("ensembl_id", "symbol")]
write_gz(ens, "ensembl_human.tsv.gz",
         sprintf("# human Ensembl gene id -> HGNC symbol; org.Hs.eg.db %s", version))

alias <- AnnotationDbi::toTable(org.Hs.egALIAS2EG)          # gene_id, alias_symbol
alias <- merge(alias, symbols, by = "gene_id")
alias <- alias[alias$alias_symbol != alias$symbol, ]
# An alias that is some gene's current symbol, or that names several genes, is not mapped.
alias <- alias[!(alias$alias_symbol %in% symbols$symbol), ]
alias <- alias[!(alias$alias_symbol %in% alias$alias_symbol[duplicated(alias$alias_symbol)]), ]
alias <- alias[order(alias$alias_symbol), c("alias_symbol", "symbol")]
write_gz(alias, "aliases_human.tsv.gz",
         sprintf("# previous / alias human symbol -> current HGNC symbol (unambiguous only); org.Hs.eg.db %s", version))

current <- data.frame(symbol = sort(unique(symbols$symbol)))
con <- gzfile(file.path(out, "symbols_human.txt.gz"), "w")
writeLines(sprintf("# current human gene symbols; org.Hs.eg.db %s", version), con)
writeLines(current$symbol, con)
close(con)
cat(nrow(ens), "Ensembl ids,", nrow(alias), "aliases,", nrow(current), "symbols\n")

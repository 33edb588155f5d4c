"""Gene identifiers: recognise the kind, map to human symbols, check enough genes are found.

Tables shipped in ``bridge/genes/data`` (built once from Bioconductor's org.Hs.eg.db /
org.Mm.eg.db, see ``data/README.md``; nothing is downloaded at run time):

- ``ensembl_human.tsv.gz``: human Ensembl gene id -> HGNC symbol
- ``ensembl_mouse.tsv.gz``: mouse Ensembl gene id -> mouse symbol (10x mm10-2020-A)
- ``orthologs_mouse_human.tsv.gz``: mouse symbol -> human symbol (Ensembl 105 orthologues)
- ``mouse_human.tsv.gz``: curated exceptions applied first
- ``aliases_human.tsv.gz``: previous / alias human symbol -> current HGNC symbol
"""

from __future__ import annotations

from ._detect import GeneIdKind, detect_gene_id_kind
from ._map import GeneMapping, check_genes_found, map_to_human_symbols

__all__ = ["GeneIdKind", "GeneMapping", "check_genes_found", "detect_gene_id_kind",
           "map_to_human_symbols"]

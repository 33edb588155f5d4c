"""Gene identifiers: recognise the kind, map to human symbols, check enough genes are found.

Tables shipped in ``bridge/genes/data`` (built once from Bioconductor's org.Hs.eg.db /
org.Mm.eg.db, see ``data/README.md``; nothing is downloaded at run time):

- ``ensembl_human.tsv.gz``: human Ensembl gene id -> HGNC symbol
- ``ensembl_mouse.tsv.gz``: mouse Ensembl gene id -> MGI symbol
- ``mouse_human.tsv.gz``: mouse symbol -> human symbol (orthologue by shared symbol, plus
  curated exceptions)
- ``aliases_human.tsv.gz``: previous / alias human symbol -> current HGNC symbol
"""

from __future__ import annotations

from ._detect import GeneIdKind, detect_gene_id_kind
from ._map import GeneMapping, check_genes_found, map_to_human_symbols

__all__ = ["GeneIdKind", "GeneMapping", "check_genes_found", "detect_gene_id_kind",
           "map_to_human_symbols"]

"""``scbridge embed IN --out OUT``: a per-cell PCA embedding as a table."""

from __future__ import annotations

import argparse

NAME = "embed"
HELP = "per-cell low-dimensional (PCA) embedding: cell, embedding[n]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help=".rds, .h5ad, Arrow CSR or 10x input")
    parser.add_argument("--out", required=True,
                        help="where to write it (.parquet, .arrow; .csv / .tsv get one column "
                             "per dimension)")
    parser.add_argument("--n-components", type=int, default=30,
                        help="dimensions (default 30)")
    parser.add_argument("--n-top-genes", type=int, default=2000,
                        help="highly variable genes used (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="solver seed (default 0)")
    parser.add_argument("--layout", choices=("auto", "umap-fast", "umap", "tsne", "pca"),
                        help="also a 2-D layout column (auto: UMAP-style on the kNN graph "
                             "when numba is installed, else PC 1 / PC 2)")
    parser.add_argument("--assay", help="Seurat / SCE assay")
    parser.add_argument("--layer", help="Seurat layer or AnnData X / raw / layer name")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    from .._embed import embed
    from ..io._files import refuse_clashes
    from ._table_io import write_table

    refuse_clashes({"--out": args.out}, [args.input])  # before any work
    table = embed(args.input, n_components=args.n_components, n_top_genes=args.n_top_genes,
                  assay=args.assay, layer=args.layer, seed=args.seed, layout=args.layout)
    path = write_table(table, args.out, inputs=[args.input])
    if not args.quiet:
        laid_out = (table.schema.metadata or {}).get(b"scbridge.layout")
        extra = f" and a 2-D layout ({laid_out.decode()})" if laid_out else ""
        print(f"{table.num_rows:,} cells x {args.n_components} components{extra} -> {path}")
    return 0

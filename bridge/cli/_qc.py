"""``scbridge qc IN --out OUT``: per-cell QC metrics and pass / fail, before annotating."""

from __future__ import annotations

import argparse

NAME = "qc"
HELP = "per-cell QC (total counts, genes, mito fraction, doublet score, pass / reason)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help=".rds, .RData, .h5ad, .arrow/.arrows, 10x folder or .h5")
    parser.add_argument("--out", required=True,
                        help="QC table: .parquet, .arrow, .csv, .tsv or .json (give it to "
                             "`scbridge annotate --qc-table`)")
    parser.add_argument("--assay", help="Seurat / SCE assay (default: active assay / counts)")
    parser.add_argument("--layer", help="layer: counts, data, an AnnData layer, raw")
    parser.add_argument("--min-counts", type=float, default=500, help="default 500")
    parser.add_argument("--min-genes", type=int, default=200, help="default 200")
    parser.add_argument("--max-mito-fraction", type=float, default=0.2, help="default 0.2")
    parser.add_argument("--max-doublet-score", type=float, default=0.3, help="default 0.3")
    parser.add_argument("--doublets", choices=("builtin", "scanpy", "none"), default="builtin",
                        help="doublet scores: built-in Scrublet algorithm (default), "
                             "scanpy.pp.scrublet, or none")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    import pyarrow.compute as pc

    from .._qc import QCThresholds, qc
    from ..io._files import refuse_clashes
    from ._table_io import write_table

    limits = QCThresholds(min_counts=args.min_counts, min_genes=args.min_genes,
                          max_mito_fraction=args.max_mito_fraction,
                          max_doublet_score=args.max_doublet_score)
    doublets = False if args.doublets == "none" else args.doublets
    refuse_clashes({"--out": args.out}, [args.input])  # before any work
    table = qc(args.input, thresholds=limits, doublets=doublets, assay=args.assay,
               layer=args.layer)
    path = write_table(table, args.out, inputs=[args.input])
    if not args.quiet:
        n = table.num_rows
        failed = n - int(pc.sum(table.column("qc_pass")).as_py() or 0)
        print(f"{n:,} cells, {failed:,} flagged by QC (column qc_reason) -> {path}")
    return 0

"""``scbridge rank-markers IN (--calls CALLS | --groups COL) --out OUT``: marker genes per label."""

from __future__ import annotations

import argparse

NAME = "rank-markers"
HELP = "top differentially expressed genes per label (label, gene, score, log2FC, adjusted p)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="the expression data: .rds, .h5ad, Arrow CSR or 10x")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--calls", help="calls from `scbridge annotate` (.parquet, .arrow, .csv, "
                                       ".json) or any table with cell and label columns")
    which.add_argument("--groups", metavar="COL",
                       help="use this cell metadata column of IN as the labels instead "
                            "(e.g. seurat_clusters)")
    parser.add_argument("--out", required=True,
                        help="where to write the marker table (.parquet, .arrow, .csv, .tsv, "
                             ".json)")
    parser.add_argument("--label-column", default="label",
                        help="label column of --calls (default label; e.g. label_smoothed)")
    parser.add_argument("--top-n", type=int, default=50, help="genes per label (default 50)")
    parser.add_argument("--method", choices=("t-test", "wilcoxon"), default="t-test",
                        help="test (default t-test)")
    parser.add_argument("--min-cells", type=int, default=3,
                        help="skip labels with fewer cells (default 3)")
    parser.add_argument("--both-directions", action="store_true",
                        help="also report genes lower in the label than in the rest")
    parser.add_argument("--assay", help="Seurat / SCE assay")
    parser.add_argument("--layer", help="Seurat layer or AnnData X / raw / layer name")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from .._errors import NotFoundError
    from .._rank_markers import rank_marker_genes
    from ..io import read
    from ..io._files import refuse_clashes
    from ._table_io import read_table, write_table

    inputs = [args.input, args.calls]
    refuse_clashes({"--out": args.out}, inputs)  # before any work
    matrix = read(args.input, assay=args.assay, layer=args.layer)
    if args.groups:
        if args.groups not in matrix.obs.column_names:
            columns = ", ".join(matrix.obs.column_names) or "none"
            msg = f"{args.input} has no cell metadata column {args.groups!r}; available: {columns}."
            raise NotFoundError(msg)
        calls = pa.table({"cell": matrix.cells.astype(str).tolist(),
                          "label": matrix.obs.column(args.groups)})
        label_column = "label"
    else:
        calls, label_column = read_table(args.calls), args.label_column
    table = rank_marker_genes(matrix, calls, label_column=label_column, top_n=args.top_n,
                    method=args.method, min_cells=args.min_cells,
                    only_up=not args.both_directions)
    path = write_table(table, args.out, inputs=inputs)
    if not args.quiet:
        labels = table.column("label").to_pylist()
        genes = table.column("gene").to_pylist()
        print(f"{len(set(labels))} labels, {table.num_rows:,} marker rows -> {path}")
        for label in dict.fromkeys(labels):
            top = [g for lab, g in zip(labels, genes, strict=True) if lab == label][:5]
            print(f"  {label}: {', '.join(top)}")
    return 0

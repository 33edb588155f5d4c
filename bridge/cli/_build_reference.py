"""``scbridge build-reference IN --label-column COL --out REF``: a reference from labelled cells."""

from __future__ import annotations

import argparse
import time

NAME = "build-reference"
HELP = "build a reference model (.parquet) from labelled cells for --model reference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="labelled Seurat / SCE .rds, .h5ad, Arrow CSR or 10x input")
    parser.add_argument("--label-column", required=True,
                        help="cell metadata column with the cell-type labels")
    parser.add_argument("--out", required=True, help="reference file to write (.parquet)")
    parser.add_argument("--assay", help="Seurat / SCE assay (default: the active one / counts)")
    parser.add_argument("--layer", help="Seurat layer or AnnData X / raw / layer name")
    parser.add_argument("--genes-per-label", type=int, default=200,
                        help="informative genes kept per label (default 200)")
    parser.add_argument("--regularization", type=float, default=0.03,
                        help="inverse L2 strength C of the logistic model (default 0.03)")
    parser.add_argument("--min-cells-per-label", type=int, default=10,
                        help="refuse labels with fewer cells (default 10)")
    parser.add_argument("--max-cells-per-label", type=int, default=5000,
                        help="subsample larger labels (default 5000; 0 keeps all)")
    parser.add_argument("--drop-label", action="append", default=None, metavar="LABEL",
                        help="label value meaning 'no label' (repeatable; default: empty, NA, "
                             "nan, None, Unknown)")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="skip temperature scaling of the confidences")
    parser.add_argument("--seed", type=int, default=0, help="seed for subsampling")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    from .._reference import build_reference

    out = args.out if args.out.lower().endswith(".parquet") else args.out + ".parquet"
    extra = {"drop_labels": tuple(args.drop_label)} if args.drop_label else {}
    started = time.perf_counter()
    model = build_reference(
        args.input, label_column=args.label_column, out=out, assay=args.assay,
        layer=args.layer, genes_per_label=args.genes_per_label,
        regularization=args.regularization, min_cells_per_label=args.min_cells_per_label,
        max_cells_per_label=args.max_cells_per_label or None,
        calibrate=not args.no_calibrate, seed=args.seed, **extra,
    )
    if not args.quiet:
        cells = model.training["cells_per_label"]
        print(f"reference {model.path}: {model.n_labels} labels, {len(model.genes):,} genes, "
              f"{sum(cells.values()):,} cells, built in {time.perf_counter() - started:.1f} s")
        width = max(len(label) for label in cells)
        for label, n in cells.items():
            print(f"  {label:<{width}}  {n:>7,} cells")
        print(f"use it: scbridge annotate QUERY --model reference --atlas {model.path} "
              "--out calls.parquet")
    return 0

"""``scbridge inspect IN``: what an object holds, without converting it."""

from __future__ import annotations

import argparse
import json
from typing import Any

NAME = "inspect"
HELP = "show class, assays, layers, dims, nnz, value kind and gene id kind of an input"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help=".rds, .RData, .h5ad, .arrow/.arrows, 10x folder or .h5, "
                                      "or a folder / glob / URL of Arrow CSR partitions")
    parser.add_argument("--assay", help="assay to sample for value and gene id kind")
    parser.add_argument("--layer", help="layer to sample for value and gene id kind")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def inspect(path: str, *, assay: str | None = None, layer: str | None = None) -> dict[str, Any]:
    """Describe ``path`` and read its default (or chosen) matrix for value and gene id kinds."""
    from .. import io
    from ..genes import detect_gene_id_kind
    from ..io.rds import reuse_loaded

    with reuse_loaded():  # an R file is loaded once for both
        info = io.describe(path)
        totals = _totals(info, layer) if io.can_stream(path) else None
        if totals is not None:
            # A file that streams can be larger than memory: its first chunk is the sample,
            # the totals are those describe() read from the file's own lengths.
            options = {k: v for k, v in (("assay", assay), ("layer", layer)) if v is not None}
            matrix = next(io.read_chunks(path, 1000, validate=False, **options))
            cells, nnz = totals
        else:
            matrix = io.read(path, assay=assay, layer=layer, validate=False)
            cells, nnz = matrix.n_cells, matrix.nnz
    data = matrix.X.data
    # Whole negative numbers are not counts: scaled data (Seurat scale.data) or damage.
    negative = bool(data.size) and float(data.min()) < 0
    value_kind = ("scaled (negative values: not counts, cannot be annotated)" if negative
                  else matrix.value_kind)
    info["default"] = {
        "source": matrix.source,
        "cells": cells,
        "genes": matrix.n_genes,
        "nnz": nnz,
        "value_kind": value_kind,
        "gene_id_kind": detect_gene_id_kind(matrix.genes),
        "first_genes": [str(g) for g in matrix.genes[:5]],
        "first_cells": [str(c) for c in matrix.cells[:3]],
        "obs_columns": matrix.obs.column_names,
    }
    return info


def _totals(info: dict[str, Any], layer: str | None) -> tuple[int, int] | None:
    """(cells, nnz) of the matrix inspected, from describe(), where it says."""
    if "cells" in info and "nnz" in info:
        return int(info["cells"]), int(info["nnz"])
    layers = [entry for assay in info.get("assays", {}).values()
              for name, entry in assay.get("layers", {}).items()
              if len(assay.get("layers", {})) == 1 or name == (layer or "X")]
    if len(layers) != 1 or layers[0].get("nnz") is None:
        return None
    return int(layers[0]["cells"]), int(layers[0]["nnz"])


def _text(info: dict[str, Any]) -> str:
    lines = [f"class: {info['class']}"]
    if info.get("kind") == "partitions":
        shown = info["partitions"][:3] + (["..."] if len(info["partitions"]) > 3 else [])
        lines.append(f"partitions: {len(info['partitions'])} ({', '.join(shown)})")
    for key in ("seurat_version", "active_assay", "source"):
        if info.get(key):
            lines.append(f"{key.replace('_', ' ')}: {info[key]}")
    for assay, spec in info.get("assays", {}).items():
        layers = spec.get("layers", {"": spec})
        cls = f" ({spec['class']})" if "class" in spec and "layers" in spec else ""
        lines.append(f"assay {assay}{cls}:")
        for name, layer in layers.items():
            nnz = "?" if layer.get("nnz") is None else f"{layer['nnz']:,}"
            lines.append(
                f"  {name or assay}: {layer['class']}, {layer['genes']:,} genes x "
                f"{layer['cells']:,} cells, nnz {nnz}"
            )
    for alt, assays in info.get("alt_exps", {}).items():
        lines.append(f"altExp {alt} (read with --assay altexp:{alt}):")
        for name, layer in assays.items():
            lines.append(f"  {name}: {layer['class']}, {layer['genes']:,} genes x "
                         f"{layer['cells']:,} cells")
    d = info["default"]
    lines += [
        f"default matrix: {d['source']}: {d['cells']:,} cells x {d['genes']:,} genes, "
        f"nnz {d['nnz']:,}",
        f"value kind: {d['value_kind']}",
        f"gene id kind: {d['gene_id_kind']} (e.g. {', '.join(d['first_genes'])})",
        f"cell metadata: {', '.join(d['obs_columns']) or 'none'}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    info = inspect(args.input, assay=args.assay, layer=args.layer)
    print(json.dumps(info, indent=2) if args.json else _text(info))
    return 0

"""Read 10x Genomics outputs: a ``matrix.mtx(.gz)`` folder or a ``filtered_feature_bc_matrix.h5``.

The HDF5 layout stores a genes x cells CSC matrix, which is the cells x genes CSR as it
stands.  Gene symbols are the default gene ids (as in Seurat's ``Read10X`` and scanpy); 10x
symbols are not always unique, so repeats get ``-1``, ``-2`` suffixes the way scanpy's
``var_names_make_unique`` does, with a warning.  ``var_names="gene_ids"`` uses the Ensembl ids.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.io
import scipy.sparse as sp

from .._errors import FormatError, InputError, NotFoundError
from ..matrix import CellMatrix

__all__ = ["describe_10x", "is_10x", "read_10x"]

logger = logging.getLogger(__name__)

VarNames = Literal["gene_symbols", "gene_ids"]
_GENE_EXPRESSION = "Gene Expression"


def _find(folder: Path, *names: str) -> Path | None:
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.exists():
                return candidate
    return None


def is_10x(path: Path) -> bool:
    """A folder holding ``matrix.mtx(.gz)``, the matrix file itself, or a 10x ``.h5``."""
    if path.is_dir():
        return _find(path, "matrix.mtx") is not None
    if path.name.startswith("matrix.mtx"):
        return True
    if path.suffix == ".h5":
        import h5py

        try:
            with h5py.File(path, "r") as f:
                return "matrix" in f or any("barcodes" in f[k] for k in f)
        except OSError:
            return False
    return False


def _read_lines(path: Path) -> list[list[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return [line.rstrip("\n").split("\t") for line in fh if line.strip()]


def make_unique(names: list[str], *, where: str) -> list[str]:
    """scanpy-style: the second ``X`` becomes ``X-1``, the third ``X-2``; warns once."""
    counts = Counter(names)
    if all(c == 1 for c in counts.values()):
        return names
    seen: Counter[str] = Counter()
    out = []
    taken = set(names)
    for name in names:
        if counts[name] > 1 and seen[name] > 0:
            new = f"{name}-{seen[name]}"
            while new in taken:
                seen[name] += 1
                new = f"{name}-{seen[name]}"
            taken.add(new)
            out.append(new)
        else:
            out.append(name)
        seen[name] += 1
    n_dup = sum(c - 1 for c in counts.values() if c > 1)
    logger.warning("%s: %d repeated gene symbols made unique with -1, -2 suffixes", where, n_dup)
    return out


def _finish(
    X: sp.csr_matrix,
    barcodes: list[str],
    ids: list[str],
    symbols: list[str],
    types: list[str],
    *,
    assay: str | None,
    var_names: VarNames,
    where: str,
    validate: bool,
) -> CellMatrix:
    feature_type = assay or _GENE_EXPRESSION
    available = sorted(set(types))
    keep = np.array([t == feature_type for t in types])
    if not keep.any():
        msg = (f"{where} has no features of type {feature_type!r}; "
               f"available: {', '.join(available)}.")
        raise NotFoundError(msg)
    if not keep.all():
        X = X[:, np.flatnonzero(keep)]
        ids = [g for g, k in zip(ids, keep, strict=True) if k]
        symbols = [g for g, k in zip(symbols, keep, strict=True) if k]
    genes = ids if var_names == "gene_ids" else make_unique(symbols, where=where)
    return CellMatrix(
        X,
        barcodes,
        genes,
        value_kind="counts",
        source=f"10x {feature_type} ({Path(where).name})",
        validate=validate,
    )


def _read_mtx_folder(
    path: Path, *, assay: str | None, var_names: VarNames, validate: bool
) -> CellMatrix:
    folder = path if path.is_dir() else path.parent
    where = str(folder)
    mtx = _find(folder, "matrix.mtx")
    barcodes_file = _find(folder, "barcodes.tsv")
    features_file = _find(folder, "features.tsv", "genes.tsv")
    if mtx is None or barcodes_file is None or features_file is None:
        msg = (
            f"{where} is not a complete 10x folder: it needs matrix.mtx, barcodes.tsv and "
            "features.tsv (or genes.tsv), optionally gzipped."
        )
        raise FormatError(msg)
    try:
        genes_by_cells = scipy.io.mmread(str(mtx))
    except (ValueError, OSError) as exc:
        msg = f"{mtx} is not a readable Matrix Market file ({exc})."
        raise FormatError(msg) from None
    X = sp.csr_matrix(genes_by_cells.T)
    barcodes = [row[0] for row in _read_lines(barcodes_file)]
    features = _read_lines(features_file)
    ids = [row[0] for row in features]
    symbols = [row[1] if len(row) > 1 else row[0] for row in features]
    types = [row[2] if len(row) > 2 else _GENE_EXPRESSION for row in features]
    if X.shape != (len(barcodes), len(features)):
        msg = (
            f"{where}: matrix.mtx is {X.shape[1]} features x {X.shape[0]} cells but there are "
            f"{len(features)} features and {len(barcodes)} barcodes listed."
        )
        raise FormatError(msg)
    return _finish(X, barcodes, ids, symbols, types, assay=assay, var_names=var_names,
                   where=where, validate=validate)


def _decode(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _read_h5(path: Path, *, assay: str | None, var_names: VarNames, validate: bool) -> CellMatrix:
    import h5py

    where = str(path)
    with h5py.File(path, "r") as f:
        if "matrix" in f:  # Cell Ranger >= 3
            g = f["matrix"]
            feats = g["features"]
            ids, symbols = _decode(feats["id"][:]), _decode(feats["name"][:])
            types = _decode(feats["feature_type"][:])
        else:  # Cell Ranger 2: one group per genome
            genomes = list(f.keys())
            if len(genomes) != 1:
                msg = f"{where} holds several genomes ({genomes}); split it with Cell Ranger first."
                raise InputError(msg)
            g = f[genomes[0]]
            ids, symbols = _decode(g["genes"][:]), _decode(g["gene_names"][:])
            types = [_GENE_EXPRESSION] * len(ids)
        n_features, n_cells = (int(v) for v in g["shape"][:])
        # genes x cells CSC == cells x genes CSR: the arrays are used as read.
        X = sp.csr_matrix(
            (g["data"][:], g["indices"][:], g["indptr"][:]), shape=(n_cells, n_features)
        )
        barcodes = _decode(g["barcodes"][:])
    return _finish(X, barcodes, ids, symbols, types, assay=assay, var_names=var_names,
                   where=where, validate=validate)


def read_10x(
    path: str | os.PathLike[str],
    *,
    assay: str | None = None,
    layer: str | None = None,
    var_names: VarNames = "gene_symbols",
    validate: bool = True,
    value_kind: str | None = None,
) -> CellMatrix:
    """Read a 10x folder or ``.h5``; ``assay`` picks the feature type (default Gene Expression)."""
    if layer is not None:
        msg = ("10x outputs have no layers; use assay= to pick a feature type "
               "(e.g. 'Antibody Capture').")
        raise InputError(msg)
    p = Path(path)
    if p.suffix == ".h5":
        return _read_h5(p, assay=assay, var_names=var_names, validate=validate)
    return _read_mtx_folder(p, assay=assay, var_names=var_names, validate=validate)


def describe_10x(path: str | os.PathLike[str]) -> dict[str, Any]:
    m = read_10x(path, validate=False)
    return {
        "class": "10x Genomics",
        "kind": "10x",
        "assays": {"Gene Expression": {"layers": {"counts": {
            "class": "csr", "cells": m.n_cells, "genes": m.n_genes, "nnz": m.nnz}}}},
    }

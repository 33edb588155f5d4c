"""Read 10x Genomics outputs: a ``matrix.mtx(.gz)`` folder or a ``filtered_feature_bc_matrix.h5``.

The HDF5 layout stores a genes x cells CSC matrix, which is the cells x genes CSR as it
stands.  Gene symbols are the default gene ids (as in Seurat's ``Read10X`` and scanpy); 10x
symbols are not always unique, so repeats get ``-1``, ``-2`` suffixes the way scanpy's
``var_names_make_unique`` does, with a warning.  ``var_names="gene_ids"`` uses the Ensembl ids.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.io
import scipy.sparse as sp

from .._errors import BridgeError, FormatError, InputError, NotFoundError
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


# Far beyond any real 10x output; a (compressed) file claiming more is refused while being
# read, so a small gzip bomb cannot fill memory with lines.
_MAX_LINES = {"barcodes": 20_000_000, "features": 2_000_000}
_DEFLATE_MAX_RATIO = 1032  # the most zlib's deflate can expand (RFC 1951 limits)
_HEADER_BYTES = 1 << 16


@contextlib.contextmanager
def _file_errors(path: Path, what: str) -> Iterator[None]:
    """Damaged text / gzip / Matrix Market content -> FormatError naming the file."""
    try:
        yield
    except (BridgeError, MemoryError):
        raise
    except Exception as exc:  # gzip, zlib, codecs and the mtx parser raise many types
        detail = str(exc).splitlines()[0][:300] if str(exc) else ""
        msg = (f"{path} is not a readable {what} ({type(exc).__name__}"
               f"{': ' + detail if detail else ''}); it may be truncated or damaged.")
        raise FormatError(msg) from None


def _open_binary(path: Path) -> Any:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_lines(path: Path, kind: str = "features") -> list[list[str]]:
    limit = _MAX_LINES[kind]
    rows: list[list[str]] = []
    with _file_errors(path, f"{kind} table"), _open_binary(path) as fh:
        for raw in fh:
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line.strip():
                continue
            if len(rows) >= limit:
                msg = f"{path} lists more than {limit:,} {kind}; it is not a 10x {kind} file."
                raise FormatError(msg)
            rows.append(line.split("\t"))
    return rows


def _mtx_header(path: Path) -> tuple[int, int, int, str]:
    """``(rows, columns, entries, field)`` from a Matrix Market header, checked against the
    file's size before the parser allocates anything for the entries it declares."""
    with _file_errors(path, "Matrix Market file"), _open_binary(path) as fh:
        banner = fh.readline(_HEADER_BYTES).decode("ascii", errors="replace").split()
        if len(banner) != 5 or banner[0].lower() != "%%matrixmarket":
            msg = f"{path} does not start with a '%%MatrixMarket' banner; not a matrix.mtx file."
            raise FormatError(msg)
        kind, layout, field, symmetry = (b.lower() for b in banner[1:])
        if kind != "matrix" or layout != "coordinate" or symmetry != "general" \
                or field not in ("integer", "real", "double", "pattern"):
            msg = (f"{path} is a Matrix Market '{' '.join(banner[1:])}' file; 10x matrices are "
                   "'matrix coordinate integer general' (or real / pattern).")
            raise FormatError(msg)
        size_line = b"%"
        read = 0
        while size_line.startswith(b"%") or not size_line.strip():
            size_line = fh.readline(_HEADER_BYTES)
            read += len(size_line)
            if not size_line or read > 64 * _HEADER_BYTES:
                msg = f"{path} has no size line (rows columns entries) after its banner."
                raise FormatError(msg)
        fields = size_line.split()
    try:
        rows, columns, entries = (int(v) for v in fields)
    except ValueError:
        msg = (f"{path}: the size line {size_line[:80]!r} is not three integers "
               "(rows columns entries).")
        raise FormatError(msg) from None
    if min(rows, columns, entries) < 0 or entries > rows * columns:
        msg = (f"{path}: the size line declares {rows:,} x {columns:,} with {entries:,} entries, "
               "which is impossible.")
        raise FormatError(msg)
    size = path.stat().st_size
    capacity = size * (_DEFLATE_MAX_RATIO if path.suffix == ".gz" else 1)
    shortest = 4 if field == "pattern" else 6  # "1 1\n", "1 1 1\n"
    if entries * shortest > capacity:
        msg = (f"{path} declares {entries:,} entries, more than a {size:,}-byte file can hold; "
               "it is truncated or damaged.")
        raise FormatError(msg)
    return rows, columns, entries, field


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
    barcodes = [row[0] for row in _read_lines(barcodes_file, "barcodes")]
    features = _read_lines(features_file, "features")
    ids = [row[0] for row in features]
    symbols = [row[1] if len(row) > 1 else row[0] for row in features]
    types = [row[2] if len(row) > 2 else _GENE_EXPRESSION for row in features]
    # The declared dimensions are checked before the parser allocates for them.
    n_rows, n_columns, _, _ = _mtx_header(mtx)
    if (n_columns, n_rows) != (len(barcodes), len(features)):
        msg = (
            f"{where}: matrix.mtx is {n_rows:,} features x {n_columns:,} cells but there are "
            f"{len(features):,} features and {len(barcodes):,} barcodes listed."
        )
        raise FormatError(msg)
    with _file_errors(mtx, "Matrix Market file"):
        genes_by_cells = scipy.io.mmread(str(mtx))
    X = sp.csr_matrix(genes_by_cells.T)
    return _finish(X, barcodes, ids, symbols, types, assay=assay, var_names=var_names,
                   where=where, validate=validate)


def _decode(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _read_h5(path: Path, *, assay: str | None, var_names: VarNames, validate: bool) -> CellMatrix:
    import h5py

    where = str(path)
    from .h5ad import check_declared_sizes

    with _file_errors(path, "10x HDF5 file"), h5py.File(path, "r") as f:
        check_declared_sizes(f, where)
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
        n_features, n_cells = _h5_dimensions(g, path, len(ids))
        # genes x cells CSC == cells x genes CSR: the arrays are used as read.
        X = sp.csr_matrix(
            (g["data"][:], g["indices"][:], g["indptr"][:]), shape=(n_cells, n_features)
        )
        barcodes = _decode(g["barcodes"][:])
    return _finish(X, barcodes, ids, symbols, types, assay=assay, var_names=var_names,
                   where=where, validate=validate)


def _h5_dimensions(g: Any, path: Path, n_ids: int) -> tuple[int, int]:
    """``(features, cells)`` of a 10x HDF5 matrix group, checked against its arrays (and the
    arrays against the file's size) before any of them is read."""
    import h5py

    def refuse(problem: str) -> FormatError:
        return FormatError(f"{path}: {problem}; the 10x HDF5 file is damaged.")

    parts = {k: g.get(k) for k in ("shape", "data", "indices", "indptr", "barcodes")}
    missing = [k for k, v in parts.items() if not isinstance(v, h5py.Dataset)]
    if missing:
        raise refuse(f"the matrix group lacks {', '.join(missing)}")
    if parts["shape"].shape != (2,):
        raise refuse(f"'shape' holds {parts['shape'].shape} values, not 2")
    n_features, n_cells = (int(v) for v in parts["shape"][:])
    lengths = {k: int(parts[k].shape[0]) if parts[k].shape else -1
               for k in ("data", "indices", "indptr", "barcodes")}
    if min(n_features, n_cells) < 0 or lengths["indptr"] != n_cells + 1:
        raise refuse(f"shape {n_features:,} x {n_cells:,} does not match indptr of "
                     f"{lengths['indptr']:,} entries")
    if lengths["barcodes"] != n_cells or n_ids != n_features:
        raise refuse(f"shape {n_features:,} x {n_cells:,} does not match {n_ids:,} features "
                     f"and {lengths['barcodes']:,} barcodes")
    if lengths["data"] != lengths["indices"] or lengths["data"] > n_features * n_cells:
        raise refuse(f"{lengths['data']:,} values and {lengths['indices']:,} indices for "
                     f"{n_features:,} x {n_cells:,}")
    size = path.stat().st_size
    declared = sum(lengths[k] * parts[k].dtype.itemsize for k in ("data", "indices", "indptr"))
    if declared > max(100 * size, 64 << 20):
        raise refuse(f"its arrays declare {declared:,} bytes, far more than a {size:,}-byte "
                     "file holds")
    return n_features, n_cells


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

"""Read and write AnnData (in memory or ``.h5ad``, including backed mode).

A file is checked with h5py before anndata reads it (:func:`check_h5ad_layout`): it must be
HDF5, every dataset's declared size must be plausible for the file's size (an HDF5 dataset
can declare any shape without storing it), and each matrix's shape must agree with ``obs``,
``var`` and its own ``indptr`` / ``indices`` / ``data``.  Whatever anndata or h5py raise on a
damaged file becomes a :class:`~bridge.FormatError` naming the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from .._errors import BridgeError, FormatError, InputError, NotFoundError
from ..matrix import CellMatrix
from ..numerics import spread_runs, value_kind_for_layer
from ._chunks import chunk_bounds
from ._files import atomic_output

if TYPE_CHECKING:
    import anndata
    import pandas as pd

    from ..numerics import ValueKind

__all__ = [
    "check_declared_sizes",
    "check_h5ad_layout",
    "describe_h5ad",
    "h5ad_errors",
    "iter_h5ad_chunks",
    "read_anndata",
    "read_h5ad",
    "write_h5ad",
]

logger = logging.getLogger(__name__)

_DENSE_BLOCK = 1 << 24
# A dataset may declare at most this many times the file's size (HDF5 compression of real
# expression data stays far below it), and always this much.
_EXPANSION = 100
_FLOOR_BYTES = 64 << 20


@contextlib.contextmanager
def h5ad_errors(where: str) -> Iterator[None]:
    """Turn h5py / anndata failures on a damaged file into a :class:`FormatError` naming it."""
    try:
        yield
    except (BridgeError, MemoryError):
        raise
    except Exception as exc:  # anndata and h5py raise many types on damaged files
        detail = str(exc).splitlines()[0][:300] if str(exc) else ""
        msg = (f"{where} cannot be read as an AnnData .h5ad file ({type(exc).__name__}"
               f"{': ' + detail if detail else ''}). It may be truncated, damaged or not an "
               ".h5ad file; write it again with anndata (adata.write_h5ad) or scbridge.")
        raise FormatError(msg) from None


def _index_length(f: Any, name: str) -> int | None:
    """Rows of the ``obs`` / ``var`` frame (``None`` when the layout is not recognised)."""
    import h5py

    node = f.get(name)
    if isinstance(node, h5py.Dataset):  # anndata < 0.7: a compound dataset
        return int(node.shape[0]) if node.shape else None
    if not isinstance(node, h5py.Group):
        return None
    index = node.attrs.get("_index")
    if isinstance(index, bytes):
        index = index.decode(errors="replace")
    if isinstance(index, str) and isinstance(node.get(index), h5py.Dataset):
        shape = node[index].shape
        return int(shape[0]) if shape else None
    return None


def _check_matrix(node: Any, expected: tuple[int | None, int | None], name: str,
                  where: str) -> None:
    """One matrix element (dense dataset or sparse group) against the frames' lengths."""
    import h5py

    def refuse(problem: str) -> FormatError:
        return FormatError(f"{where}: {name} {problem}; the file is damaged or was not written "
                           "by anndata. Write it again with anndata.")

    if isinstance(node, h5py.Dataset):
        shape = tuple(int(d) for d in node.shape)
        if len(shape) != 2:
            raise refuse(f"has {len(shape)} dimensions (shape {shape}), not 2")
    elif isinstance(node, h5py.Group):
        encoding = node.attrs.get("encoding-type", node.attrs.get("h5sparse_format", ""))
        encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
        if encoding.startswith("csr") or encoding.startswith("csc"):
            raw_shape = node.attrs.get("shape", node.attrs.get("h5sparse_shape"))
            try:
                shape = tuple(int(d) for d in np.asarray(raw_shape).ravel())
            except (TypeError, ValueError):
                raise refuse(f"has a shape attribute {raw_shape!r} that is not two integers") \
                    from None
            if len(shape) != 2 or min(shape) < 0:
                raise refuse(f"has shape {shape}, not two non-negative integers")
            parts = {k: node.get(k) for k in ("indptr", "indices", "data")}
            if not all(isinstance(v, h5py.Dataset) and len(v.shape) == 1 for v in parts.values()):
                raise refuse("lacks one of its indptr / indices / data arrays")
            compressed = shape[0] if encoding.startswith("csr") else shape[1]
            n_ptr, n_idx, n_data = (int(parts[k].shape[0]) for k in ("indptr", "indices", "data"))
            if n_ptr != compressed + 1:
                raise refuse(f"has {n_ptr:,} indptr entries for shape {shape} (needs "
                             f"{compressed + 1:,})")
            if n_idx != n_data:
                raise refuse(f"has {n_idx:,} indices but {n_data:,} values")
            if shape[0] * shape[1] < n_data:
                raise refuse(f"stores {n_data:,} values, more than its shape {shape} holds")
        else:
            return  # another encoding (dask, awkward ...): left to anndata
    else:
        return
    for axis, (got, want) in enumerate(zip(shape, expected, strict=True)):
        if want is not None and got != want:
            frame = "obs" if axis == 0 else "var"
            raise refuse(f"is {shape[0]:,} x {shape[1]:,} but {frame} has {want:,} rows")


def check_declared_sizes(f: Any, where: str) -> None:
    """Refuse an HDF5 file with a dataset declaring far more bytes than the file could hold
    (HDF5 lets a dataset declare any shape without storing it; reading it would allocate
    all of it)."""
    import h5py

    size = os.path.getsize(f.filename)
    limit = max(_EXPANSION * size, _FLOOR_BYTES)

    def declared(name: str, node: Any) -> None:
        if isinstance(node, h5py.Dataset) and node.shape is not None:
            n_bytes = int(np.prod(node.shape, dtype=np.float64)) * node.dtype.itemsize
            if n_bytes > limit:
                msg = (f"{where}: dataset {name} declares {n_bytes:,} bytes, far more than a "
                       f"{size:,}-byte file can hold; the file is damaged.")
                raise FormatError(msg)

    f.visititems(declared)


def check_h5ad_layout(path: str | os.PathLike[str]) -> None:
    """Refuse a file that is not HDF5, declares datasets far larger than it could hold, or
    whose matrices disagree with ``obs`` / ``var``; reads only metadata, never a matrix."""
    import h5py

    where = os.fspath(path)
    size = os.path.getsize(where)
    if size == 0 or not h5py.is_hdf5(where):
        msg = (f"{where} is not an HDF5 file, so not an .h5ad ({size:,} bytes: empty, "
               "truncated or another format).")
        raise FormatError(msg)
    with h5ad_errors(where), h5py.File(where, "r") as f:
        check_declared_sizes(f, where)
        n_obs, n_var = _index_length(f, "obs"), _index_length(f, "var")
        if "X" in f:
            _check_matrix(f["X"], (n_obs, n_var), "X", where)
        layers = f.get("layers")
        if isinstance(layers, h5py.Group):
            for name in layers:
                _check_matrix(layers[name], (n_obs, n_var), f"layer {name!r}", where)
        raw = f.get("raw")
        if isinstance(raw, h5py.Group) and "X" in raw:
            _check_matrix(raw["X"], (n_obs, _index_length(raw, "var")), "raw.X", where)


def _to_csr(X: Any, where: str) -> sp.csr_matrix:
    if sp.issparse(X):
        if X.format == "csr":
            return X if isinstance(X, sp.csr_matrix) else sp.csr_matrix(X, copy=False)
        logger.info("%s: %s matrix converted to CSR (a copy)", where, X.format)
        return sp.csr_matrix(X)
    dense = np.asarray(X)
    if dense.ndim != 2:
        msg = f"{where}: expected a 2-D matrix, got shape {dense.shape}"
        raise InputError(msg)
    step = max(1, _DENSE_BLOCK // max(dense.shape[1], 1))
    blocks = [sp.csr_matrix(dense[s : s + step]) for s in range(0, dense.shape[0], step)]
    return sp.vstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]


def obs_to_arrow(obs: pd.DataFrame) -> pa.Table:
    """AnnData ``obs`` as Arrow; categoricals become dictionary columns with all categories."""
    if obs.shape[1] == 0:
        return pa.table({})
    columns = {}
    for name in obs.columns:
        col = obs[name]
        try:
            columns[str(name)] = pa.Array.from_pandas(col)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[str(name)] = pa.array(col.astype(str).tolist(), pa.string())
    return pa.table(columns)


def _select(adata: anndata.AnnData, layer: str | None, where: str) -> tuple[Any, Any, str]:
    """(matrix, gene ids, name) for X, raw or a named layer."""
    if layer in (None, "X"):
        return adata.X, adata.var_names, "X"
    if layer == "raw":
        if adata.raw is None:
            available = ", ".join(adata.layers.keys()) or "no layers"
            msg = f"{where} has no .raw; available: X, {available}."
            raise NotFoundError(msg)
        return adata.raw.X, adata.raw.var_names, "raw"
    if layer not in adata.layers:
        choices = ["X", *adata.layers.keys()] + (["raw"] if adata.raw is not None else [])
        msg = f"{where} has no layer {layer!r}; available: {', '.join(choices)}."
        raise NotFoundError(msg)
    return adata.layers[layer], adata.var_names, layer


def read_anndata(
    adata: anndata.AnnData,
    *,
    layer: str | None = None,
    assay: str | None = None,
    value_kind: ValueKind | None = None,
    validate: bool = True,
    where: str = "the AnnData",
) -> CellMatrix:
    """A :class:`CellMatrix` sharing the AnnData's CSR arrays (no copy for CSR ``X``)."""
    if assay is not None:
        msg = f"{where}: AnnData has no assays; choose the matrix with layer= (X, raw or a layer)."
        raise InputError(msg)
    X, genes, name = _select(adata, layer, where)
    X = _to_csr(X, where)
    kind = value_kind or value_kind_for_layer(name, X.data)
    return CellMatrix(
        X,
        np.asarray(adata.obs_names, dtype=object),
        np.asarray(genes, dtype=object),
        obs=obs_to_arrow(adata.obs),
        value_kind=kind,
        source=f"AnnData {name}",
        validate=validate,
        keepalive=adata,
    )


def read_h5ad(
    path: str | os.PathLike[str],
    *,
    layer: str | None = None,
    assay: str | None = None,
    value_kind: ValueKind | None = None,
    validate: bool = True,
    backed: bool = False,
) -> CellMatrix:
    """Read an ``.h5ad`` file; ``backed=True`` leaves everything but the chosen matrix on disk."""
    import anndata

    where = os.fspath(path)
    check_h5ad_layout(where)
    with h5ad_errors(where):
        adata = anndata.read_h5ad(where, backed="r" if backed else None)
    if backed:
        X, genes, name = _select(adata, layer, where)
        # Backed sparse datasets load just this matrix; dense h5py datasets read as arrays.
        with h5ad_errors(where):
            X = _to_csr(X.to_memory() if hasattr(X, "to_memory") else X[...], where)
        matrix = CellMatrix(
            X,
            np.asarray(adata.obs_names, dtype=object),
            np.asarray(genes, dtype=object),
            obs=obs_to_arrow(adata.obs),
            value_kind=value_kind or value_kind_for_layer(name, X.data),
            source=f"AnnData {name} ({Path(where).name}, backed)",
            validate=False,
        )
        adata.file.close()
        if validate:
            matrix.validate(where=f"{where} (AnnData {name})")
        return matrix
    matrix = read_anndata(
        adata, layer=layer, assay=assay, value_kind=value_kind, validate=False, where=where
    )
    matrix.source = f"AnnData {matrix.source.split(' ', 1)[1]} ({Path(where).name})"
    if validate:
        matrix.validate(where=f"{where} ({matrix.source})")
    return matrix


def iter_h5ad_chunks(
    path: str | os.PathLike[str],
    chunk_size: int,
    *,
    layer: str | None = None,
    assay: str | None = None,
    value_kind: ValueKind | None = None,
    balanced: bool = False,
    validate: bool = True,
    sample: int | None = None,
) -> Iterator[CellMatrix]:
    """Stream an ``.h5ad`` in chunks of at most ``chunk_size`` cells (near-equal ones with
    ``balanced``) with backed mode (files larger than memory).  ``sample``: only about that
    many cells, in the evenly spread runs of :func:`bridge.numerics.spread_runs` (the cells
    an engine samples from a matrix in memory), read without the rest.

    A CSR matrix is read one slice of ``indptr`` / ``indices`` / ``data`` at a time (64-bit
    ``indptr`` beyond 2**31 values included: each chunk's offsets start at 0 again); each
    chunk is validated on its own.  A CSC matrix cannot be sliced by cells without reading
    every column, so it is read whole once (logged).
    """
    import anndata

    from .._arrow_csr import compact_offsets

    where = os.fspath(path)
    if assay is not None:
        msg = f"{where}: AnnData has no assays; choose the matrix with layer= (X, raw or a layer)."
        raise InputError(msg)
    check_h5ad_layout(where)
    with h5ad_errors(where):
        adata = anndata.read_h5ad(where, backed="r")
    try:
        X, genes, name = _select(adata, layer, where)
        if getattr(X, "format", None) == "csc":
            logger.warning("%s: %s is stored by genes (CSC); reading it whole to stream it by "
                           "cells (memory is not bounded: rewrite it as CSR for large files)",
                           where, name)
            X = _to_csr(X.to_memory(), where)
        genes = np.asarray(genes, dtype=object)
        obs = obs_to_arrow(adata.obs)
        cells = np.asarray(adata.obs_names, dtype=object)
        kind = value_kind
        bounds = (spread_runs(adata.n_obs, sample) if sample is not None else
                  chunk_bounds(adata.n_obs, chunk_size, balanced=balanced,
                               n_values=_stored_values(X)))
        for start, stop in bounds:
            with h5ad_errors(where):
                block = _to_csr(X[start:stop], where)
            block.indptr = compact_offsets(block.indptr)
            kind = kind or value_kind_for_layer(name, block.data)
            yield CellMatrix(
                block,
                cells[start:stop],
                genes,
                obs=obs.slice(start, stop - start) if obs.num_columns else None,
                value_kind=kind,
                source=f"AnnData {name} ({Path(where).name}, backed)",
                validate=validate,
            )
    finally:
        adata.file.close()


def _stored_values(X: Any) -> int:
    """Values a matrix stores, without reading it (a backed sparse matrix's ``data`` length)."""
    group = getattr(X, "group", None)
    if group is not None and "data" in group:
        return int(group["data"].shape[0])
    nnz = getattr(X, "nnz", None)
    return int(nnz) if nnz is not None else int(np.prod(X.shape))


def describe_h5ad(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Shapes and layers of an ``.h5ad`` without loading its matrices."""
    import anndata

    where = os.fspath(path)
    check_h5ad_layout(where)
    with h5ad_errors(where):
        adata = anndata.read_h5ad(where, backed="r")
    try:

        def entry(X: Any) -> dict[str, Any]:
            nnz = getattr(X, "nnz", None)
            if nnz is None and hasattr(X, "group"):
                nnz = int(X.group["data"].shape[0])
            return {"class": type(X).__name__, "cells": X.shape[0], "genes": X.shape[1], "nnz": nnz}

        with h5ad_errors(where):
            layers = {} if "X" not in adata.file else {"X": entry(adata.X)}
            layers.update({name: entry(adata.layers[name]) for name in adata.layers.keys()})
            if adata.raw is not None:
                layers["raw"] = entry(adata.raw.X)
        return {"class": "AnnData", "kind": "anndata", "assays": {"anndata": {"layers": layers}}}
    finally:
        adata.file.close()


def write_h5ad(matrix: CellMatrix, path: str | os.PathLike[str]) -> None:
    """Write ``matrix`` as ``.h5ad`` (values in ``X``; provenance in ``uns['scbridge']``),
    through a temporary file renamed over ``path`` when complete."""
    adata = matrix.to_anndata()
    with atomic_output(path) as temp:
        adata.write_h5ad(os.fspath(temp))

"""Read and write AnnData (in memory or ``.h5ad``, including backed mode)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from .._errors import InputError, NotFoundError
from ..matrix import CellMatrix
from ..numerics import value_kind_for_layer
from ._chunks import chunk_bounds

if TYPE_CHECKING:
    import anndata
    import pandas as pd

    from ..numerics import ValueKind

__all__ = ["describe_h5ad", "iter_h5ad_chunks", "read_anndata", "read_h5ad", "write_h5ad"]

logger = logging.getLogger(__name__)

_DENSE_BLOCK = 1 << 24


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
    adata = anndata.read_h5ad(where, backed="r" if backed else None)
    if backed:
        X, genes, name = _select(adata, layer, where)
        # Backed sparse datasets load just this matrix; dense h5py datasets read as arrays.
        X = _to_csr(X.to_memory() if hasattr(X, "to_memory") else X[...], where)
        matrix = CellMatrix(
            X,
            np.asarray(adata.obs_names, dtype=object),
            np.asarray(genes, dtype=object),
            obs=obs_to_arrow(adata.obs),
            value_kind=value_kind or value_kind_for_layer(name, X.data),
            source=f"AnnData {name} ({Path(where).name}, backed)",
            validate=validate,
        )
        adata.file.close()
        return matrix
    matrix = read_anndata(
        adata, layer=layer, assay=assay, value_kind=value_kind, validate=validate, where=where
    )
    matrix.source = f"AnnData {matrix.source.split(' ', 1)[1]} ({Path(where).name})"
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
) -> Iterator[CellMatrix]:
    """Stream an ``.h5ad`` in chunks of at most ``chunk_size`` cells (near-equal ones with
    ``balanced``) with backed mode (files larger than memory).

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
        bounds = chunk_bounds(adata.n_obs, chunk_size, balanced=balanced,
                              n_values=_stored_values(X))
        for start, stop in bounds:
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

    adata = anndata.read_h5ad(os.fspath(path), backed="r")
    try:

        def entry(X: Any) -> dict[str, Any]:
            nnz = getattr(X, "nnz", None)
            if nnz is None and hasattr(X, "group"):
                nnz = int(X.group["data"].shape[0])
            return {"class": type(X).__name__, "cells": X.shape[0], "genes": X.shape[1], "nnz": nnz}

        layers = {"X": entry(adata.X)}
        layers.update({name: entry(adata.layers[name]) for name in adata.layers.keys()})
        if adata.raw is not None:
            layers["raw"] = entry(adata.raw.X)
        return {"class": "AnnData", "kind": "anndata", "assays": {"anndata": {"layers": layers}}}
    finally:
        adata.file.close()


def write_h5ad(matrix: CellMatrix, path: str | os.PathLike[str]) -> None:
    """Write ``matrix`` as ``.h5ad`` (values in ``X``; provenance in ``uns['scbridge']``)."""
    matrix.to_anndata().write_h5ad(os.fspath(path))

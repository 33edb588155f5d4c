"""Per-cell low-dimensional embeddings as Arrow tables, and a 2-D layout for pictures.

``embed``: log1p(CP10k) per cell, the most variable genes (Seurat-style binned dispersion),
unit-variance scaling, then PCA by a truncated SVD of the implicitly centred sparse matrix
(ARPACK with a fixed start vector), so the cells x genes matrix is never densified and the
result is the same on every run.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.sparse.linalg import LinearOperator, svds

from ._contract import embedding_array, embedding_table
from ._errors import InputError
from .numerics import log_normalize

__all__ = ["embed", "embedding_array", "highly_variable_genes", "layout_2d"]

# embedding_array lives with the embedding table in the contract; re-exported for callers here.
_ = embedding_array

logger = logging.getLogger(__name__)


def highly_variable_genes(Xn: sp.csr_matrix, n_top: int = 2000, n_bins: int = 20) -> NDArray[Any]:
    """Column indices of the ``n_top`` genes with the highest binned, z-scored dispersion."""
    n_cells = Xn.shape[0]
    mean = np.asarray(Xn.mean(axis=0)).ravel().astype(np.float64)
    sq = np.asarray(Xn.multiply(Xn).mean(axis=0)).ravel()
    var = np.maximum(sq - mean**2, 0.0) * n_cells / max(n_cells - 1, 1)
    expressed = mean > 0
    if expressed.sum() <= n_top:
        return np.flatnonzero(expressed)
    dispersion = np.log(np.where(expressed, var / np.maximum(mean, 1e-12), 1.0) + 1e-12)
    edges = np.quantile(mean[expressed], np.linspace(0, 1, n_bins + 1))
    bins = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, n_bins - 1)
    z = np.full(len(mean), -np.inf)
    for b in range(n_bins):
        members = expressed & (bins == b)
        if members.sum() == 0:
            continue
        d = dispersion[members]
        sd = d.std()
        z[members] = (d - d.mean()) / sd if sd > 0 else 0.0
    return np.sort(np.argsort(-z, kind="stable")[:n_top])


def _pca(X: sp.csr_matrix, n_components: int, seed: int) -> NDArray[Any]:
    """Scores of the first components of the column-centred ``X`` (never densified)."""
    n_cells, n_genes = X.shape
    mu = np.asarray(X.mean(axis=0)).ravel()
    Xt = X.T.tocsr()
    ones = np.ones(n_cells)

    def matvec(v: NDArray[Any]) -> NDArray[Any]:
        v = np.ravel(v)
        return X @ v - mu @ v

    def matmat(V: NDArray[Any]) -> NDArray[Any]:
        return X @ V - np.outer(ones, mu @ V)

    def rmatvec(u: NDArray[Any]) -> NDArray[Any]:
        u = np.ravel(u)
        return Xt @ u - mu * u.sum()

    def rmatmat(U: NDArray[Any]) -> NDArray[Any]:
        return Xt @ U - np.outer(mu, U.sum(axis=0))

    operator = LinearOperator((n_cells, n_genes), matvec=matvec, rmatvec=rmatvec,
                              matmat=matmat, rmatmat=rmatmat, dtype=np.float64)
    v0 = np.random.default_rng(seed).uniform(-1, 1, min(n_cells, n_genes))
    u, s, vt = svds(operator, k=n_components, v0=v0, solver="arpack")
    order = np.argsort(-s)
    u, s, vt = u[:, order], s[order], vt[order]
    # Fix the sign of each component (largest loading positive) so runs agree exactly.
    signs = np.sign(vt[np.arange(len(s)), np.argmax(np.abs(vt), axis=1)])
    signs[signs == 0] = 1
    return (u * s * signs).astype(np.float32)


def _pca_scores(matrix: Any, n_components: int, n_top_genes: int, seed: int, *,
                clip: bool = False) -> tuple[NDArray[Any], int]:
    """PCA scores (float32) of the scaled variable genes, and how many genes were used;
    ``clip`` asks for fewer components instead of raising where there cannot be as many."""
    n_cells = matrix.n_cells
    if n_components < 1:
        msg = f"n_components must be at least 1, got {n_components}"
        raise InputError(msg, code="invalid_parameter")
    Xn = log_normalize(matrix.X, matrix.value_kind)
    genes = highly_variable_genes(Xn, n_top_genes)
    limit = min(n_cells, len(genes)) - 1
    if clip and limit >= 1:
        n_components = min(n_components, limit)
    if n_components > limit:
        msg = (f"{n_components} components need more than {n_components} cells and variable "
               f"genes; this input has {n_cells} cells and {len(genes)} expressed genes. Ask for "
               f"at most {max(limit, 0)}.")
        raise InputError(msg, code="invalid_parameter")
    Xg = Xn[:, genes].astype(np.float64)
    mean = np.asarray(Xg.mean(axis=0)).ravel()
    sd = np.sqrt(np.maximum(np.asarray(Xg.multiply(Xg).mean(axis=0)).ravel() - mean**2, 0.0))
    sd[sd < 1e-8] = 1.0
    return _pca((Xg @ sp.diags(1.0 / sd)).tocsr(), n_components, seed), len(genes)


def embed(
    source: Any,
    *,
    n_components: int = 30,
    n_top_genes: int = 2000,
    assay: str | None = None,
    layer: str | None = None,
    seed: int = 0,
    layout: str | None = None,
) -> pa.Table:
    """A PCA embedding of every cell, as an Arrow table.

    Parameters
    ----------
    source
        Anything :func:`bridge.read` accepts, or a ``CellMatrix``.
    n_components
        Dimensions of the embedding.
    n_top_genes
        Highly variable genes used.
    assay, layer
        Passed to :func:`bridge.read`.
    seed
        Seed of the solver's start vector (and of the layout); the same seed gives the same
        embedding.
    layout
        Also lay the cells out in 2-D from this PCA: ``"auto"`` (a UMAP-style layout on the
        kNN graph when numba is installed, else the first two components), ``"umap-fast"``,
        ``"umap"`` (umap-learn), ``"tsne"`` or ``"pca"``.  ``None``: no layout column.

    Returns
    -------
    pyarrow.Table
        ``cell`` (utf8) and ``embedding`` (``fixed_size_list<float32>[n_components]``), in
        input cell order, plus ``layout`` (``fixed_size_list<float32>[2]``) when asked;
        provenance in the schema metadata (``scbridge.layout`` names the layout method).
        The PCA, kNN graph and layout are computed once per ``CellMatrix`` and shared with
        kNN smoothing and the report.
    """
    from ._cellmap import layout as cell_layout
    from ._cellmap import pca_scores
    from .io import read
    from .matrix import CellMatrix

    matrix = source if isinstance(source, CellMatrix) else read(source, assay=assay, layer=layer)
    scores, n_genes = pca_scores(matrix, n_components=n_components, n_top_genes=n_top_genes,
                                 seed=seed)
    meta = {b"scbridge.embedding": b"pca", b"scbridge.n_top_genes": str(n_genes).encode(),
            b"scbridge.seed": str(seed).encode(), b"scbridge.source": matrix.source.encode()}
    table = embedding_table(matrix.cells.astype(str).tolist(), scores)
    if layout is not None:
        laid_out = cell_layout(matrix, method=layout, seed=seed, n_components=n_components,
                               n_top_genes=n_top_genes)
        if laid_out is None:
            msg = (f"{matrix.n_cells} cells are too few for a 2-D layout; pass layout=None.")
            raise InputError(msg, code="invalid_parameter")
        coords, method = laid_out
        table = table.append_column("layout", pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(coords, dtype=np.float32).ravel(), pa.float32()), 2))
        meta[b"scbridge.layout"] = method.encode()
    return table.replace_schema_metadata(meta)


def layout_2d(
    embedding: pa.Table | NDArray[Any],
    *,
    method: str = "auto",
    seed: int = 0,
    max_cells: int = 200_000,
) -> tuple[NDArray[Any], str]:
    """Two coordinates per cell for plotting, and the name of the method that made them.

    ``embedding`` is an embedding table (its ``embedding`` column) or a cells x components
    array.  ``method``: ``"auto"`` (a UMAP-style layout on the kNN graph, in parallel, when
    numba is installed and there are more than 15 cells; else the first two components),
    ``"umap-fast"`` (that layout), ``"umap"`` (umap-learn), ``"tsne"`` (scikit-learn) or
    ``"pca"``.  ``max_cells`` is kept for compatibility; every size is laid out now.
    """
    from ._cellmap import DISPLAY_NAMES, layout_points

    X = embedding_array(embedding) if isinstance(embedding, pa.Table) else np.asarray(embedding)
    coords, used = layout_points(X, method=method, seed=seed)
    return coords, DISPLAY_NAMES[used]

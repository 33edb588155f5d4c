"""The kNN graph of cells in PCA space, and a 2-D layout drawn from it (numerics layer).

Layer: numerics.  Imports numpy, scipy, numba (optional: the ``layout`` extra) and
``bridge._errors`` only; never engines, io, server or cli.

Two steps, each usable alone:

``nearest_neighbours(points, k)``
    Each cell's ``k`` nearest cells (itself first) by Euclidean distance.  Exact below
    :data:`EXACT_MAX_CELLS` cells (distance blocks by BLAS, the top ``k`` per row picked in
    parallel); above it, an inverted-file search (k-means lists, each cell scans the lists of
    its nearest centroids) followed by one neighbours-of-neighbours pass.  Without numba the
    exact blocked search runs in numpy (slower, same answer).

``umap_layout(graph, init)``
    UMAP's objective (McInnes et al. 2018: fuzzy simplicial set of the kNN graph, attraction
    along its edges, repulsion from negative samples) optimised by stochastic gradient descent
    in parallel over cells, deterministically: within an epoch every cell moves itself only,
    against the positions its neighbours had at the start of the epoch, with random numbers
    drawn from (seed, epoch, cell).  The result therefore depends on the seed alone, not on
    the number of threads or their timing (umap-learn gives that only single-threaded).

The numba kernels are compiled once and cached on disk (``cache=True``): beside this file
when the package folder is writable, else in numba's per-user cache folder
(``~/.cache/numba`` or ``$NUMBA_CACHE_DIR``), so a new process loads them instead of compiling.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from ._errors import InputError, MissingDependencyError

__all__ = [
    "EXACT_MAX_CELLS",
    "KnnGraph",
    "fuzzy_graph",
    "has_numba",
    "kernel_cache",
    "nearest_neighbours",
    "neighbourhood_preservation",
    "umap_layout",
    "warm_kernels",
]

logger = logging.getLogger(__name__)

EXACT_MAX_CELLS = 10_000
"""Up to this many cells the kNN graph is exact; above it, approximate (recall ~0.99)."""

# Below this, one layout epoch is too short for two threads: waiting at the end of each
# epoch's parallel loop costs more than the second thread gains (3,774 cells on 2 shared
# cores: 1.5 s on one thread, 2.7 s on two).
_PARALLEL_MIN_CELLS = 10_000

# Lists each cell scans (of ~sqrt(n)); with one neighbours-of-neighbours pass this finds
# 99-99.98% of the exact neighbours of resampled PBMCs at 30,000-100,000 cells.
_N_PROBE = 8
_NUMBA_HINT = ("install numba (pip install 'scbridge[layout]'), which compiles the layout "
               "once and caches it on disk")


def has_numba() -> bool:
    """Whether numba is installed (the fast kNN search and the layout need it)."""
    return find_spec("numba") is not None


def kernel_cache() -> dict[str, Any]:
    """Where numba keeps the compiled kernels, and whether each is there yet (``warm``).

    Imports numba (about 0.3 s) but compiles nothing.  A cold cache means the next search or
    layout compiles its kernels first (tens of seconds, once per installation and user).
    """
    if not has_numba():
        return {"numba": False, "warm": False, "path": None}
    kern = _kernels()

    paths, warm = set(), True
    for name in kern.__all__:
        cache = getattr(getattr(kern, name), "_cache", None)
        index = getattr(getattr(cache, "_cache_file", None), "_index_path", None)
        if index is None:  # numba changed its internals: say nothing rather than guess
            return {"numba": True, "warm": None, "path": None}
        paths.add(str(Path(index).parent))
        warm = warm and Path(index).exists()
    return {"numba": True, "warm": warm, "path": ", ".join(sorted(paths))}


def _kernels() -> Any:
    """:mod:`bridge._layout_kernels`, imported so that numba can always cache them.

    numba caches beside the source, else in the per-user cache folder; where neither can be
    written (a read-only image with no writable home) it refuses to define cached functions
    at all, so the cache then goes to a private folder under the temporary directory.
    """
    try:
        from . import _layout_kernels
    except RuntimeError as exc:
        if "cannot cache" not in str(exc):
            raise
        import numba

        folder = Path(tempfile.gettempdir()) / f"scbridge-numba-{os.getuid()}"
        numba.config.CACHE_DIR = str(folder)  # type: ignore[attr-defined]
        logger.warning("numba can write neither beside bridge/ nor to the user cache folder; "
                       "its compiled layout kernels go to %s (set NUMBA_CACHE_DIR to choose "
                       "a lasting place)", folder)
        from . import _layout_kernels
    return _layout_kernels


@dataclass(frozen=True)
class KnnGraph:
    """Each cell's nearest cells, itself first.

    Attributes
    ----------
    indices
        ``(n_cells, k)`` int32: row ``i`` holds ``i`` then its ``k - 1`` nearest other cells,
        nearest first.
    distances
        ``(n_cells, k)`` float32 Euclidean distances matching ``indices`` (column 0 is 0).
    exact
        Whether the search was exhaustive.
    """

    indices: NDArray[Any]
    distances: NDArray[Any]
    exact: bool

    @property
    def k(self) -> int:
        """Neighbours per cell, the cell itself included."""
        return int(self.indices.shape[1])

    def head(self, k: int) -> KnnGraph:
        """The same graph cut to ``k`` neighbours per cell (the cell itself included)."""
        if k > self.k:
            msg = f"the graph has {self.k} neighbours per cell; cannot cut it to {k}."
            raise InputError(msg)
        return KnnGraph(self.indices[:, :k], self.distances[:, :k], self.exact)


def _check_points(points: Any, what: str = "points") -> NDArray[Any]:
    X = np.asarray(points)
    if X.ndim != 2:
        msg = (f"{what} must be a 2-D array (cells x components), got shape {X.shape}; "
               "pass the PCA scores (bridge.embed) of the cells.")
        raise InputError(msg)
    if X.dtype.kind not in "fiu":
        msg = f"{what} must be numeric, got dtype {X.dtype}."
        raise InputError(msg)
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        bad = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
        msg = (f"{what} has NaN or infinite values (first in row {bad}); recompute the "
               "embedding from finite data.")
        raise InputError(msg)
    return X


# -- kNN search -----------------------------------------------------------------------------
def nearest_neighbours(points: Any, k: int = 15, *, exact: bool | None = None,
                       seed: int = 0) -> KnnGraph:
    """Each cell's ``k`` nearest cells (itself included, first) by Euclidean distance.

    Parameters
    ----------
    points
        Cells x components (PCA scores).
    k
        Neighbours per cell, the cell itself included (cut to the number of cells).
    exact
        Force the exhaustive search (``True``) or the approximate one (``False``); ``None``
        picks exact up to :data:`EXACT_MAX_CELLS` cells.
    seed
        Seed of the approximate search's k-means (the result is fixed for a seed).

    Returns
    -------
    KnnGraph
    """
    X = _check_points(points)
    n = X.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        msg = f"k must be a positive number of neighbours, got {k!r}."
        raise InputError(msg)
    if n == 0:
        return KnnGraph(np.zeros((0, 0), np.int32), np.zeros((0, 0), np.float32), True)
    k = int(min(k, n))
    use_exact = n <= EXACT_MAX_CELLS if exact is None else bool(exact)
    if k == 1:
        indices = np.arange(n, dtype=np.int32)[:, None]
        return KnnGraph(indices, np.zeros((n, 1), np.float32), True)
    if not has_numba():
        if not use_exact:
            logger.warning("numba is not installed: exact kNN search of %d cells in numpy "
                           "(slow); %s", n, _NUMBA_HINT)
        idx, dist = _exact_numpy(X, k - 1)
        return _with_self(idx, dist, exact=True)
    kern = _kernels()

    if use_exact:
        idx, dist = _exact_numba(X, k - 1, kern)
    else:
        idx, dist = _inverted_file(X, k - 1, seed, kern)
    return _with_self(idx, dist, exact=use_exact)


def _with_self(idx: NDArray[Any], dist: NDArray[Any], *, exact: bool) -> KnnGraph:
    n = idx.shape[0]
    indices = np.empty((n, idx.shape[1] + 1), np.int32)
    indices[:, 0] = np.arange(n)
    indices[:, 1:] = idx
    distances = np.zeros((n, idx.shape[1] + 1), np.float32)
    distances[:, 1:] = np.sqrt(np.maximum(dist, 0))
    return KnnGraph(indices, distances, exact)


def _block_rows(n: int) -> int:
    return int(max(64, min(4096, 2**25 // max(n, 1))))  # ~128 MB of float32 distances


def _distance_block(X: NDArray[Any], norms: NDArray[Any], start: int, stop: int) -> NDArray[Any]:
    block = X[start:stop] @ X.T
    block *= -2
    block += norms[start:stop, None]
    block += norms[None, :]
    return block


def _exact(X: NDArray[Any], m: int,
           select: Callable[[NDArray[Any], int, NDArray[Any], NDArray[Any]], None]
           ) -> tuple[NDArray[Any], NDArray[Any]]:
    """The ``m`` nearest other cells of every cell, exhaustively (squared distances): blocks of
    rows against all cells, each block's ``m`` smallest picked by ``select(block, start,
    idx_out, dist_out)``."""
    n = X.shape[0]
    norms = np.einsum("ij,ij->i", X, X)
    out_idx = np.empty((n, m), np.int32)
    out_dist = np.empty((n, m), np.float32)
    step = _block_rows(n)
    for start in range(0, n, step):
        stop = min(n, start + step)
        select(_distance_block(X, norms, start, stop), start, out_idx[start:stop],
               out_dist[start:stop])
    return out_idx, out_dist


def _exact_numpy(X: NDArray[Any], m: int) -> tuple[NDArray[Any], NDArray[Any]]:
    """:func:`_exact` with the selection in numpy."""

    def select(block: NDArray[Any], start: int, idx: NDArray[Any], dist: NDArray[Any]) -> None:
        rows = np.arange(block.shape[0])
        block[rows, rows + start] = np.inf  # a cell is not its own "other" neighbour
        part = np.argpartition(block, m - 1, axis=1)[:, :m]
        d = np.take_along_axis(block, part, axis=1)
        # Ties broken by index so that the result is the same whatever the partition did.
        order = np.lexsort((part, d), axis=1)
        idx[:] = np.take_along_axis(part, order, axis=1)
        dist[:] = np.take_along_axis(d, order, axis=1)

    return _exact(X, m, select)


def _exact_numba(X: NDArray[Any], m: int, kern: Any) -> tuple[NDArray[Any], NDArray[Any]]:
    """:func:`_exact` with the selection in the numba kernels (parallel over rows)."""
    return _exact(X, m, kern.select_rows)


def _kmeans(X: NDArray[Any], n_lists: int, seed: int, iterations: int = 8) -> NDArray[Any]:
    """Centroids of a few Lloyd iterations on a sample of cells (BLAS does the work)."""
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    sample = X[np.sort(rng.choice(n, min(n, 50 * n_lists), replace=False))]
    centroids = sample[np.sort(rng.choice(len(sample), n_lists, replace=False))].copy()
    for _ in range(iterations):
        assign = _nearest_centroid(sample, centroids)
        sums = np.zeros_like(centroids, dtype=np.float64)
        np.add.at(sums, assign, sample)
        counts = np.bincount(assign, minlength=n_lists)
        filled = counts > 0
        centroids[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
    return centroids


def _nearest_centroid(X: NDArray[Any], centroids: NDArray[Any]) -> NDArray[Any]:
    d = -2 * (X @ centroids.T) + np.einsum("ij,ij->i", centroids, centroids)[None, :]
    return np.asarray(d.argmin(axis=1), dtype=np.int64)


def _inverted_file(X: NDArray[Any], m: int, seed: int, kern: Any
                   ) -> tuple[NDArray[Any], NDArray[Any]]:
    """Approximate ``m`` nearest other cells: each cell scans the k-means lists of its own
    nearest centroids, then one pass over neighbours of neighbours mends the misses."""
    n = X.shape[0]
    n_lists = max(1, round(math.sqrt(n)))
    n_probe = min(n_lists, _N_PROBE)
    centroids = _kmeans(X, n_lists, seed)
    to_centroids = _squared_distances(X, centroids)
    assign = to_centroids.argmin(axis=1)
    probes = np.argpartition(to_centroids, n_probe - 1, axis=1)[:, :n_probe].astype(np.int32)
    del to_centroids
    order = np.argsort(assign, kind="stable").astype(np.int32)
    starts = np.searchsorted(assign[order], np.arange(n_lists + 1)).astype(np.int64)
    sorted_points = np.ascontiguousarray(X[order])  # each list contiguous in memory
    out_idx = np.empty((n, m), np.int32)
    out_dist = np.empty((n, m), np.float32)
    kern.search_lists(X, sorted_points, order, starts, probes, out_idx, out_dist)
    kern.refine(X, out_idx, out_dist)
    return out_idx, out_dist


def _squared_distances(A: NDArray[Any], B: NDArray[Any]) -> NDArray[Any]:
    d = -2 * (A @ B.T)
    d += np.einsum("ij,ij->i", A, A)[:, None]
    d += np.einsum("ij,ij->i", B, B)[None, :]
    return d


# -- quality --------------------------------------------------------------------------------
def neighbourhood_preservation(points: Any, coords: Any, k: int = 15, *,
                               graph: KnnGraph | None = None) -> float:
    """The mean fraction of each cell's ``k`` nearest cells in ``points`` (e.g. PCA) that are
    also among its ``k`` nearest cells in ``coords`` (the 2-D layout); 1 is perfect.

    ``graph`` may give the high-dimensional neighbours already found (exact ones: the score
    is only as good as them); the cell itself never counts.
    """
    from scipy.spatial import cKDTree

    C = _check_points(coords, "coords")
    n = C.shape[0]
    if graph is None:
        graph = nearest_neighbours(points, k + 1, exact=True)
    if graph.indices.shape[0] != n:
        msg = f"points have {graph.indices.shape[0]} cells, coords {n}."
        raise InputError(msg)
    kk = min(k, n - 1, graph.k - 1)
    if kk < 1:
        return float("nan")
    _, low = cKDTree(C).query(C, k=kk + 1, workers=-1)
    low = _drop_self(np.asarray(low).reshape(n, -1), kk)
    high = graph.indices[:, 1:kk + 1]
    low.sort(axis=1)
    hits = np.zeros(n, np.int64)
    for col in range(kk):  # membership of each high-D neighbour in the sorted 2-D row
        pos = np.minimum(_row_searchsorted(low, high[:, col]), kk - 1)
        hits += low[np.arange(n), pos] == high[:, col]
    return float(hits.mean() / kk)


def _drop_self(idx: NDArray[Any], k: int) -> NDArray[Any]:
    n = idx.shape[0]
    is_self = idx == np.arange(n)[:, None]
    # Where the cell itself is missing (ties with duplicates), drop the last column instead.
    is_self[~is_self.any(axis=1), -1] = True
    return idx[~is_self].reshape(n, -1)[:, :k]


def _row_searchsorted(sorted_rows: NDArray[Any], values: NDArray[Any]) -> NDArray[Any]:
    return (sorted_rows < values[:, None]).sum(axis=1)


# -- layout ---------------------------------------------------------------------------------
def fuzzy_graph(graph: KnnGraph) -> sp.csr_matrix:
    """UMAP's fuzzy simplicial set of a kNN graph: symmetric edge weights in (0, 1].

    Each cell's distances are shifted by the distance to its nearest other cell and scaled so
    that its weights sum to log2(k); the directed weights ``A`` are joined by fuzzy union
    ``A + A.T - A * A.T``.
    """
    n, k = graph.indices.shape
    if k < 2:
        return sp.csr_matrix((n, n), dtype=np.float32)
    weights = _membership(graph.distances[:, 1:].astype(np.float64), math.log2(k))
    rows = np.repeat(np.arange(n), k - 1)
    A = sp.csr_matrix((weights.ravel(), (rows, graph.indices[:, 1:].ravel())), shape=(n, n))
    A.sum_duplicates()
    At = A.T.tocsr()
    P = (A + At - A.multiply(At)).tocsr()
    P.eliminate_zeros()
    P.sort_indices()
    return P.astype(np.float32)


def _membership(dist: NDArray[Any], target: float, iterations: int = 64) -> NDArray[Any]:
    """Per-cell rho and sigma (bisection, vectorised over cells) and the resulting weights."""
    positive = np.where(dist > 0, dist, np.inf)
    rho = positive.min(axis=1)
    rho[~np.isfinite(rho)] = 0.0
    shifted = np.maximum(dist - rho[:, None], 0.0)
    lo = np.zeros(len(dist))
    hi = np.full(len(dist), np.inf)
    sigma = np.ones(len(dist))
    for _ in range(iterations):
        total = np.exp(-shifted / sigma[:, None]).sum(axis=1)
        above = total > target
        hi = np.where(above, sigma, hi)
        lo = np.where(above, lo, sigma)
        sigma = np.where(np.isfinite(hi), (lo + hi) / 2, sigma * 2)
    # As umap-learn: sigma no smaller than 1e-3 of the mean distance (of the cell, or of all).
    mean_all = dist.mean() if dist.size else 0.0
    mean_row = dist.mean(axis=1)
    floor = np.where(rho > 0, 1e-3 * mean_row, 1e-3 * mean_all)
    sigma = np.maximum(sigma, floor)
    sigma[sigma == 0] = 1.0
    return np.exp(-shifted / sigma[:, None])


def curve_parameters(min_dist: float, spread: float = 1.0) -> tuple[float, float]:
    """UMAP's ``a``, ``b``: ``1 / (1 + a d^(2b))`` fitted to the min_dist / spread curve."""
    from scipy.optimize import curve_fit

    x = np.linspace(0, spread * 3, 300)
    y = np.where(x < min_dist, 1.0, np.exp(-(x - min_dist) / spread))
    params, _ = curve_fit(lambda d, a, b: 1.0 / (1.0 + a * d ** (2 * b)), x, y)
    return float(params[0]), float(params[1])


def umap_layout(
    graph: KnnGraph,
    init: Any,
    *,
    n_epochs: int | None = None,
    min_dist: float = 0.5,
    spread: float = 1.0,
    negative_sample_rate: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> NDArray[Any]:
    """A 2-D layout of the kNN graph by UMAP's objective, in parallel and deterministic.

    Parameters
    ----------
    graph
        The cells' kNN graph (:func:`nearest_neighbours`).
    init
        Starting coordinates, cells x 2 (e.g. the first two principal components); they
        are rescaled to a 10 x 10 box.
    n_epochs
        Passes over the edges (200, umap-learn's figure above 10,000 cells; its 500 below
        that added 0.006 to the neighbourhood preservation of 3,774 PBMCs for 2.5x the time).
    min_dist, spread
        How tightly points may pack (scanpy's defaults: 0.5, 1.0).
    negative_sample_rate
        Repulsive samples per attractive one.
    seed
        The same seed gives the same layout, whatever the number of threads.
    progress
        Show a tqdm bar over the epochs.

    Returns
    -------
    numpy.ndarray
        Cells x 2, float32.
    """
    if not has_numba():
        msg = f"the UMAP-style layout needs numba: {_NUMBA_HINT}."
        raise MissingDependencyError(msg)
    from tqdm.auto import tqdm

    kern = _kernels()

    Y = _check_points(init, "init")
    n = graph.indices.shape[0]
    if Y.shape != (n, 2):
        msg = f"init must be {n} x 2 (one point per cell of the graph), got {Y.shape}."
        raise InputError(msg)
    if n_epochs is None:
        n_epochs = 200
    if n_epochs < 1:
        msg = f"n_epochs must be at least 1, got {n_epochs}."
        raise InputError(msg)
    a, b = curve_parameters(min_dist, spread)
    P = fuzzy_graph(graph)
    Y = _rescale(Y)
    if P.nnz == 0:
        return Y
    weights = P.data.astype(np.float64)
    keep = weights >= weights.max() / n_epochs  # as umap-learn: too weak to be sampled once
    if not keep.all():
        P.data[~keep] = 0
        P.eliminate_zeros()
        weights = P.data.astype(np.float64)
    epochs_per_sample = weights.max() / weights
    next_sample = epochs_per_sample.copy()
    epochs_per_negative = epochs_per_sample / negative_sample_rate
    next_negative = epochs_per_negative.copy()
    indptr = P.indptr.astype(np.int64)
    indices = P.indices.astype(np.int32)
    snapshot = Y.copy()
    with _threads(1 if n < _PARALLEL_MIN_CELLS else None):
        for epoch in tqdm(range(n_epochs), desc="layout", unit="epoch", disable=not progress,
                          leave=False):
            alpha = 1.0 - epoch / n_epochs
            kern.layout_epoch(Y, snapshot, indptr, indices, epochs_per_sample, next_sample,
                              epochs_per_negative, next_negative, epoch, a, b, alpha,
                              np.uint64(seed & 0xFFFFFFFF))
            snapshot[:] = Y
    return Y


@contextmanager
def _threads(n_threads: int | None) -> Iterator[None]:
    """numba's threads for the enclosed parallel loops (``None``: all), restored after."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(before if n_threads is None else min(n_threads, before))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def warm_kernels() -> dict[str, Any]:
    """Compile (or load) every kernel once on a tiny input, e.g. at installation, so that no
    user's first layout pays for compiling; returns :func:`kernel_cache`."""
    if not has_numba():
        msg = f"nothing to compile: {_NUMBA_HINT}."
        raise MissingDependencyError(msg)
    points = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)
    graph = nearest_neighbours(points, 10, exact=True)
    nearest_neighbours(points, 10, exact=False)
    umap_layout(graph, points[:, :2], n_epochs=2)
    return kernel_cache()


def _rescale(Y: NDArray[Any]) -> NDArray[Any]:
    lo, hi = Y.min(axis=0), Y.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return np.ascontiguousarray(10.0 * (Y - lo) / span, dtype=np.float32)


def reduction_kind(method: str) -> str:
    """The short name a layout is stored under in an R or AnnData object: ``umap`` for
    both UMAP methods, else the method itself."""
    return "umap" if method.startswith("umap") else method

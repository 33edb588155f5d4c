"""numba kernels of :mod:`bridge._layout` (imported only when numba is installed).

Layer: numerics.  Every kernel is compiled with ``cache=True``: numba keeps the machine code
in ``__pycache__`` beside this file or, where that folder cannot be written (a read-only
site-packages), in its per-user cache folder, so only the first process ever compiles.
Parallel loops (``prange``) write only to rows they own, so results never depend on the
number of threads.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import prange
from numpy.typing import NDArray

__all__ = ["layout_epoch", "refine", "search_lists", "select_rows"]



@numba.njit(cache=True, nogil=True, inline="always")
def _insert(best_d: NDArray[Any], best_i: NDArray[Any], d: Any, j: int) -> None:
    """Insert (d, j) into the ascending (best_d, best_i) if it is closer than the last;
    equal distances keep the lower index first, so ties never depend on scan order."""
    m = best_d.shape[0]
    if d > best_d[m - 1] or (d == best_d[m - 1] and j >= best_i[m - 1]):
        return
    for q in range(m):  # already present (found through two routes)
        if best_i[q] == j:
            return
    p = m - 1
    while p > 0 and (best_d[p - 1] > d or (best_d[p - 1] == d and best_i[p - 1] > j)):
        best_d[p] = best_d[p - 1]
        best_i[p] = best_i[p - 1]
        p -= 1
    best_d[p] = d
    best_i[p] = j


@numba.njit(cache=True, nogil=True, parallel=True)
def select_rows(block: NDArray[Any], start: int, out_idx: NDArray[Any], out_dist: NDArray[Any]
                ) -> None:
    """The smallest entries of each row of a squared-distance block, skipping the cell
    itself (column ``start + row``)."""
    rows, n = block.shape
    m = out_idx.shape[1]
    for r in prange(rows):
        best_d = np.full(m, np.inf, np.float32)
        best_i = np.full(m, np.int32(2**31 - 1), np.int32)
        me = start + r
        for j in range(n):
            if j != me and block[r, j] < best_d[m - 1]:
                _insert(best_d, best_i, block[r, j], j)
        out_idx[r] = best_i
        out_dist[r] = best_d


@numba.njit(cache=True, nogil=True, inline="always", fastmath=True)
def _squared_full(X: NDArray[Any], i: int, Y: NDArray[Any], j: int) -> Any:
    d = np.float32(0.0)
    for q in range(X.shape[1]):
        diff = X[i, q] - Y[j, q]
        d += diff * diff
    return d


@numba.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def search_lists(X: NDArray[Any], sorted_points: NDArray[Any], order: NDArray[Any],
                 starts: NDArray[Any], probes: NDArray[Any], out_idx: NDArray[Any],
                 out_dist: NDArray[Any]) -> None:
    """Scan the inverted lists of each cell's own nearest centroids for its nearest cells."""
    n = X.shape[0]
    m = out_idx.shape[1]
    for i in prange(n):
        best_d = np.full(m, np.inf, np.float32)
        best_i = np.full(m, np.int32(2**31 - 1), np.int32)
        for p in range(probes.shape[1]):
            c = probes[i, p]
            for t in range(starts[c], starts[c + 1]):
                d = _squared_full(X, i, sorted_points, t)
                if d <= best_d[m - 1]:
                    j = order[t]
                    if j != i:
                        _insert(best_d, best_i, d, j)
        out_idx[i] = best_i
        out_dist[i] = best_d


@numba.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def refine(X: NDArray[Any], idx: NDArray[Any], dist: NDArray[Any]) -> None:
    """One neighbours-of-neighbours pass: each cell also checks its neighbours' neighbours
    (read from the input lists, written to new ones, so the pass is order-free)."""
    n, m = idx.shape
    new_idx = idx.copy()
    new_dist = dist.copy()
    for i in prange(n):
        best_d = dist[i].copy()
        best_i = idx[i].copy()
        for a in range(m):
            u = idx[i, a]
            if u < 0 or u >= n:
                continue
            for b in range(m):
                j = idx[u, b]
                if j == i or j < 0 or j >= n:
                    continue
                d = _squared_full(X, i, X, j)
                if d <= best_d[m - 1]:
                    _insert(best_d, best_i, np.float32(d), j)
        new_idx[i] = best_i
        new_dist[i] = best_d
    idx[:] = new_idx
    dist[:] = new_dist


@numba.njit(cache=True, nogil=True, inline="always")
def _mix(x: np.uint64) -> np.uint64:
    """splitmix64: a well-mixed 64-bit value from any 64-bit state."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    z = x
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, nogil=True, inline="always")
def _clip(v: Any) -> Any:
    if v > np.float32(4.0):
        return np.float32(4.0)
    if v < np.float32(-4.0):
        return np.float32(-4.0)
    return v


@numba.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def layout_epoch(Y: NDArray[Any], snapshot: NDArray[Any], indptr: NDArray[Any],
                 indices: NDArray[Any],
                 epochs_per_sample: NDArray[Any], next_sample: NDArray[Any],
                 epochs_per_negative: NDArray[Any], next_negative: NDArray[Any], epoch: int,
                 a: float, b: float, alpha: float, seed: np.uint64) -> None:
    """One epoch of UMAP's SGD: every cell moves itself (row ``i`` of ``Y``) against the
    start-of-epoch positions ``snapshot``; random draws come from (seed, epoch, cell).
    Single precision throughout (``powf`` is twice as fast as ``pow``)."""
    n = Y.shape[0]
    un = np.uint64(n)
    a32, b32, alpha32 = np.float32(a), np.float32(b), np.float32(alpha)
    pull = np.float32(-2.0) * a32 * b32
    push = np.float32(2.0) * b32
    base = _mix(seed * np.uint64(0x100000001B3) + np.uint64(epoch))
    for i in prange(n):
        state = _mix(base ^ (np.uint64(i) * np.uint64(0xD6E8FEB86659FD93)))
        y0 = snapshot[i, 0]
        y1 = snapshot[i, 1]
        for e in range(indptr[i], indptr[i + 1]):
            if next_sample[e] > epoch:
                continue
            j = indices[e]
            d0 = y0 - snapshot[j, 0]
            d1 = y1 - snapshot[j, 1]
            d2 = d0 * d0 + d1 * d1
            if d2 > np.float32(0.0):
                powered = d2**b32
                coeff = pull * (powered / d2) / (a32 * powered + np.float32(1.0))
                # The edge appears in both cells' rows and each end moves only itself, where
                # umap-learn moves both ends at both visits: twice the pull per visit.
                y0 += np.float32(2.0) * _clip(coeff * d0) * alpha32
                y1 += np.float32(2.0) * _clip(coeff * d1) * alpha32
            next_sample[e] += epochs_per_sample[e]
            n_negative = int((epoch - next_negative[e]) / epochs_per_negative[e])
            for _ in range(n_negative):
                state = _mix(state)
                k = np.int64(((state >> np.uint64(32)) * un) >> np.uint64(32))  # in [0, n)
                if k == i:
                    continue
                d0 = y0 - snapshot[k, 0]
                d1 = y1 - snapshot[k, 1]
                d2 = d0 * d0 + d1 * d1
                if d2 > np.float32(0.0):  # as umap-learn, a coincident sample exerts no force
                    coeff = push / ((np.float32(0.001) + d2) * (a32 * d2**b32 + np.float32(1.0)))
                    y0 += _clip(coeff * d0) * alpha32
                    y1 += _clip(coeff * d1) * alpha32
            next_negative[e] += n_negative * epochs_per_negative[e]
        Y[i, 0] = y0
        Y[i, 1] = y1

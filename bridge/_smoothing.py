"""Label smoothing over user groups or a kNN graph (majority vote, as CellTypist's
majority voting), reported beside the per-cell call and never overwriting it.

Columns: ``label_smoothed`` (the majority label of the cell's group or neighbourhood) and
``smoothed_confidence`` (the fraction of the group / neighbourhood that carries that label).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from ._errors import InputError

if TYPE_CHECKING:
    from .matrix import CellMatrix

__all__ = ["knn_graph", "smooth_labels"]

logger = logging.getLogger(__name__)

DEFAULT_K = 15


def _majority_by_group(labels: NDArray[Any], groups: NDArray[Any]
                       ) -> tuple[NDArray[Any], NDArray[Any]]:
    group_keys = np.array(["" if g is None else str(g) for g in groups], dtype=object)
    _, group_code = np.unique(group_keys, return_inverse=True)
    label_values, label_code = np.unique(labels.astype(str), return_inverse=True)
    counts = np.zeros((group_code.max() + 1, len(label_values)), dtype=np.int64)
    np.add.at(counts, (group_code, label_code), 1)
    winner = counts.argmax(axis=1)
    share = counts.max(axis=1) / counts.sum(axis=1)
    return label_values[winner][group_code], share[group_code]


def knn_graph(matrix: CellMatrix, k: int = DEFAULT_K, *, n_components: int = 30,
              seed: int = 0) -> NDArray[Any]:
    """Indices (cells x k) of each cell's nearest neighbours (itself included, first) in the
    PCA of :func:`bridge.embed`: the same graph the 2-D layout is drawn from, computed once
    per matrix (:mod:`bridge._cellmap`)."""
    from ._cellmap import neighbours

    return neighbours(matrix, k, n_components=n_components, seed=seed).indices


def smooth_labels(calls: pa.Table, *, matrix: CellMatrix | None = None,
                  groups: NDArray[Any] | None = None, k: int | str | None = None) -> pa.Table:
    """``label_smoothed`` and ``smoothed_confidence`` for the calls.

    Parameters
    ----------
    calls
        A Calls table (its ``label`` column is voted on).
    matrix
        The cells (needed for the kNN graph).
    groups
        One group value per cell (clusters); wins over ``k``.
    k
        Neighbours of the kNN vote (``"knn"`` means 15).
    """
    labels = np.asarray(pc.cast(calls.column("label"), pa.string()).to_pylist(), dtype=object)
    if groups is not None:
        if len(groups) != len(labels):
            msg = f"groups has {len(groups)} values for {len(labels)} cells."
            raise InputError(msg)
        smoothed, share = _majority_by_group(labels, np.asarray(groups, dtype=object))
    else:
        if matrix is None:
            msg = "kNN smoothing needs the matrix."
            raise InputError(msg)
        n_neighbours = DEFAULT_K if k in (None, "knn", True) else int(k)
        if n_neighbours < 1:
            msg = f"smooth must be 'knn' or a positive neighbour count, got {k!r}."
            raise InputError(msg)
        if len(labels) == 0:
            smoothed, share = labels, np.zeros(0)
        else:
            neighbours = knn_graph(matrix, n_neighbours)
            smoothed, share = _vote_neighbours(labels, neighbours)
    return pa.table({
        "label_smoothed": pa.array(list(smoothed), pa.string()).dictionary_encode(),
        "smoothed_confidence": pa.array(np.asarray(share, dtype=np.float32), pa.float32()),
    })


def _vote_neighbours(labels: NDArray[Any], neighbours: NDArray[Any]
                     ) -> tuple[NDArray[Any], NDArray[Any]]:
    values, code = np.unique(labels.astype(str), return_inverse=True)
    votes = code[neighbours]  # cells x k
    counts = np.zeros((len(labels), len(values)), dtype=np.int32)
    np.add.at(counts, (np.repeat(np.arange(len(labels)), votes.shape[1]), votes.ravel()), 1)
    winner = counts.argmax(axis=1)
    return values[winner], counts.max(axis=1) / votes.shape[1]

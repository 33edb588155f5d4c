"""Applying a reference: one sparse x dense product per chunk, a softmax per cell.

Each cell is normalised by its own total, so the calls never depend on how the cells were
chunked.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from ..._contract import ChunkCalls
from ..._errors import GeneIdError, InputError
from ...numerics import log_normalize
from .._base import ChunkedEngine, GeneLayoutCache
from ._format import ReferenceModel, load_reference

if TYPE_CHECKING:
    from ...matrix import CellMatrix

__all__ = ["ReferenceEngine"]

logger = logging.getLogger(__name__)


def softmax_rows(scores: NDArray[Any]) -> NDArray[Any]:
    """Row-wise softmax that is finite and in [0, 1] whatever ``scores`` hold: NaN scores count
    as the lowest possible, infinities are clipped to the largest finite float (validated
    references and inputs never get there; this is the last line of defence)."""
    scores = np.nan_to_num(scores, nan=-np.inf, copy=True)
    np.clip(scores, -np.finfo(np.float64).max, np.finfo(np.float64).max, out=scores)
    with np.errstate(over="ignore"):  # a gap beyond the float range is -inf: exp gives 0
        scores -= scores.max(axis=1, keepdims=True)  # each row's best becomes 0: exp(0) = 1
    prob = np.exp(scores)
    prob /= prob.sum(axis=1, keepdims=True)  # each sum is at least 1
    return prob


class ReferenceEngine(ChunkedEngine):
    """Scores each cell against a reference model (softmax of the linear scores).

    Parameters
    ----------
    atlas
        Path to a reference built by :func:`build_reference`, or a :class:`ReferenceModel`.
    min_gene_fraction
        Refuse (:class:`~bridge.GeneIdError`) when fewer of the model's genes are in the query.
    n_alternates
        Runners-up reported per cell.
    n_markers
        Genes reported per cell: the label's informative genes contributing most to the call.
    """

    name = "reference"

    def __init__(self, atlas: str | Path | ReferenceModel | None = None, *,
                 min_gene_fraction: float = 0.5, n_alternates: int = 3, n_markers: int = 5
                 ) -> None:
        if atlas is None:
            msg = ("model='reference' needs atlas=PATH, a reference built with "
                   "`scbridge build-reference IN --label-column COL --out REF.parquet`.")
            raise InputError(msg, code="invalid_parameter")
        if not 0.0 <= min_gene_fraction <= 1.0:
            msg = f"min_gene_fraction must lie in [0, 1], got {min_gene_fraction}."
            raise InputError(msg, code="invalid_parameter")
        self.reference = atlas if isinstance(atlas, ReferenceModel) else load_reference(atlas)
        self.atlas: str | None = self.reference.path or "<in-memory reference>"
        self.min_gene_fraction = min_gene_fraction
        self.n_alternates = n_alternates
        self.n_markers = n_markers
        self._layouts: GeneLayoutCache[tuple[NDArray[Any], NDArray[Any], NDArray[Any]]]
        self._layouts = GeneLayoutCache()
        #: Fraction of the model's genes found in the last query laid out (informational).
        self.gene_fraction: float | None = None

    @property
    def genes(self) -> list[str]:
        return [str(g) for g in self.reference.genes]

    def parameters(self) -> dict[str, Any]:
        return {
            "min_gene_fraction": self.min_gene_fraction, "n_alternates": self.n_alternates,
            "n_markers": self.n_markers, "labels": self.reference.labels,
            "n_genes": len(self.reference.genes), "training": self.reference.training,
        }

    def check_genes(self, matrix: CellMatrix) -> float:
        """The fraction of the model's genes in the query; refused below the bar."""
        ref = self.reference
        present = set(map(str, matrix.genes))
        found = sum(1 for g in ref.genes if g in present)
        fraction = found / len(ref.genes)
        if fraction < self.min_gene_fraction:
            from ...genes import detect_gene_id_kind

            msg = (f"only {found} of the reference's {len(ref.genes)} genes "
                   f"({fraction:.0%}) are in the query (need {self.min_gene_fraction:.0%}); the "
                   f"query genes look like {detect_gene_id_kind(list(matrix.genes))}, the "
                   f"reference's like {detect_gene_id_kind(list(ref.genes))}. Map the gene ids "
                   "to the reference's kind, build a reference on the same gene ids, or lower "
                   "the bar (min_gene_fraction= in Python, --min-gene-fraction on the command "
                   "line, min_gene_fraction = in R).")
            raise GeneIdError(msg)
        if fraction < 0.9:
            logger.warning("only %.0f%% of the reference genes are in the query; calls may be "
                           "less accurate", 100 * fraction)
        return fraction

    def _query_layout(self, genes: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
        """The query columns holding model genes, their weights and marker eligibility."""
        ref = self.reference
        position = {str(g): i for i, g in enumerate(genes)}
        ref_rows, query_cols = [], []
        for r, g in enumerate(ref.genes):
            j = position.get(g)
            if j is not None:
                ref_rows.append(r)
                query_cols.append(j)
        self.gene_fraction = len(ref_rows) / len(ref.genes)
        rows = np.asarray(ref_rows, dtype=np.int64)
        # Markers are genes that also sit higher in the label than in the other labels, so
        # ubiquitous genes with a small positive weight (MALAT1, ribosomal) are not reported.
        others = (ref.means.sum(axis=1, keepdims=True) - ref.means) / max(ref.n_labels - 1, 1)
        eligible = (ref.means - others)[rows] > 0.5
        return (np.asarray(query_cols, dtype=np.int64),
                np.ascontiguousarray(ref.weights[rows], dtype=np.float32), eligible)

    def annotate_chunk(self, matrix: CellMatrix) -> ChunkCalls:
        ref = self.reference
        cols, W, eligible = self._layouts.get(matrix.genes, self._query_layout)
        # Only the model's genes are normalised and multiplied; each cell's own total (over
        # all its genes) scales it, so chunking never changes a call.
        Xs = log_normalize(matrix.X, matrix.value_kind, target_sum=ref.target_sum, columns=cols)
        scores = np.asarray(Xs @ W, dtype=np.float64) + ref.intercepts[None, :]
        prob = softmax_rows(scores)
        order = np.argsort(-prob, axis=1, kind="stable")[:, : self.n_alternates + 1]
        best = order[:, 0]
        labels = np.asarray(ref.labels, dtype=object)
        top_prob = np.take_along_axis(prob, order, axis=1)
        alternates = [
            list(zip(names, scores, strict=True))
            for names, scores in zip(labels[order[:, 1:]].tolist(), top_prob[:, 1:].tolist(),
                                     strict=True)
        ]
        return ChunkCalls(
            labels=labels[best].tolist(),
            confidence=top_prob[:, 0].astype(np.float32),
            ontology_ids=[ref.ontology_ids[k] for k in best],
            alternates=alternates,
            markers=self._markers(Xs, W, eligible, best, matrix.genes[cols]),
        )

    def _markers(self, Xs: sp.csr_matrix, W: NDArray[Any], eligible: NDArray[Any],
                 best: NDArray[Any], genes: NDArray[Any]) -> list[list[str]]:
        """Per cell, the genes whose expression pushed hardest towards its label."""
        n_cells = Xs.shape[0]
        rows = np.repeat(np.arange(n_cells), np.diff(Xs.indptr))
        label_of_entry = best[rows]
        contribution = Xs.data * W[Xs.indices, label_of_entry]
        keep = (contribution > 0) & eligible[Xs.indices, label_of_entry]
        rows, cols, contribution = rows[keep], Xs.indices[keep], contribution[keep]
        names = np.asarray([str(g) for g in genes], dtype=object)
        if len(rows) == 0:
            return [[] for _ in range(n_cells)]
        # Top genes per cell without sorting every entry: lay each cell's candidates out in
        # a row (cells x most candidates of any cell; the model's genes bound it), take the
        # best few with argpartition, then order only those.
        per_cell = np.bincount(rows, minlength=n_cells)
        first = np.concatenate([[0], np.cumsum(per_cell)[:-1]])
        slot = np.arange(len(rows)) - first[rows]
        width = int(per_cell.max())
        values = np.full((n_cells, width), -np.inf, dtype=np.float32)
        values[rows, slot] = contribution
        genes_at = np.zeros((n_cells, width), dtype=np.int64)
        genes_at[rows, slot] = cols
        k = min(self.n_markers, width)
        top = np.argpartition(-values, k - 1, axis=1)[:, :k]
        top_values = np.take_along_axis(values, top, axis=1)
        order = np.argsort(-top_values, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        found = np.take_along_axis(top_values, order, axis=1) > -np.inf
        top_names = names[np.take_along_axis(genes_at, top, axis=1)]
        return [row[ok].tolist() for row, ok in zip(top_names, found, strict=True)]

"""Per-cell quality control, recorded beside the calls and never applied silently.

Columns: ``total_counts``, ``n_genes``, ``mito_fraction``, ``doublet_score`` (scanpy's
Scrublet; null with the reason in the metadata where it cannot run), ``qc_pass`` and
``qc_reason`` (``;``-separated failed checks, empty when the cell passes).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from .matrix import CellMatrix

__all__ = ["QCThresholds", "doublet_scores", "qc_metrics"]

logger = logging.getLogger(__name__)

_MIN_CELLS_FOR_DOUBLETS = 100


@dataclass(frozen=True)
class QCThresholds:
    """Limits a cell must meet to pass QC (common defaults for droplet data)."""

    min_counts: float = 500
    min_genes: int = 200
    max_mito_fraction: float = 0.2
    max_doublet_score: float = 0.3


def _mito_columns(matrix: CellMatrix) -> np.ndarray:
    genes = [str(g) for g in matrix.genes]
    mito = np.array([g.upper().startswith("MT-") for g in genes], dtype=bool)
    if not mito.any() and genes and genes[0].startswith("ENS"):
        from .genes import map_to_human_symbols

        symbols = map_to_human_symbols(genes).genes
        mito = np.array([str(g).upper().startswith("MT-") for g in symbols], dtype=bool)
    return mito


def doublet_scores(matrix: CellMatrix, *, seed: int = 0) -> tuple[np.ndarray | None, str]:
    """Scrublet doublet scores through scanpy, or ``(None, why not)``."""
    if matrix.value_kind != "counts":
        return None, "doublet scores need raw counts"
    if matrix.n_cells < _MIN_CELLS_FOR_DOUBLETS:
        return None, f"too few cells for doublet scores ({matrix.n_cells} < " \
                     f"{_MIN_CELLS_FOR_DOUBLETS})"
    try:
        import anndata
        import scanpy as sc
    except ImportError:
        return None, "scanpy is not installed (pip install scanpy)"
    if not hasattr(sc.pp, "scrublet"):
        return None, f"scanpy {sc.__version__} has no pp.scrublet (need >= 1.10)"
    adata = anndata.AnnData(X=matrix.X.astype(np.float32))
    try:
        sc.pp.scrublet(adata, random_state=seed, verbose=False)
    except Exception as exc:  # scrublet fails on degenerate data (too few genes, ...)
        logger.info("scrublet failed: %s", exc)
        return None, f"scrublet failed: {exc}"
    return np.asarray(adata.obs["doublet_score"], dtype=np.float32), "scanpy.pp.scrublet"


def qc_metrics(matrix: CellMatrix, *, thresholds: QCThresholds | None = None,
               doublets: bool = True) -> pa.Table:
    """QC metrics and pass / fail per cell, in cell order.

    Parameters
    ----------
    matrix
        The cells.  Totals of log-normalised input are recorded but not judged.
    thresholds
        Limits (defaults: :class:`QCThresholds`).
    doublets
        Compute Scrublet doublet scores (needs scanpy and at least 100 cells).
    """
    limits = thresholds or QCThresholds()
    X = matrix.X
    totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    detected = np.diff(X.indptr) if matrix.n_cells else np.zeros(0, dtype=np.int64)
    if X.nnz:
        detected = np.bincount(np.repeat(np.arange(matrix.n_cells), np.diff(X.indptr))[X.data != 0],
                               minlength=matrix.n_cells)
    mito = _mito_columns(matrix)
    mito_totals = np.asarray(X[:, np.flatnonzero(mito)].sum(axis=1), dtype=np.float64).ravel() \
        if mito.any() else np.zeros(matrix.n_cells)
    mito_fraction = np.divide(mito_totals, totals, out=np.zeros_like(totals), where=totals > 0)
    scores, doublet_note = (doublet_scores(matrix) if doublets else (None, "not requested"))
    reasons: list[list[str]] = [[] for _ in range(matrix.n_cells)]
    checks = [(detected < limits.min_genes, f"n_genes<{limits.min_genes}")]
    if matrix.value_kind == "counts":
        checks.append((totals < limits.min_counts, f"total_counts<{limits.min_counts:g}"))
        if mito.any():
            checks.append((mito_fraction > limits.max_mito_fraction,
                           f"mito_fraction>{limits.max_mito_fraction:g}"))
    if scores is not None:
        checks.append((scores > limits.max_doublet_score,
                       f"doublet_score>{limits.max_doublet_score:g}"))
    for failed, reason in checks:
        for i in np.flatnonzero(failed):
            reasons[i].append(reason)
    table = pa.table({
        "total_counts": pa.array(totals.astype(np.float32)),
        "n_genes": pa.array(detected.astype(np.int32)),
        "mito_fraction": pa.array(mito_fraction.astype(np.float32)),
        "doublet_score": pa.array(scores if scores is not None else [None] * matrix.n_cells,
                                  pa.float32()),
        "qc_pass": pa.array([not r for r in reasons], pa.bool_()),
        "qc_reason": pa.array([";".join(r) for r in reasons], pa.string()),
    })
    notes = {**asdict(limits), "doublets": doublet_note, "mito_genes": int(mito.sum())}
    return table.replace_schema_metadata({b"scbridge.qc_thresholds": json.dumps(notes).encode()})

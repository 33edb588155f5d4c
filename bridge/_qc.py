"""Per-cell quality control: a step of its own, recorded beside the calls, never applied
silently.

:func:`qc` gives the QC table of any input (``cell`` first) for a user to inspect and filter
on before annotating; :func:`bridge.annotate` appends the same columns (``qc=True``, or a QC
table computed earlier).  Columns: ``total_counts``, ``n_genes``, ``mito_fraction``,
``doublet_score`` (the Scrublet algorithm; null with the reason in the metadata where it
cannot run), ``qc_pass`` and ``qc_reason`` (``;``-separated failed checks, empty when the cell
passes).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from numpy.typing import NDArray

from .matrix import CellMatrix
from .numerics import log_normalize, panel_block

__all__ = ["QC_COLUMNS", "QCThresholds", "doublet_scores", "qc", "qc_metrics",
           "scanpy_doublet_scores"]

logger = logging.getLogger(__name__)

_MIN_CELLS_FOR_DOUBLETS = 100
QC_COLUMNS = ("total_counts", "n_genes", "mito_fraction", "doublet_score", "qc_pass",
              "qc_reason")


@dataclass(frozen=True)
class QCThresholds:
    """Limits a cell must meet to pass QC (common defaults for droplet data)."""

    min_counts: float = 500
    min_genes: int = 200
    max_mito_fraction: float = 0.2
    max_doublet_score: float = 0.3


def _mito_columns(matrix: CellMatrix) -> NDArray[Any]:
    genes = [str(g) for g in matrix.genes]
    mito = np.array([g.upper().startswith("MT-") for g in genes], dtype=bool)
    if not mito.any() and genes and genes[0].startswith("ENS"):
        from .genes import map_to_human_symbols

        symbols = map_to_human_symbols(genes).genes
        mito = np.array([str(g).upper().startswith("MT-") for g in symbols], dtype=bool)
    return mito


def _log_normalise(X: sp.csr_matrix) -> sp.csr_matrix:
    return log_normalize(X, "counts", dtype=np.float32)


def doublet_scores(matrix: CellMatrix, *, expected_rate: float = 0.06, sim_ratio: float = 2.0,
                   n_genes: int = 2000, n_components: int = 30,
                   max_reference: int = 20_000, seed: int = 0
                   ) -> tuple[NDArray[Any] | None, str]:
    """Scrublet doublet scores (Wolock et al. 2019, Cell Syst 8:281), or ``(None, why not)``.

    The algorithm of ``scanpy.pp.scrublet``, run with scipy / scikit-learn directly (scanpy
    1.10's own kNN step breaks on scipy >= 1.14 sparse arrays, and it needs scikit-image for
    its threshold): simulate doublets by adding the counts of random cell pairs, embed
    observed and simulated cells in one PCA of log-normalised variable genes, and score each
    cell by the share of simulated doublets among its neighbours, corrected for the expected
    doublet rate.
    """
    if matrix.value_kind != "counts":
        return None, "doublet scores need raw counts"
    if matrix.n_cells < _MIN_CELLS_FOR_DOUBLETS:
        return None, (f"too few cells for doublet scores ({matrix.n_cells} < "
                      f"{_MIN_CELLS_FOR_DOUBLETS})")
    try:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.neighbors import NearestNeighbors
    except ImportError:
        return None, "scikit-learn is not installed (pip install scikit-learn)"
    rng = np.random.default_rng(seed)
    n_obs = matrix.n_cells
    # Large inputs: genes, embedding and the neighbour reference come from a random subset of
    # cells (and doublets simulated from it); every cell is then scored against it, a block
    # at a time, so memory stays bounded by the subset and one block.
    in_reference = np.sort(rng.choice(n_obs, size=min(n_obs, max_reference), replace=False))
    reference_counts = sp.csr_matrix(matrix.X[in_reference], dtype=np.float32)
    norm = _log_normalise(reference_counts)
    mean = np.asarray(norm.mean(axis=0)).ravel()
    var = np.asarray(norm.multiply(norm).mean(axis=0)).ravel() - mean**2
    del norm
    genes = np.sort(np.argsort(-var)[: min(n_genes, int((var > 0).sum()))])
    if len(genes) < 10:
        return None, "too few variable genes for doublet scores"
    reference = sp.csr_matrix(reference_counts[:, genes])
    del reference_counts
    n_ref = len(in_reference)
    n_sim = int(sim_ratio * n_ref)
    pairs = rng.integers(0, n_ref, size=(n_sim, 2))
    simulated = _log_normalise(sp.csr_matrix(reference[pairs[:, 0]] + reference[pairs[:, 1]]))
    reference = _log_normalise(reference)
    k_comp = max(2, min(n_components, len(genes) - 1, n_ref - 1))
    svd = TruncatedSVD(n_components=k_comp, random_state=seed).fit(reference)
    # float32 embeddings: half the time of the neighbour search, no change that matters.
    index = NearestNeighbors().fit(np.vstack([svd.transform(reference),
                                              svd.transform(simulated)]).astype(np.float32))
    del simulated
    k = max(3, round(0.5 * float(np.sqrt(n_ref))))
    self_position = np.full(n_obs, -1)
    self_position[in_reference] = np.arange(n_ref)
    q = np.empty(n_obs)
    for start in range(0, n_obs, max_reference):
        stop = min(start + max_reference, n_obs)
        block = matrix.slice_cells(start, stop).X
        # Normalised over the kept genes, exactly as the reference and simulated cells.
        cells = _log_normalise(panel_block(block, genes).astype(np.float32))
        neighbours = index.kneighbors(svd.transform(cells).astype(np.float32), n_neighbors=k + 1,
                                      return_distance=False)
        # A reference cell finds itself: drop it; other cells drop their farthest neighbour.
        drop = neighbours == self_position[start:stop, None]
        drop[~drop.any(axis=1), -1] = True
        q[start:stop] = ((neighbours >= n_ref) & ~drop).sum(axis=1) / k
    r = n_sim / n_ref
    rho = expected_rate
    scores = q * rho / r / (1 - rho - q * (1 - rho - rho / r))
    return np.clip(scores, 0.0, 1.0).astype(np.float32), "scrublet algorithm (built-in)"


def scanpy_doublet_scores(matrix: CellMatrix, *, threshold: float = 0.3, seed: int = 0
                          ) -> tuple[NDArray[Any] | None, str]:
    """Doublet scores from ``scanpy.pp.scrublet`` itself, or ``(None, why not)``.

    scanpy 1.10 with scipy >= 1.14 fails in its neighbour step; the reason is recorded.
    """
    if matrix.value_kind != "counts":
        return None, "doublet scores need raw counts"
    if matrix.n_cells < _MIN_CELLS_FOR_DOUBLETS:
        return None, (f"too few cells for doublet scores ({matrix.n_cells} < "
                      f"{_MIN_CELLS_FOR_DOUBLETS})")
    try:
        import anndata
        import scanpy as sc
    except ImportError:
        return None, "scanpy is not installed (pip install scanpy)"
    if not hasattr(sc.pp, "scrublet"):
        return None, f"scanpy {sc.__version__} has no pp.scrublet (needs >= 1.10)"
    adata = anndata.AnnData(X=sp.csr_matrix(matrix.X, dtype=np.float32))
    try:
        # An explicit threshold: the automatic one needs scikit-image.
        sc.pp.scrublet(adata, threshold=threshold, random_state=seed, verbose=False)
    except Exception as exc:  # version clashes and degenerate data both land here
        logger.info("scanpy.pp.scrublet failed: %s", exc)
        return None, f"scanpy.pp.scrublet failed: {type(exc).__name__}: {exc}"
    return (np.asarray(adata.obs["doublet_score"], dtype=np.float32),
            f"scanpy {sc.__version__} pp.scrublet")


def qc_metrics(matrix: CellMatrix, *, thresholds: QCThresholds | None = None,
               doublets: bool | Literal["builtin", "scanpy"] = True) -> pa.Table:
    """QC metrics and pass / fail per cell, in cell order.

    Parameters
    ----------
    matrix
        The cells.  Totals of log-normalised input are recorded but not judged.
    thresholds
        Limits (defaults: :class:`QCThresholds`).
    doublets
        Doublet scores: ``True`` / ``"builtin"`` runs the Scrublet algorithm here (needs
        scikit-learn and at least 100 cells of raw counts), ``"scanpy"`` calls
        ``scanpy.pp.scrublet``, ``False`` skips them.  Where they cannot be computed the
        column is null and the reason is in the ``scbridge.qc_thresholds`` metadata.
    """
    limits = thresholds or QCThresholds()
    X = matrix.X
    totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    detected = np.diff(X.indptr).astype(np.int64)
    explicit_zeros = np.flatnonzero(X.data == 0)
    if len(explicit_zeros):  # stored zeros are not detected genes
        rows = np.searchsorted(X.indptr, explicit_zeros, side="right") - 1
        detected -= np.bincount(rows, minlength=matrix.n_cells)
    mito = _mito_columns(matrix)
    if mito.any():
            mito_totals = np.asarray(panel_block(X, np.flatnonzero(mito)).sum(axis=1)).ravel()
    else:
        mito_totals = np.zeros(matrix.n_cells)
    mito_fraction = np.divide(mito_totals, totals, out=np.zeros_like(totals), where=totals > 0)
    if doublets == "scanpy":
        scores, doublet_note = scanpy_doublet_scores(matrix,
                                                     threshold=limits.max_doublet_score)
    elif doublets:
        scores, doublet_note = doublet_scores(matrix)
    else:
        scores, doublet_note = None, "not requested"
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


def qc(source: Any, *, thresholds: QCThresholds | None = None,
       doublets: bool | Literal["builtin", "scanpy"] = True, assay: str | None = None,
       layer: str | None = None) -> pa.Table:
    """The QC table of every cell: run, inspect and filter before annotating.

    Parameters
    ----------
    source
        Anything :func:`bridge.read` accepts, or a :class:`~bridge.CellMatrix`.
    thresholds
        Limits a cell must meet to pass (defaults: :class:`QCThresholds`).
    doublets
        ``True`` / ``"builtin"``: Scrublet doublet scores computed here; ``"scanpy"``:
        ``scanpy.pp.scrublet``; ``False``: none.
    assay, layer
        Which matrix of the source to read.

    Returns
    -------
    pyarrow.Table
        ``cell`` and the QC columns, in input cell order; thresholds and how the doublet
        scores were made in the ``scbridge.qc_thresholds`` metadata.  Pass it to
        ``bridge.annotate(..., qc=table)`` to attach it to the calls without recomputing.
    """
    from .io import read

    matrix = source if isinstance(source, CellMatrix) else read(source, assay=assay, layer=layer)
    table = qc_metrics(matrix, thresholds=thresholds, doublets=doublets)
    cells = pa.array([str(c) for c in matrix.cells], pa.string())
    return table.add_column(0, "cell", cells)


def qc_for_cells(table: pa.Table, cells: NDArray[Any]) -> pa.Table:
    """The QC columns of ``table`` (from :func:`qc`) for ``cells``, in their order.

    Refuses a table that does not cover every cell or lacks QC columns, so QC computed on
    another data set is never attached silently.
    """
    from ._errors import InputError

    missing = [c for c in ("cell", *QC_COLUMNS) if c not in table.column_names]
    if missing:
        msg = (f"qc= must be True, False or a table from bridge.qc(); this table lacks "
               f"{', '.join(missing)}.")
        raise InputError(msg, code="invalid_parameter")
    position = {c: i for i, c in enumerate(table.column("cell").to_pylist())}
    wanted = [str(c) for c in cells]
    absent = [c for c in wanted if c not in position]
    if absent:
        msg = (f"the QC table has no row for {len(absent)} of the {len(wanted)} cells (e.g. "
               f"{absent[0]!r}); compute it on the same data with bridge.qc().")
        raise InputError(msg, code="invalid_parameter")
    rows = pa.array([position[c] for c in wanted], pa.int64())
    return table.select(list(QC_COLUMNS)).take(rows)

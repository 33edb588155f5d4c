"""Marker genes per label (``bridge.rank_marker_genes``): one-vs-rest differential expression
as an Arrow table, like scanpy's ``rank_genes_groups`` and Seurat's ``FindAllMarkers``.

Statistics come from per-label sums over the sparse matrix (a labels x cells indicator
times the cells x genes matrix), so neither test builds a dense cells x genes matrix: the
Welch t-test needs per-label moments, the Wilcoxon rank-sum test ranks only the non-zero
values (all zeros of a gene share one average rank).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from ._contract import MARKERS_SCHEMA
from ._errors import InputError, NotFoundError
from .numerics import (
    benjamini_hochberg,
    group_moments,
    log_normalize,
    one_vs_rest_t,
    rank_sum_test,
)

if TYPE_CHECKING:
    from .matrix import CellMatrix

__all__ = ["MARKERS_SCHEMA", "rank_marker_genes"]

logger = logging.getLogger(__name__)

def _labels_for_cells(matrix: CellMatrix, calls: Any, label_column: str) -> NDArray[Any]:
    """The label of every cell of ``matrix`` (None where the calls do not name it)."""
    table = calls if isinstance(calls, pa.Table) else pa.table(calls)
    for name in ("cell", label_column):
        if name not in table.column_names:
            msg = (f"calls need columns 'cell' and {label_column!r}; found "
                   f"{', '.join(table.column_names)}.")
            raise NotFoundError(msg)
    cells = table.column("cell").to_pylist()
    labels = pc.cast(table.column(label_column), pa.string()).to_pylist()
    by_cell = dict(zip(cells, labels, strict=True))
    out = np.array([by_cell.get(c) for c in matrix.cells.tolist()], dtype=object)
    found = sum(lab is not None for lab in out)
    if found == 0:
        msg = (f"none of the {len(cells)} cells in the calls is in {matrix.source or 'the input'} "
               f"(e.g. calls: {cells[:2]}, input: {matrix.cells[:2].tolist()}); were the calls "
               "made on this data set?")
        raise InputError(msg)
    if found < len(out):
        logger.warning("%d of %d cells have no call and are left out", len(out) - found, len(out))
    return out


def rank_marker_genes(
    source: Any,
    calls: Any,
    *,
    label_column: str = "label",
    top_n: int = 50,
    n_genes: int | None = None,
    method: Literal["t-test", "wilcoxon"] = "t-test",
    min_cells: int = 3,
    assay: str | None = None,
    layer: str | None = None,
    only_up: bool = True,
) -> pa.Table:
    """Top differentially expressed genes of every label against all other cells.

    Parameters
    ----------
    source
        Anything :func:`bridge.read` accepts, or a ``CellMatrix`` (counts are normalised to
        log1p(CP10k) per cell; log-normalised input is used as it is).
    calls
        A Calls table, or any table (pyarrow, or a dict of columns) with ``cell`` and
        ``label`` columns.  Cells missing from it are left out.
    label_column
        The column of ``calls`` holding the labels (e.g. ``label_smoothed``).
    top_n
        Genes kept per label (best first).
    n_genes
        Same as ``top_n`` (takes precedence when given).
    method
        ``"t-test"`` (Welch, on sparse sums; fast) or ``"wilcoxon"`` (rank-sum with tie
        correction, computed in gene blocks).
    min_cells
        Labels with fewer cells are skipped (with a warning).
    assay, layer
        Passed to :func:`bridge.read`.
    only_up
        Keep only genes higher in the label than in the rest (what enrichment tools expect).

    Returns
    -------
    pyarrow.Table
        Columns ``label``, ``gene``, ``score`` (t or z), ``log2_fold_change``, ``p_value``,
        ``p_value_adjusted`` (Benjamini-Hochberg over all genes, per label),
        ``fraction_in_label``, ``fraction_in_rest``; labels in sorted order.
    """
    from scipy.stats import t as t_dist

    from .io import read
    from .matrix import CellMatrix

    if method not in ("t-test", "wilcoxon"):
        msg = f"method must be 't-test' or 'wilcoxon', got {method!r}"
        raise InputError(msg)
    if n_genes is not None:
        top_n = n_genes
    if top_n < 1:
        msg = f"top_n must be at least 1, got {top_n}"
        raise InputError(msg)
    matrix = source if isinstance(source, CellMatrix) else read(source, assay=assay, layer=layer)
    labels = _labels_for_cells(matrix, calls, label_column)
    has_label = np.array([lab is not None for lab in labels])
    names, codes = np.unique(labels[has_label].astype(str), return_inverse=True)
    if len(names) < 2:
        msg = f"marker genes need at least 2 labels to compare; the calls have {len(names)}."
        raise InputError(msg)
    Xn = log_normalize(matrix.X, matrix.value_kind)[np.flatnonzero(has_label)]
    counts, mean, var = group_moments(Xn, codes, len(names))
    t, rest_mean, df = one_vs_rest_t(counts, mean, var)
    if method == "t-test":
        score, p = t, 2 * t_dist.sf(np.abs(t), np.maximum(df, 1.0))
    else:
        if Xn.nnz and Xn.data.min() < 0:
            msg = ("the Wilcoxon test here needs non-negative expression (counts or "
                   "log-normalised values); this input has negative values (scaled data?). "
                   "Pass the counts or the log-normalised layer.")
            raise InputError(msg)
        score, p = rank_sum_test(Xn, codes, counts)
    # Fold change of the linear-scale means, as scanpy reports it.
    log2fc = np.log2((np.expm1(mean) + 1e-9) / (np.expm1(rest_mean) + 1e-9))
    binary = Xn.copy()
    binary.data = (binary.data > 0).astype(np.float64)
    _, frac, _ = group_moments(binary, codes, len(names))
    frac_rest = (frac.T @ counts)[:, None].T - frac * counts[:, None]
    frac_rest = frac_rest / np.maximum(counts.sum() - counts, 1)[:, None]
    pieces = []
    genes = matrix.genes.astype(str)
    for k, name in enumerate(names):
        if counts[k] < min_cells:
            logger.warning("label %r has %d cells (< %d); no markers", name, counts[k], min_cells)
            continue
        p_adj = benjamini_hochberg(p[k])
        candidates = np.flatnonzero(score[k] > 0) if only_up else np.arange(len(genes))
        best = candidates[np.argsort(-np.abs(score[k, candidates]), kind="stable")[:top_n]]
        pieces.append(pa.table({
            "label": pa.array([name] * len(best), pa.string()),
            "gene": pa.array(genes[best], pa.string()),
            "score": pa.array(score[k, best], pa.float32()),
            "log2_fold_change": pa.array(log2fc[k, best], pa.float32()),
            "p_value": pa.array(p[k, best], pa.float64()),
            "p_value_adjusted": pa.array(p_adj[best], pa.float64()),
            "fraction_in_label": pa.array(frac[k, best], pa.float32()),
            "fraction_in_rest": pa.array(frac_rest[k, best], pa.float32()),
        }, schema=MARKERS_SCHEMA))
    table = pa.concat_tables(pieces) if pieces else MARKERS_SCHEMA.empty_table()
    meta = {b"scbridge.method": method.encode(), b"scbridge.source": matrix.source.encode()}
    return table.replace_schema_metadata(meta)

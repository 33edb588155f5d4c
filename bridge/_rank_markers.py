"""Marker genes per label (``bridge.rank_marker_genes``): one-vs-rest differential expression
as an Arrow table, like scanpy's ``rank_genes_groups`` and Seurat's ``FindAllMarkers``.

Statistics come from per-label sums over the sparse matrix (a labels x cells indicator
times the cells x genes matrix), so neither test builds a dense cells x genes matrix: the
Welch t-test needs per-label moments, the Wilcoxon rank-sum test ranks only the non-zero
values (all zeros of a gene share one average rank), a block of genes at a time.

Memory is bounded: labels with fewer than ``min_cells`` cells are set aside before any array
is built (their cells still count in every label's "rest", pooled as one group), the kept
labels are capped (``max_labels``), and the statistics are streamed label by label, so the
largest arrays are ``(kept labels + 1) x genes``.  Python, the CLI and the server all call
:func:`rank_marker_genes`.
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
    group_sums,
    log_normalize,
    rank_sum_test,
    welch_t,
)

if TYPE_CHECKING:
    from .matrix import CellMatrix

__all__ = ["DEFAULT_MAX_LABELS", "MARKERS_SCHEMA", "rank_marker_genes"]

logger = logging.getLogger(__name__)

#: Labels ranked at most per call (each costs three float64 rows of the genes).
DEFAULT_MAX_LABELS = 1_000

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
    if cells and all(lab is None for lab in labels):
        msg = (f"every one of the {len(cells)} cells has an empty (null) {label_column!r}; "
               "marker genes need labelled cells.")
        raise InputError(msg, code="invalid_labels",
                         hint="send a label for the cells (null only for unlabelled ones)")
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


def _kept_labels(labels: NDArray[Any], min_cells: int, max_labels: int | None
                 ) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """``(names, codes, counts)`` of the labels with at least ``min_cells`` cells; the cells of
    the others get code ``len(names)`` (one pooled group: still part of every "rest")."""
    all_names, all_codes, all_counts = np.unique(labels.astype(str), return_inverse=True,
                                                 return_counts=True)
    kept = all_counts >= min_cells
    n_kept = int(kept.sum())
    small = np.flatnonzero(~kept)
    for k in small[:5]:  # a few by name; a request of one label per cell must not log 100,000
        logger.warning("label %r has %d cells (< %d); no markers", str(all_names[k]),
                       all_counts[k], min_cells)
    if len(small) > 5:
        logger.warning("... and %d more labels with fewer than %d cells", len(small) - 5,
                       min_cells)
    if n_kept < 2:
        msg = (f"marker genes need at least 2 labels with {min_cells} or more cells to compare; "
               f"the calls have {len(all_names)} label(s), {n_kept} of them that large.")
        raise InputError(msg, code="invalid_labels",
                         hint="merge small labels, or lower min_cells")
    if max_labels is not None and n_kept > max_labels:
        msg = (f"{n_kept:,} labels have {min_cells} or more cells; marker genes are ranked for "
               f"at most {max_labels:,} labels at once.")
        raise InputError(msg, code="too_many_labels",
                         hint="rank coarser labels, raise min_cells, or split the labels")
    new_code = np.full(len(all_names), n_kept, dtype=np.int64)
    new_code[kept] = np.arange(n_kept)
    return all_names[kept], new_code[all_codes], all_counts[kept]


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
    max_labels: int | None = DEFAULT_MAX_LABELS,
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
        Labels with fewer cells get no markers (one warning names them); their cells still
        count as "rest" for the other labels.
    assay, layer
        Passed to :func:`bridge.read`.
    only_up
        Keep only genes higher in the label than in the rest (what enrichment tools expect).
    max_labels
        Refuse (code ``too_many_labels``) more labels of ``min_cells`` cells or more than this
        (``None``: no limit).  Memory grows with labels x genes.

    Returns
    -------
    pyarrow.Table
        Columns ``label``, ``gene``, ``score`` (t or z), ``log2_fold_change``, ``p_value``,
        ``p_value_adjusted`` (Benjamini-Hochberg over all genes, per label),
        ``fraction_in_label``, ``fraction_in_rest``; labels in sorted order.
    """
    from .io import read
    from .matrix import CellMatrix

    if method not in ("t-test", "wilcoxon"):
        msg = f"method must be 't-test' or 'wilcoxon', got {method!r}"
        raise InputError(msg, code="invalid_parameter")
    if n_genes is not None:
        top_n = n_genes
    if top_n < 1:
        msg = f"top_n must be at least 1, got {top_n}"
        raise InputError(msg, code="invalid_parameter")
    matrix = source if isinstance(source, CellMatrix) else read(source, assay=assay, layer=layer)
    labels = _labels_for_cells(matrix, calls, label_column)
    has_label = np.array([lab is not None for lab in labels])
    # Labels are counted (and small ones set aside) before any array of the genes is built.
    names, codes, _ = _kept_labels(labels[has_label], max(min_cells, 1), max_labels)
    rows = np.flatnonzero(has_label)
    X = matrix.X if len(rows) == matrix.n_cells else matrix.X[rows]
    Xn = log_normalize(X, matrix.value_kind)  # per cell: subsetting first is exact
    if method == "wilcoxon" and Xn.nnz and Xn.data.min() < 0:
        msg = ("the Wilcoxon test here needs non-negative expression (counts or "
               "log-normalised values); this input has negative values (scaled data?). "
               "Pass the counts or the log-normalised layer.")
        raise InputError(msg, code="invalid_values")
    n_groups = len(names) + 1  # the kept labels and the pooled small ones
    counts, sums, sumsq, nonzero = group_sums(Xn, codes, n_groups)
    z = rank_sum_test(Xn, codes, counts)[0] if method == "wilcoxon" else None
    del Xn
    genes = matrix.genes.astype(str)
    totals = (sums.sum(0), sumsq.sum(0), nonzero.sum(0))
    pieces = [
        _label_markers(k, str(name), counts, (sums[k], sumsq[k], nonzero[k]), totals, z, genes,
                       top_n=top_n, only_up=only_up)
        for k, name in enumerate(names)
    ]
    table = pa.concat_tables(pieces) if pieces else MARKERS_SCHEMA.empty_table()
    meta = {b"scbridge.method": method.encode(), b"scbridge.source": matrix.source.encode()}
    return table.replace_schema_metadata(meta)


Sums = tuple[NDArray[Any], NDArray[Any], NDArray[Any]]  # per gene: sum, sum of squares, non-zeros


def _label_markers(k: int, name: str, counts: NDArray[Any], label: Sums, totals: Sums,
                   z: NDArray[Any] | None, genes: NDArray[Any], *, top_n: int,
                   only_up: bool) -> pa.Table:
    """The marker rows of label ``k`` against all other cells, from its sums and the totals
    over every group: temporaries O(genes)."""
    from scipy.stats import norm
    from scipy.stats import t as t_dist

    (sum_in, sumsq_in, nonzero_in), (sum_all, sumsq_all, nonzero_all) = label, totals
    n_in = counts[k]
    n_rest = counts.sum() - n_in
    mean_in = sum_in / max(n_in, 1)
    var_in = np.maximum(sumsq_in / max(n_in, 1) - mean_in**2, 0.0)
    mean_rest = (sum_all - sum_in) / max(n_rest, 1)
    var_rest = np.maximum((sumsq_all - sumsq_in) / max(n_rest, 1) - mean_rest**2, 0.0)
    if z is None:
        score, df = welch_t(n_in, mean_in, var_in, n_rest, mean_rest, var_rest)
        p = 2 * t_dist.sf(np.abs(score), np.maximum(df, 1.0))
    else:
        score = z[k]
        p = 2 * norm.sf(np.abs(score))
    # Fold change of the linear-scale means, as scanpy reports it.
    log2fc = np.log2((np.expm1(mean_in) + 1e-9) / (np.expm1(mean_rest) + 1e-9))
    frac_in = nonzero_in / max(n_in, 1)
    frac_rest = (nonzero_all - nonzero_in) / max(n_rest, 1)
    p_adj = benjamini_hochberg(p)
    candidates = np.flatnonzero(score > 0) if only_up else np.arange(len(genes))
    best = candidates[np.argsort(-np.abs(score[candidates]), kind="stable")[:top_n]]
    return pa.table({
        "label": pa.array([name] * len(best), pa.string()),
        "gene": pa.array(genes[best], pa.string()),
        "score": pa.array(score[best], pa.float32()),
        "log2_fold_change": pa.array(log2fc[best], pa.float32()),
        "p_value": pa.array(p[best], pa.float64()),
        "p_value_adjusted": pa.array(p_adj[best], pa.float64()),
        "fraction_in_label": pa.array(frac_in[best], pa.float32()),
        "fraction_in_rest": pa.array(frac_rest[best], pa.float32()),
    }, schema=MARKERS_SCHEMA)

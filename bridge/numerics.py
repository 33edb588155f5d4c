"""Shared numerics: value kinds, per-cell normalisation, panel blocks and group statistics.

One home for the arithmetic every engine, QC, the embedding, marker ranking and the report
share, so that "log-normalised" means the same thing everywhere.  Pure numpy / scipy on CSR
matrices: nothing here knows about containers, engines or the service.

Value kinds (the vocabulary of ``CellMatrix.value_kind``):

``counts``
    raw integer counts (UMIs or reads).
``lognorm``
    log-normalised values (Seurat ``data``, SCE ``logcounts``, scanpy ``log1p``), used as given.
``normalized``
    depth-normalised but not logged (TPM, CPM, RPKM / FPKM): rescaled per cell and logged like
    counts, without the integer requirement.

Normalisation is per cell: ``log1p(x / total(cell) * TARGET_SUM)`` with the total over all of
the cell's genes, so a cell's values never depend on which other cells share a chunk.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

__all__ = [
    "COUNT_LAYERS",
    "LOGNORM_LAYERS",
    "NORMALIZED_LAYERS",
    "TARGET_SUM",
    "VALUE_KINDS",
    "ValueKind",
    "benjamini_hochberg",
    "cell_totals",
    "detect_value_kind",
    "group_moments",
    "group_sums",
    "log_normalize",
    "looks_like_counts",
    "one_vs_rest_t",
    "panel_block",
    "rank_sum_test",
    "spread_runs",
    "value_kind_for_layer",
    "welch_t",
]

ValueKind = Literal["counts", "lognorm", "normalized"]
VALUE_KINDS: tuple[ValueKind, ...] = ("counts", "lognorm", "normalized")
TARGET_SUM = 1e4

# Layer / assay names and the kind of values they hold, for Seurat, SCE and AnnData alike.
# Names that say nothing certain ("raw", which AnnData often fills with log values;
# "normalized") are judged by their values instead.
COUNT_LAYERS = frozenset({"counts", "raw_counts", "umi", "umis", "spliced"})
LOGNORM_LAYERS = frozenset({"data", "logcounts", "lognorm", "log1p", "normcounts"})
NORMALIZED_LAYERS = frozenset({"tpm", "cpm", "fpkm", "rpkm"})
# Log-normalised values stay small (log1p of CP10k is at most ~9.2, log2 TPM+1 ~20); depth-
# normalised values that are not logged reach far beyond this.
_LOG_SCALE_MAX = 50.0
_SAMPLE = 1 << 20
#: Non-zeros scanned at once by :func:`panel_block` (its temporaries stay in cache).
_PANEL_PIECE = 1 << 22


def spread_runs(total: int, n: int, windows: int = 8) -> list[tuple[int, int]]:
    """About ``n`` of ``total`` rows as ``windows`` evenly spaced runs of consecutive rows
    (``(start, stop)`` pairs; one run of every row when ``total <= n``).

    Integer arithmetic only, so that the R package picks the same cells (R/engine-http.R):
    a remote client samples exactly the cells the embedded engine would.
    """
    if total <= n:
        return [(0, total)]
    width = max(1, n // windows)
    return [(s, s + width) for s in
            (k * (total - width) // max(windows - 1, 1) for k in range(windows))]


def looks_like_counts(data: NDArray[Any]) -> bool:
    """Whether every stored value is a whole number (sampled at most 1M values)."""
    if data.dtype.kind in "iu":
        return True
    sample = data[:_SAMPLE]
    return bool(np.array_equal(sample, np.rint(sample)))


def detect_value_kind(data: NDArray[Any]) -> ValueKind:
    """``counts`` for whole numbers, ``normalized`` for large non-integers (TPM, CPM, FPKM),
    else ``lognorm``."""
    if looks_like_counts(data):
        return "counts"
    sample = data[:_SAMPLE]
    if sample.size and float(np.max(sample)) > _LOG_SCALE_MAX:
        return "normalized"
    return "lognorm"


def value_kind_for_layer(name: str, data: NDArray[Any]) -> ValueKind:
    """The value kind a layer / assay of this name holds; unknown names are detected from the
    values (whole numbers are counts)."""
    base = name.lower().split(".", 1)[0]  # Seurat v5 split layers: counts.A, data.B
    if base in COUNT_LAYERS:
        return "counts"
    if base in LOGNORM_LAYERS:
        return "lognorm"
    if base in NORMALIZED_LAYERS:
        return "normalized"
    return detect_value_kind(data)


# -- normalisation -------------------------------------------------------------------------
def cell_totals(X: sp.csr_matrix) -> NDArray[Any]:
    """Per-cell sums in float64 (the same values whatever the input dtype)."""
    totals = np.zeros(X.shape[0])
    nonempty = np.diff(X.indptr) > 0
    if nonempty.any():
        # Segments between consecutive non-empty rows' starts are exactly those rows' values
        # (empty rows hold none), so reduceat sums each cell in order, with no copy.
        starts = X.indptr[:-1][nonempty]
        totals[nonempty] = np.add.reduceat(X.data[: X.indptr[-1]], starts, dtype=np.float64)
    return totals


def panel_block(X: sp.csr_matrix, columns: NDArray[Any],
                dtype: type[np.floating[Any]] = np.float64) -> sp.csr_matrix:
    """``X[:, columns]`` (``dtype``, sorted indices) without scipy's fancy indexing, which
    copies the whole ``indices`` array to int64 when ``indptr`` is int64.

    Matrices with int32 indices and fewer than 2^31 non-zeros go through scipy's compiled
    column selection on an int32 copy of ``indptr``; others are scanned in numpy, in pieces
    of :data:`_PANEL_PIECE` non-zeros.  Extra memory: at most a few bytes per non-zero of one
    piece, plus the panel's own non-zeros.
    """
    n_cells = X.shape[0]
    if not len(columns) or not X.nnz:
        return sp.csr_matrix((n_cells, len(columns)))
    if X.indices.dtype == np.int32 and X.indptr[0] == 0 and X.indptr[-1] < 2**31:
        # scipy's compiled column selection, twice as fast as the numpy scan below, on int32
        # offsets (a view with a copy of indptr only) so it never widens ``indices``
        narrow = sp.csr_matrix(X.shape, dtype=X.dtype)  # arrays assigned: the constructor
        narrow.data, narrow.indices = X.data, X.indices  # would copy views ("prune")
        narrow.indptr = X.indptr.astype(np.int32)
        picked = narrow[:, np.asarray(columns, dtype=np.int64)]
        out = sp.csr_matrix((picked.data.astype(dtype, copy=False), picked.indices,
                             picked.indptr.astype(np.int64)), shape=picked.shape)
        out.sort_indices()
        return out
    in_panel = np.zeros(X.shape[1], dtype=bool)
    in_panel[columns] = True
    lookup = np.zeros(X.shape[1], dtype=np.int32)
    lookup[columns] = np.arange(len(columns), dtype=np.int32)
    end = int(X.indptr[-1])
    mask = np.empty(min(end, _PANEL_PIECE), dtype=bool)  # reused: no page faults per piece
    positions, new_columns, values = [], [], []
    for start in range(0, end, _PANEL_PIECE):
        stop = min(start + _PANEL_PIECE, end)
        indices = X.indices[start:stop]
        found = np.flatnonzero(np.take(in_panel, indices, out=mask[:stop - start], mode="clip"))
        new_columns.append(lookup[indices[found]])
        values.append(X.data[start:stop][found].astype(dtype))
        positions.append(found + start)
    # Panel entries per row: where each row's start falls among the (sorted) positions.
    counts = np.diff(np.searchsorted(np.concatenate(positions), X.indptr))
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    out = sp.csr_matrix((np.concatenate(values), np.concatenate(new_columns), indptr),
                        shape=(n_cells, len(columns)))
    out.sort_indices()  # panel order differs from matrix column order
    return out


def log_normalize(X: sp.csr_matrix, value_kind: str, *, target_sum: float = TARGET_SUM,
                  columns: NDArray[Any] | None = None,
                  dtype: type[np.floating[Any]] = np.float32) -> sp.csr_matrix:
    """``log1p(x / total * target_sum)`` per cell as a new CSR matrix of ``dtype``.

    ``lognorm`` values are returned as given (cast to ``dtype``).  ``columns`` keeps only those
    genes, in that order, still scaled by each cell's total over all of its genes (only the
    kept columns are copied).  Cells without any expression stay all zero.
    """
    # float32 work stays float32 (half the memory traffic); totals are float64 either way
    work = np.float32 if dtype == np.float32 else np.float64
    block = X.astype(work) if columns is None else panel_block(X, columns, dtype=work)
    if value_kind != "lognorm":
        totals = cell_totals(X)
        scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
        block.data = block.data * np.repeat(scale.astype(work), np.diff(block.indptr))
        np.log1p(block.data, out=block.data)
    out = sp.csr_matrix((block.data.astype(dtype, copy=False), block.indices, block.indptr),
                        shape=block.shape)
    out.has_sorted_indices = block.has_sorted_indices
    return out


# -- group statistics ----------------------------------------------------------------------
def group_moments(Xn: sp.csr_matrix, codes: NDArray[Any], n_groups: int
                  ) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """Per-group cell counts, means and variances of every gene (sparse, no densifying of
    the cells x genes matrix; the result is groups x genes)."""
    n_cells = Xn.shape[0]
    G = sp.csr_matrix((np.ones(n_cells), (codes, np.arange(n_cells))), shape=(n_groups, n_cells))
    counts = np.asarray(G.sum(axis=1)).ravel()
    sums = np.asarray((G @ Xn).todense(), dtype=np.float64)
    sq = Xn.copy()
    sq.data = sq.data.astype(np.float64) ** 2
    sumsq = np.asarray((G @ sq).todense())
    denom = np.maximum(counts, 1)[:, None]
    mean = sums / denom
    var = np.maximum(sumsq / denom - mean**2, 0.0)
    return counts, mean, var


def group_sums(Xn: sp.csr_matrix, codes: NDArray[Any], n_groups: int
               ) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]:
    """Per-group cell counts and, per gene, sums, sums of squares and non-zero counts.

    Everything a one-vs-rest test needs, as ``n_groups x genes`` arrays (float64): memory
    O(genes x groups) plus one temporary array of the non-zeros, never cells x genes.
    """
    n_cells = Xn.shape[0]
    G = sp.csr_matrix((np.ones(n_cells), (codes, np.arange(n_cells))), shape=(n_groups, n_cells))
    counts = np.asarray(G.sum(axis=1)).ravel()

    def summed(data: NDArray[Any]) -> NDArray[Any]:
        same_layout = sp.csr_matrix((data, Xn.indices, Xn.indptr), shape=Xn.shape)
        return np.asarray((G @ same_layout).todense(), dtype=np.float64)

    sums = summed(Xn.data.astype(np.float64, copy=False))
    sumsq = summed(Xn.data.astype(np.float64) ** 2)
    nonzero = summed((Xn.data > 0).astype(np.float32))
    return counts, sums, sumsq, nonzero


def welch_t(n_in: Any, mean_in: NDArray[Any], var_in: NDArray[Any], n_rest: Any,
            mean_rest: NDArray[Any], var_rest: NDArray[Any]
            ) -> tuple[NDArray[Any], NDArray[Any]]:
    """Welch's t and its degrees of freedom from population moments (arrays broadcast)."""
    n_in = np.maximum(n_in, 1)
    n_rest = np.maximum(n_rest, 1)
    # Bessel-corrected variances for the test.
    v_in = var_in * n_in / np.maximum(n_in - 1, 1)
    v_rest = var_rest * n_rest / np.maximum(n_rest - 1, 1)
    se2 = v_in / n_in + v_rest / n_rest
    t = (mean_in - mean_rest) / np.sqrt(se2 + 1e-12)
    df = se2**2 / ((v_in / n_in) ** 2 / np.maximum(n_in - 1, 1)
                   + (v_rest / n_rest) ** 2 / np.maximum(n_rest - 1, 1) + 1e-300)
    return t, df


def one_vs_rest_t(counts: NDArray[Any], mean: NDArray[Any], var: NDArray[Any]
                  ) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """Welch t statistics (groups x genes) of each group against all other cells.

    Returns ``(t, rest_mean, df)``.  The rest's moments come from the group moments, so
    nothing is recomputed over the cells.
    """
    total = counts.sum()
    sums = mean * counts[:, None]
    sumsq = (var + mean**2) * counts[:, None]
    n_rest = np.maximum(total - counts, 1)[:, None]
    rest_mean = (sums.sum(0)[None, :] - sums) / n_rest
    rest_var = np.maximum((sumsq.sum(0)[None, :] - sumsq) / n_rest - rest_mean**2, 0.0)
    t, df = welch_t(counts[:, None], mean, var, n_rest, rest_mean, rest_var)
    return t, rest_mean, df


_RANK_BLOCK_NNZ = 1 << 22  # non-zeros ranked at once: a few tens of MB of temporaries


def rank_sum_test(Xn: sp.csr_matrix, codes: NDArray[Any], counts: NDArray[Any]
                  ) -> tuple[NDArray[Any], NDArray[Any]]:
    """Wilcoxon rank-sum z scores and two-sided p-values (groups x genes), tie-corrected.

    Expression is never negative, so every zero of a gene shares the lowest average rank;
    only the non-zero values are ranked (one sort of the non-zeros, genes side by side), and
    the rank sums per group come from one sparse product.  No dense cells x genes matrix;
    genes are ranked in blocks of about a few million non-zeros, so the temporaries stay
    bounded whatever the matrix's size.
    """
    from scipy.stats import norm

    n_cells, n_genes = Xn.shape
    n_groups = len(counts)
    Xc = Xn.tocsc()
    Xc.sort_indices()
    G = sp.csr_matrix((np.ones(n_cells), (codes, np.arange(n_cells))), shape=(n_groups, n_cells))
    z = np.empty((n_groups, n_genes))
    start = 0
    while start < n_genes:
        # The widest block of genes holding at most _RANK_BLOCK_NNZ non-zeros (at least one).
        limit = Xc.indptr[start] + _RANK_BLOCK_NNZ
        stop = max(start + 1, int(np.searchsorted(Xc.indptr, limit, side="right")) - 1)
        stop = min(stop, n_genes)
        z[:, start:stop] = _rank_sum_block(Xc[:, start:stop], G, counts)
        start = stop
    return z, 2 * norm.sf(np.abs(z))


def _rank_sum_block(Xc: sp.csc_matrix, G: sp.csr_matrix, counts: NDArray[Any]) -> NDArray[Any]:
    """z scores (groups x the block's genes) for one block of genes (sorted CSC)."""
    n_cells, n_genes = Xc.shape
    nnz_per_gene = np.diff(Xc.indptr)
    zeros = n_cells - nnz_per_gene
    gene_of = np.repeat(np.arange(n_genes), nnz_per_gene)
    order = np.lexsort((Xc.data, gene_of))  # by gene, then by value
    values, genes_sorted = Xc.data[order], gene_of[order]
    position = np.arange(len(order)) - Xc.indptr[genes_sorted]  # 0-based within the gene
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = (genes_sorted[1:] != genes_sorted[:-1]) | (values[1:] != values[:-1])
    first = np.flatnonzero(starts)
    last = np.append(first[1:], len(order)) - 1
    tie_size = (last - first + 1).astype(np.float64)
    average = (position[first] + position[last]) / 2.0 + 1.0  # 1-based rank among non-zeros
    ranks = np.empty(len(order))
    ranks[order] = np.repeat(average, last - first + 1) + zeros[genes_sorted]
    tie_term = np.bincount(genes_sorted[first], weights=tie_size**3 - tie_size,
                           minlength=n_genes) + zeros.astype(np.float64) ** 3 - zeros

    R = sp.csc_matrix((ranks, Xc.indices, Xc.indptr), shape=Xc.shape)
    B = sp.csc_matrix((np.ones_like(ranks), Xc.indices, Xc.indptr), shape=Xc.shape)
    nonzero_rank_sums = np.asarray((G @ R).todense())
    nonzeros_in_group = np.asarray((G @ B).todense())
    n1 = counts[:, None].astype(np.float64)
    rank_sums = nonzero_rank_sums + (n1 - nonzeros_in_group) * (zeros[None, :] + 1) / 2.0
    n2 = n_cells - n1
    u = rank_sums - n1 * (n1 + 1) / 2.0
    var_u = n1 * n2 / 12.0 * ((n_cells + 1) - tie_term[None, :] / (n_cells * (n_cells - 1.0)))
    return (u - n1 * n2 / 2.0) / np.sqrt(np.maximum(var_u, 1e-12))


def benjamini_hochberg(p: NDArray[Any]) -> NDArray[Any]:
    """Benjamini-Hochberg adjusted p-values (same order as ``p``)."""
    p = np.asarray(p, dtype=float)
    n = len(p)
    if n == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(adjusted, 1.0)
    return out

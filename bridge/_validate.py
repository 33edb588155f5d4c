"""Checks that turn bad input into clear errors before it becomes silently wrong output.

Structural checks are O(cells); value checks are O(nnz) and run in slices so that they never
allocate more than one slice's worth of temporaries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ._errors import CapacityError, InputError

if TYPE_CHECKING:
    import scipy.sparse as sp

INT32_MAX = np.iinfo(np.int32).max
_SLICE = 1 << 22  # elements per slice of the O(nnz) checks: 4M values, 32 MB of float64


def check_ids(ids: Sequence[str] | np.ndarray, *, what: str, where: str) -> None:
    """Refuse empty, missing or duplicated cell / gene ids, naming a few offenders."""
    n = len(ids)
    if n == 0:
        return
    missing = [i for i, v in enumerate(ids) if v is None or v == ""]
    if missing:
        msg = (
            f"{len(missing)} {what} id(s) in {where} are empty or missing (first at position "
            f"{missing[0]}). Give every {what} a unique name before converting."
        )
        raise InputError(msg)
    if len(set(ids)) != n:
        dupes = [k for k, c in Counter(ids).items() if c > 1]
        shown = ", ".join(repr(d) for d in dupes[:5])
        fix = (
            "make them unique (R: make.unique(); scanpy: adata.obs_names_make_unique())"
            if what == "cell"
            else "make them unique (R: make.unique(); scanpy: adata.var_names_make_unique()) "
            "or aggregate the duplicated features"
        )
        msg = f"{len(dupes)} duplicated {what} id(s) in {where}: {shown}. Please {fix}."
        raise InputError(msg)


def check_shape(n_cells: int, n_genes: int, *, where: str) -> None:
    """Refuse matrices without cells or without genes."""
    if n_cells == 0 or n_genes == 0:
        msg = (
            f"{where} has {n_cells} cells and {n_genes} genes; there is nothing to convert. "
            "Check that the assay / layer you asked for is the one holding the data."
        )
        raise InputError(msg)


def check_csr_structure(
    indptr: np.ndarray, indices: np.ndarray, n_data: int, shape: tuple[int, int], *, where: str
) -> None:
    """Refuse index arrays that do not describe a valid CSR matrix of ``shape``."""
    n_rows, n_cols = shape
    if indptr.ndim != 1 or len(indptr) != n_rows + 1:
        msg = (
            f"{where}: indptr has {len(indptr)} entries but a matrix with {n_rows} cells needs "
            f"{n_rows + 1}."
        )
        raise InputError(msg)
    if len(indices) != n_data:
        msg = f"{where}: {len(indices)} indices but {n_data} values; they must be the same length."
        raise InputError(msg)
    if n_rows and (indptr[0] != 0 or indptr[-1] != len(indices)):
        msg = (
            f"{where}: indptr must start at 0 and end at nnz={len(indices)}, "
            f"got {int(indptr[0])} .. {int(indptr[-1])}."
        )
        raise InputError(msg)
    steps = np.diff(indptr)
    if steps.size and steps.min() < 0:
        row = int(np.argmax(steps < 0))
        msg = f"{where}: indptr decreases at cell {row}; indptr must be non-decreasing."
        raise InputError(msg)
    for start in range(0, len(indices), _SLICE):
        part = indices[start : start + _SLICE]
        if part.size and (part.min() < 0 or part.max() >= n_cols):
            bad = int(part[(part < 0) | (part >= n_cols)][0])
            msg = (
                f"{where}: gene index {bad} is out of range for {n_cols} genes "
                "(indices must lie in [0, n_genes))."
            )
            raise InputError(msg)


def indices_sorted(indptr: np.ndarray, indices: np.ndarray) -> bool:
    """Whether the column indices are strictly increasing within every row."""
    n = len(indices)
    if n < 2:
        return True
    # A non-increasing step is allowed only where a new row starts.
    row_starts = np.zeros(n, dtype=bool)
    starts = indptr[1:-1]
    row_starts[starts[starts < n]] = True
    for start in range(1, n, _SLICE):
        stop = min(start + _SLICE, n)
        steps = indices[start:stop].astype(np.int64) - indices[start - 1 : stop - 1]
        if np.any((steps <= 0) & ~row_starts[start:stop]):
            return False
    return True


def _locate(
    position: int, indptr: np.ndarray | None, cells: Sequence[str] | np.ndarray | None
) -> str:
    """' (cell NAME)' for the value at ``position``, when rows are known."""
    if indptr is None or cells is None:
        return ""
    row = int(np.searchsorted(indptr, position, side="right")) - 1
    return f", first in cell {cells[row]!r}"


def check_values(
    data: np.ndarray,
    *,
    value_kind: str,
    where: str,
    indptr: np.ndarray | None = None,
    cells: Sequence[str] | np.ndarray | None = None,
) -> None:
    """Refuse NaN, infinite and negative values, and non-integers in counts.

    With ``indptr`` and ``cells`` the message names the first offending cell.
    """
    if data.dtype.kind in "iu":
        if data.size and data.min() < 0:
            msg = f"{where}: negative values (min {int(data.min())}); expression must be >= 0."
            raise InputError(msg)
        return
    if data.dtype.kind != "f":
        msg = f"{where}: values of dtype {data.dtype} are not numeric expression values."
        raise InputError(msg)
    for start in range(0, len(data), _SLICE):
        part = data[start : start + _SLICE]
        finite = np.isfinite(part)
        if not finite.all():
            at = _locate(start + int(np.argmin(finite)), indptr, cells)
            msg = (
                f"{where}: non-finite values (NaN or Inf){at}. Remove or impute them before "
                "annotation."
            )
            raise InputError(msg)
        if part.size and part.min() < 0:
            at = _locate(start + int(np.argmin(part)), indptr, cells)
            msg = (
                f"{where}: negative values (min {float(part.min()):g}{at}). "
                "Expression must be >= 0; "
                "scaled data (Seurat scale.data, sc.pp.scale) cannot be used - pass counts or "
                "log-normalised data instead."
            )
            raise InputError(msg)
        if value_kind == "counts" and not np.array_equal(part, np.rint(part)):
            first = int(np.argmax(part != np.rint(part)))
            at = _locate(start + first, indptr, cells)
            msg = (
                f"{where}: values are not integers (e.g. {float(part[first]):g}{at}) but this "
                "layer is meant to hold raw counts. Pass the raw counts, or say the values are "
                "log-normalised (value_kind='lognorm')."
            )
            raise InputError(msg)


def looks_like_counts(data: np.ndarray) -> bool:
    """Whether every stored value is a whole number (sampled at most 1M values)."""
    if data.dtype.kind in "iu":
        return True
    sample = data[: 1 << 20]
    return bool(np.array_equal(sample, np.rint(sample)))


def check_fits_int32(nnz: int, *, target: str) -> None:
    """Refuse to build a target that cannot index ``nnz`` non-zeros with 32-bit offsets."""
    if nnz > INT32_MAX:
        msg = (
            f"The matrix has {nnz:,} non-zeros but {target} indexes them with 32-bit integers "
            f"(at most {INT32_MAX:,}). Split the cells into several objects (for example per "
            "sample), or keep the data in an Arrow CSR file, which switches to 64-bit offsets."
        )
        raise CapacityError(msg)


def sorted_csr(X: sp.csr_matrix) -> sp.csr_matrix:
    """A copy of ``X`` with indices sorted within rows; the input is left untouched."""
    out = X.copy()
    out.has_sorted_indices = False
    out.sort_indices()
    return out

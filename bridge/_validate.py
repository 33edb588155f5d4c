"""Checks that turn bad input into clear errors before it becomes silently wrong output.

Structural checks are O(cells); value checks are O(nnz) and run in slices so that they never
allocate more than one slice's worth of temporaries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ._errors import CapacityError, InputError

if TYPE_CHECKING:
    import scipy.sparse as sp

INT32_MAX = np.iinfo(np.int32).max
#: No expression value (counts, TPM, log values) comes near this; larger values are damage,
#: and summing or normalising them overflows (a cell would silently become "Unknown").
MAX_VALUE = 1e15
_SLICE = 1 << 22  # elements per slice of the O(nnz) checks: 4M values, 32 MB of float64


def check_ids(ids: Sequence[str] | NDArray[Any], *, what: str, where: str) -> None:
    """Refuse empty, missing or duplicated cell / gene ids, naming a few offenders."""
    n = len(ids)
    if n == 0:
        return
    code = "invalid_cells" if what == "cell" else "invalid_genes"
    missing = [i for i, v in enumerate(ids) if v is None or v == ""]
    if missing:
        msg = (
            f"{len(missing)} {what} id(s) in {where} are empty or missing (first at position "
            f"{missing[0]}). Give every {what} a unique name before converting."
        )
        raise InputError(msg, code=code)
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
        raise InputError(msg, code=code)


def check_shape(n_cells: int, n_genes: int, *, where: str) -> None:
    """Refuse matrices without cells or without genes."""
    if n_cells == 0 or n_genes == 0:
        msg = (
            f"{where} has {n_cells} cells and {n_genes} genes; there is nothing to convert. "
            "Check that the assay / layer you asked for is the one holding the data."
        )
        raise InputError(msg, code="invalid_shape")


def check_csr_structure(
    indptr: NDArray[Any], indices: NDArray[Any], n_data: int, shape: tuple[int, int], *, where: str
) -> None:
    """Refuse index arrays that do not describe a valid CSR matrix of ``shape``.

    Each failure has its own code (``indptr_length``, ``shape_mismatch``,
    ``indptr_not_monotone``, ``index_out_of_range``), which the server reports as is.
    """
    n_rows, n_cols = shape
    if indptr.ndim != 1 or len(indptr) != n_rows + 1:
        msg = (
            f"{where}: indptr has {len(indptr)} entries but a matrix with {n_rows} cells needs "
            f"n_cells + 1 = {n_rows + 1}."
        )
        raise InputError(msg, code="indptr_length")
    if len(indices) != n_data:
        msg = (f"{where}: {len(indices)} indices but {n_data} values; they must be the same "
               "length (one gene index per value).")
        raise InputError(msg, code="shape_mismatch")
    if not n_rows:
        return
    # Bounds first, so that the differences below cannot overflow.
    low, high = int(indptr.min()), int(indptr.max())
    if low < 0 or high > n_data:
        msg = (f"{where}: indptr values must lie in [0, {n_data}] (the number of values), "
               f"got {low} .. {high}.")
        raise InputError(msg, code="indptr_not_monotone")
    steps = np.diff(indptr)
    if indptr[0] != 0 or (steps.size and steps.min() < 0):
        row = 0 if indptr[0] != 0 else int(np.argmax(steps < 0))
        msg = (f"{where}: indptr must start at 0 and never decrease (problem at cell {row}); "
               "it must be non-decreasing.")
        raise InputError(msg, code="indptr_not_monotone")
    if indptr[-1] != n_data:
        msg = (f"{where}: indptr ends at {int(indptr[-1])} but there are {n_data} values; "
               "indptr must end at nnz.")
        raise InputError(msg, code="shape_mismatch")
    for start in range(0, len(indices), _SLICE):
        part = indices[start : start + _SLICE]
        if part.size and (part.min() < 0 or part.max() >= n_cols):
            bad = int(part[(part < 0) | (part >= n_cols)][0])
            msg = (
                f"{where}: gene index {bad} is out of range for {n_cols} genes "
                "(indices must lie in [0, n_genes); is the matrix cells x genes, not genes x "
                "cells?)."
            )
            raise InputError(msg, code="index_out_of_range")


def indices_sorted(indptr: NDArray[Any], indices: NDArray[Any]) -> bool:
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
    position: int, indptr: NDArray[Any] | None, cells: Sequence[str] | NDArray[Any] | None
) -> str:
    """' (cell NAME)' for the value at ``position``, when rows are known."""
    if indptr is None or cells is None:
        return ""
    row = int(np.searchsorted(indptr, position, side="right")) - 1
    return f", first in cell {cells[row]!r}"


def check_values(
    data: NDArray[Any],
    *,
    value_kind: str,
    where: str,
    indptr: NDArray[Any] | None = None,
    cells: Sequence[str] | NDArray[Any] | None = None,
) -> None:
    """Refuse NaN, infinite and negative values, and non-integers in counts.

    With ``indptr`` and ``cells`` the message names the first offending cell.
    """
    if data.dtype.kind in "iu":
        if data.size and data.min() < 0:
            msg = f"{where}: negative values (min {int(data.min())}); expression must be >= 0."
            raise InputError(msg, code="invalid_values")
        if data.size and data.dtype.itemsize > 4 and data.max() > MAX_VALUE:
            _refuse_too_large(data, 0, where, indptr, cells)
        return
    if data.dtype.kind != "f":
        msg = f"{where}: values of dtype {data.dtype} are not numeric expression values."
        raise InputError(msg, code="invalid_values")
    for start in range(0, len(data), _SLICE):
        part = data[start : start + _SLICE]
        finite = np.isfinite(part)
        if not finite.all():
            at = _locate(start + int(np.argmin(finite)), indptr, cells)
            msg = (
                f"{where}: non-finite values (NaN or Inf){at}. Remove or impute them before "
                "annotation."
            )
            raise InputError(msg, code="non_finite_values")
        if part.size and part.min() < 0:
            at = _locate(start + int(np.argmin(part)), indptr, cells)
            msg = (
                f"{where}: negative values (min {float(part.min()):g}{at}). "
                "Expression must be >= 0; "
                "scaled data (Seurat scale.data, sc.pp.scale) cannot be used - pass counts or "
                "log-normalised data instead."
            )
            raise InputError(msg, code="invalid_values")
        if part.size and part.max() > MAX_VALUE:
            _refuse_too_large(part, start, where, indptr, cells)
        if value_kind == "counts" and not np.array_equal(part, np.rint(part)):
            first = int(np.argmax(part != np.rint(part)))
            at = _locate(start + first, indptr, cells)
            msg = (
                f"{where}: values are not integers (e.g. {float(part[first]):g}{at}) but this "
                "layer is meant to hold raw counts. Pass the raw counts, or say the values are "
                "log-normalised (value_kind='lognorm' in Python, --value-kind lognorm on the "
                "command line, value_kind = \"lognorm\" in R) or normalised (TPM / CPM: "
                "'normalized')."
            )
            raise InputError(msg, code="non_integer_counts")


def _refuse_too_large(part: NDArray[Any], start: int, where: str, indptr: NDArray[Any] | None,
                      cells: Sequence[str] | NDArray[Any] | None) -> None:
    at = _locate(start + int(np.argmax(part)), indptr, cells)
    msg = (f"{where}: a value of {float(part.max()):g}{at} is beyond any expression value "
           f"(at most {MAX_VALUE:g}); sums and normalisation of it overflow. Check the matrix "
           "(a wrong scale factor, or raw bytes read as numbers).")
    raise InputError(msg, code="invalid_values")


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

"""Write a :class:`CellMatrix` to an ``.rds`` as a dgCMatrix, SingleCellExperiment or Seurat."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from .._validate import check_fits_int32
from ..matrix import CellMatrix
from . import _r
from ._files import atomic_output

__all__ = ["to_r", "write_rds"]

Container = Literal["dgCMatrix", "SingleCellExperiment", "Seurat"]


def to_r(matrix: CellMatrix, *, container: Container = "dgCMatrix") -> object:
    """An R object (via rpy2) holding ``matrix``: the CSR arrays become the dgCMatrix slots.

    Raises :class:`~bridge.CapacityError` when nnz exceeds what a dgCMatrix can index.
    """
    _r.session()  # start R through scbridge's one entry point (see _r.session)
    import rpy2.rinterface as ri
    import rpy2.robjects as ro

    check_fits_int32(matrix.nnz, target="an R dgCMatrix")
    X = matrix.X
    if not X.has_sorted_indices:
        X = X.sorted_indices()
    i = ri.IntSexpVector.from_memoryview(np.ascontiguousarray(X.indices, np.int32).data)
    p = ri.IntSexpVector.from_memoryview(np.ascontiguousarray(X.indptr, np.int32).data)
    x = ri.FloatSexpVector.from_memoryview(np.ascontiguousarray(X.data, np.float64).data)
    m = _r.call(
        "scb_make_dgc", i, p, x, matrix.n_genes, matrix.n_cells,
        ro.StrVector([str(g) for g in matrix.genes]), ro.StrVector([str(c) for c in matrix.cells]),
    )
    if container == "dgCMatrix":
        return m
    meta = ri.NULL
    if matrix.obs.num_columns:
        from .write_back import _r_specs

        cells = ro.StrVector([str(c) for c in matrix.cells])
        meta = _r.call("scb_frame", _r_specs(matrix.obs), cells)
    return _r.call("scb_make_container", m, container, meta)


def write_rds(
    matrix: CellMatrix, path: str | os.PathLike[str], *, container: Container = "dgCMatrix",
    compress: bool = True,
) -> Path:
    """Save ``matrix`` as an ``.rds`` holding a genes x cells ``container``.

    ``compress=False`` writes faster and lets ``readRDS`` skip decompression.  R writes a
    temporary file that replaces ``path`` only once complete.
    """
    obj = to_r(matrix, container=container)
    import rpy2.robjects as ro

    with atomic_output(path) as temp:
        ro.r["saveRDS"](obj, file=os.fspath(temp), compress=compress)
    return Path(path)

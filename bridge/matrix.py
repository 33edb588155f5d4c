"""`CellMatrix`: the one in-memory type every reader produces and every engine consumes."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from numpy.typing import NDArray

from . import _validate as validate
from ._errors import GeneIdError, InputError
from .numerics import VALUE_KINDS, ValueKind

if TYPE_CHECKING:
    import anndata

__all__ = ["CellMatrix", "ValueKind", "csr_view"]

logger = logging.getLogger(__name__)


def csr_view(
    data: NDArray[Any], indices: NDArray[Any], indptr: NDArray[Any], shape: tuple[int, int]
) -> sp.csr_matrix:
    """A CSR matrix on exactly these arrays.

    scipy's constructor "prunes" any array that is a view on less than half of its base by
    copying it (``scipy._lib._util._prune_array``), which would turn every chunk into a copy.
    Assigning the arrays after construction keeps them as the views they are.
    """
    out = sp.csr_matrix(shape, dtype=data.dtype)
    out.data, out.indices, out.indptr = data, indices, indptr
    return out


def _as_id_array(ids: Sequence[str] | NDArray[Any] | pa.Array) -> NDArray[Any]:
    if isinstance(ids, pa.ChunkedArray | pa.Array):
        ids = ids.to_pylist()
    arr = np.asarray(ids, dtype=object)
    if arr.ndim != 1:
        msg = f"ids must be one-dimensional, got shape {arr.shape}"
        raise InputError(msg)
    return arr


class CellMatrix:
    """A cells x genes sparse expression matrix with its cell ids, gene ids and metadata.

    Parameters
    ----------
    X
        Cells x genes CSR matrix.  Its arrays are used as given: views on R memory, on a
        memory-mapped Arrow file, or on anything else, stay views.
    cells, genes
        Unique string ids, one per row / column.
    obs
        Per-cell metadata as a :class:`pyarrow.Table` in cell order (R factors become
        dictionary columns that keep all their levels).
    value_kind
        ``"counts"`` for raw integer counts, ``"lognorm"`` for log-normalised values,
        ``"normalized"`` for depth-normalised values that are not logged (TPM, CPM, FPKM);
        see :mod:`bridge.numerics`.
    source
        Where the matrix came from, e.g. ``"Seurat RNA counts"``.
    validate
        Check ids, structure and values, raising :class:`~bridge.InputError` with advice on
        the first problem.  Unsorted column indices are sorted into new arrays (the input
        is never modified).  ``validate=False`` trusts the caller and costs nothing.

    Attributes
    ----------
    keepalive
        Objects that own the memory of ``X`` (an R object, a memory map); held so the views
        stay valid as long as this matrix lives.
    """

    # __weakref__: results derived from a matrix (bridge._cellmap) are dropped with it.
    __slots__ = ("X", "__weakref__", "cells", "genes", "keepalive", "obs", "source", "value_kind")

    def __init__(
        self,
        X: sp.csr_matrix | sp.csr_array,
        cells: Sequence[str] | NDArray[Any] | pa.Array,
        genes: Sequence[str] | NDArray[Any] | pa.Array,
        *,
        obs: pa.Table | None = None,
        value_kind: ValueKind = "counts",
        source: str = "",
        validate: bool = True,
        keepalive: Any = None,
    ) -> None:
        if not sp.issparse(X) or X.format != "csr":
            msg = f"X must be a scipy CSR matrix, got {type(X).__name__}"
            raise InputError(msg)
        if value_kind not in VALUE_KINDS:
            msg = f"value_kind must be one of {', '.join(VALUE_KINDS)}; got {value_kind!r}."
            raise InputError(msg, code="invalid_parameter")
        if not isinstance(X, sp.csr_matrix):
            X = sp.csr_matrix(X, copy=False)
        self.X = X
        self.cells = _as_id_array(cells)
        self.genes = _as_id_array(genes)
        self.obs = obs if obs is not None else pa.table({})
        self.value_kind: ValueKind = value_kind
        self.source = source
        self.keepalive = keepalive
        if len(self.cells) != X.shape[0] or len(self.genes) != X.shape[1]:
            msg = (
                f"{source or 'matrix'}: {len(self.cells)} cell ids and {len(self.genes)} gene ids "
                f"for a matrix of {X.shape[0]} cells x {X.shape[1]} genes."
            )
            raise InputError(msg)
        if self.obs.num_columns and self.obs.num_rows != X.shape[0]:
            msg = f"obs has {self.obs.num_rows} rows for {X.shape[0]} cells."
            raise InputError(msg)
        if validate:
            self.validate()

    # -- checks ---------------------------------------------------------------------------
    def validate(self, *, values: bool = True, where: str | None = None) -> None:
        """Check ids, CSR structure and (optionally) values; sort indices into new arrays.

        ``where`` names the data in error messages (default: ``source``); readers pass the
        file's path so that a message names the file.
        """
        where = where or self.source or "the matrix"
        validate.check_shape(*self.X.shape, where=where)
        validate.check_ids(self.cells, what="cell", where=where)
        validate.check_ids(self.genes, what="gene", where=where)
        X = self.X
        validate.check_csr_structure(X.indptr, X.indices, len(X.data), X.shape, where=where)
        if not validate.indices_sorted(X.indptr, X.indices):
            logger.info("%s: gene indices were unsorted within cells; sorted into new arrays",
                        where)
            self.X = validate.sorted_csr(X)
            self.keepalive = None
        else:
            X.has_sorted_indices = True
        if values:
            validate.check_values(
                self.X.data, value_kind=self.value_kind, where=where,
                indptr=self.X.indptr, cells=self.cells,
            )

    # -- shape ----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(n_cells, n_genes)``."""
        n_cells, n_genes = self.X.shape
        return int(n_cells), int(n_genes)

    @property
    def n_cells(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_genes(self) -> int:
        return int(self.X.shape[1])

    @property
    def nnz(self) -> int:
        return int(self.X.indptr[-1]) if self.X.shape[0] else 0

    def __len__(self) -> int:
        return self.n_cells

    def __repr__(self) -> str:
        return (
            f"CellMatrix({self.n_cells} cells x {self.n_genes} genes, nnz={self.nnz:,}, "
            f"{self.value_kind}, dtype={self.X.dtype}, source={self.source!r})"
        )

    # -- slicing --------------------------------------------------------------------------
    def slice_cells(self, start: int, stop: int) -> CellMatrix:
        """Cells ``start:stop`` as views on this matrix's arrays (only indptr is new)."""
        X = self.X
        start, stop = max(0, start), min(stop, self.n_cells)
        lo, hi = int(X.indptr[start]), int(X.indptr[stop])
        indptr = X.indptr[start : stop + 1] - X.indptr[start]
        chunk = csr_view(X.data[lo:hi], X.indices[lo:hi], indptr, (stop - start, X.shape[1]))
        chunk.has_sorted_indices = X.has_sorted_indices
        return CellMatrix(
            chunk,
            self.cells[start:stop],
            self.genes,
            obs=self.obs.slice(start, stop - start) if self.obs.num_columns else None,
            value_kind=self.value_kind,
            source=self.source,
            validate=False,
            keepalive=self.keepalive,
        )

    def iter_chunks(self, n: int) -> Iterator[CellMatrix]:
        """Yield consecutive chunks of at most ``n`` cells, as views (no copy of the values)."""
        if n <= 0:
            msg = f"chunk size must be positive, got {n}"
            raise InputError(msg)
        for start in range(0, self.n_cells, n):
            yield self.slice_cells(start, start + n)

    def select_genes(
        self, genes: Sequence[str], *, missing: Literal["error", "zero"] = "error"
    ) -> CellMatrix:
        """A new matrix with columns in the order of ``genes`` (a copy: the layout changes).

        ``missing="zero"`` adds all-zero columns for genes that are not present; ``"error"``
        refuses, naming them.
        """
        wanted = list(genes)
        validate.check_ids(wanted, what="gene", where="the requested gene list")
        position = {g: i for i, g in enumerate(self.genes)}
        absent = [g for g in wanted if g not in position]
        if absent and missing == "error":
            shown = ", ".join(repr(g) for g in absent[:5])
            msg = (
                f"{len(absent)} of the {len(wanted)} requested genes are not in "
                f"{self.source or 'the matrix'}: {shown}. Check the gene id kind (symbols vs "
                "Ensembl) or pass missing='zero' to fill them with zeros."
            )
            raise GeneIdError(msg)
        # Build a gene -> new column map; absent genes simply receive no values.
        new_col = np.full(self.n_genes, -1, dtype=np.int64)
        for j, g in enumerate(wanted):
            if g in position:
                new_col[position[g]] = j
        X = self.X
        mapped = new_col[X.indices]
        keep = mapped >= 0
        row = np.repeat(np.arange(self.n_cells), np.diff(X.indptr))[keep]
        out = sp.csr_matrix(
            (X.data[keep], (row, mapped[keep])), shape=(self.n_cells, len(wanted)), dtype=X.dtype
        )
        out.sort_indices()
        return CellMatrix(
            out,
            self.cells,
            np.asarray(wanted, dtype=object),
            obs=self.obs,
            value_kind=self.value_kind,
            source=self.source,
            validate=False,
        )

    # -- conversions ----------------------------------------------------------------------
    def to_anndata(self) -> anndata.AnnData:
        """An :class:`anndata.AnnData` sharing ``X`` (counts also go to ``layers['counts']``)."""
        import anndata
        import pandas as pd

        obs = self.obs.to_pandas() if self.obs.num_columns else pd.DataFrame(index=range(0))
        obs.index = pd.Index(self.cells.astype(str), name=None)
        var = pd.DataFrame(index=pd.Index(self.genes.astype(str), name=None))
        adata = anndata.AnnData(X=self.X, obs=obs, var=var)
        adata.uns["scbridge"] = {"value_kind": self.value_kind, "source": self.source}
        return adata

    def materialize(self) -> CellMatrix:
        """A copy that owns its memory (detached from R objects and memory maps)."""
        return CellMatrix(
            self.X.copy(),
            self.cells.copy(),
            self.genes.copy(),
            obs=self.obs,
            value_kind=self.value_kind,
            source=self.source,
            validate=False,
        )

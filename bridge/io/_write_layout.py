"""The 2-D layout into the object written back: a Seurat ``DimReduc``, an SCE ``reducedDim``
or an AnnData ``obsm`` entry, so users do not recompute it.

Names, from the layout method (``scbridge.layout`` of the embedding table): both UMAP methods
are stored as ``umap``, others under their own name::

    Seurat   obj[["scbridge_umap"]]       key "scbridgeumap_", assay.used = the assay read
    SCE      reducedDim(sce, "SCBRIDGE_UMAP")
    AnnData  adata.obsm["X_scbridge_umap"]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from .._errors import InputError

__all__ = ["LayoutSpec", "add_to_h5ad", "add_to_r_object", "layout_spec"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayoutSpec:
    """Coordinates (cells x 2, float64) in the order of ``cells``, and the reduction names."""

    coords: NDArray[Any]
    cells: list[str]
    kind: str

    @property
    def seurat_name(self) -> str:
        return f"scbridge_{self.kind}"

    @property
    def seurat_key(self) -> str:  # Seurat keys: letters and digits, then one underscore
        return f"scbridge{self.kind}_"

    @property
    def sce_name(self) -> str:
        return f"SCBRIDGE_{self.kind.upper()}"

    @property
    def obsm_key(self) -> str:
        return f"X_scbridge_{self.kind}"


def layout_spec(table: pa.Table) -> LayoutSpec:
    """The ``layout`` column of an embedding table (``bridge.embed(..., layout=...)``)."""
    from .._layout import reduction_kind

    if not isinstance(table, pa.Table) or "layout" not in table.column_names \
            or "cell" not in table.column_names:
        found = table.column_names if isinstance(table, pa.Table) else type(table).__name__
        msg = ("layout= needs the table of bridge.embed(..., layout='auto') with 'cell' and "
               f"'layout' columns; got {found}.")
        raise InputError(msg)
    column = table.column("layout").combine_chunks()
    if not pa.types.is_fixed_size_list(column.type) or column.type.list_size != 2:
        msg = f"the 'layout' column must be fixed_size_list<float>[2], not {column.type}."
        raise InputError(msg)
    coords = column.values.to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, 2)
    cells = [str(c) for c in table.column("cell").to_pylist()]
    if len(set(cells)) != len(cells):
        msg = "the layout table has duplicated cell ids."
        raise InputError(msg)
    method = (table.schema.metadata or {}).get(b"scbridge.layout", b"umap-fast").decode()
    return LayoutSpec(coords, cells, reduction_kind(method))


def _order_for(spec: LayoutSpec, object_cells: list[str], where: str) -> NDArray[Any]:
    """Rows of ``spec.coords`` in the object's cell order; every cell must have a position."""
    row_of = {c: i for i, c in enumerate(spec.cells)}
    missing = [c for c in object_cells if c not in row_of]
    if missing:
        msg = (f"{len(missing)} cell(s) of {where} have no layout position, e.g. "
               f"{', '.join(map(repr, missing[:3]))}; a reduction needs every cell. Lay out "
               "the object's own cells (the same file, assay and layer).")
        raise InputError(msg)
    extra = len(spec.cells) - len(object_cells)
    if extra > 0:
        msg = (f"the layout has {extra} cell(s) that are not in {where}; were they laid out "
               "from another object?")
        raise InputError(msg)
    return np.array([row_of[c] for c in object_cells], dtype=np.int64)


def add_to_r_object(obj: Any, spec: LayoutSpec, *, assay: str | None, overwrite: bool,
                    where: str) -> Any:
    """The Seurat / SCE object with the layout added as a reduction (R does the adding)."""
    import rpy2.robjects as ro

    from . import _r

    object_cells = list(_r.r_strings(_r.call("scb_object_cells", obj)))
    order = _order_for(spec, object_cells, where)
    names = list(_r.r_strings(_r.call("scb_reduction_names", obj)))
    kind = str(_r.call("scb_kind", obj)[0])
    name = spec.seurat_name if kind == "seurat" else spec.sce_name
    if name in names and not overwrite:
        msg = (f"{where} already has a reduction {name!r}; pass overwrite=True (CLI: "
               "--overwrite) to replace it.")
        raise InputError(msg)
    coords = spec.coords[order]
    matrix = ro.r["matrix"](ro.FloatVector(coords.ravel(order="F")), nrow=len(order), ncol=2)
    return _r.call("scb_add_reduction", obj, name, spec.seurat_key, matrix,
                   ro.StrVector(object_cells), ro.StrVector([assay or ""]))


def add_to_h5ad(handle: Any, spec: LayoutSpec, obs_names: list[str], *, overwrite: bool,
                where: str) -> None:
    """``obsm[X_scbridge_*]`` of an open (``r+``) h5ad file, in ``obs`` order."""
    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem

    order = _order_for(spec, obs_names, where)
    if "obsm" not in handle:
        write_elem(handle, "obsm", {})
    group = handle["obsm"]
    if spec.obsm_key in group:
        if not overwrite:
            msg = (f"{where} already has obsm[{spec.obsm_key!r}]; pass overwrite=True (CLI: "
                   "--overwrite) to replace it.")
            raise InputError(msg)
        del group[spec.obsm_key]
    write_elem(group, spec.obsm_key, spec.coords[order].astype(np.float32))
    logger.info("write-back: layout written to obsm[%r]", spec.obsm_key)

"""Add per-cell columns to a Seurat / SCE ``.rds`` / ``.rda`` or an ``.h5ad``, leaving the rest
untouched.

:func:`check_write_back` refuses what cannot succeed (an input or output of the wrong kind, a
missing folder, an object that is no Seurat or SingleCellExperiment) before any computation,
so that ``scbridge annotate --write-back`` fails in seconds, not after the annotation.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .._errors import FormatError, InputError, NotFoundError, UnsupportedError
from . import _r
from ._files import atomic_output, refuse_same_file
from ._write_layout import LayoutSpec, add_to_h5ad, add_to_r_object, layout_spec

__all__ = ["as_arrow_table", "check_write_back", "write_back"]

_R_SUFFIXES = (".rds", ".rda", ".rdata")
#: Input suffix -> the suffixes its write-back may be saved as.  An .rda's object can be saved
#: alone (.rds) or with the file's other objects (.rda / .RData).
_OUTPUTS: dict[str, tuple[str, ...]] = {
    ".rds": (".rds",), ".rda": _R_SUFFIXES, ".rdata": _R_SUFFIXES, ".h5ad": (".h5ad",)}

logger = logging.getLogger(__name__)


def as_arrow_table(columns: Any) -> pa.Table:
    """A pyarrow table from a pyarrow / polars / pandas table (pandas index kept as ``cell``)."""
    if isinstance(columns, pa.Table):
        return columns
    if hasattr(columns, "to_arrow"):  # polars
        return columns.to_arrow()
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover
        pd = None
    if pd is not None and isinstance(columns, pd.DataFrame):
        frame = columns if "cell" in columns.columns else columns.rename_axis("cell").reset_index()
        return pa.Table.from_pandas(frame, preserve_index=False)
    msg = f"columns must be a pyarrow, polars or pandas table, got {type(columns).__name__}."
    raise UnsupportedError(msg)


def _flatten_nested(table: pa.Table) -> pa.Table:
    """List / struct columns become readable strings (meta.data / obs hold flat columns)."""
    for i, field in enumerate(table.schema):
        t = field.type
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            values: list[str | None] = []
            for row in table.column(i).to_pylist():
                if row is None:
                    values.append(None)
                    continue
                parts = [
                    f"{v['label']}:{v['score']:.3g}" if isinstance(v, dict) and "label" in v
                    else str(v)
                    for v in row
                ]
                values.append(";".join(parts))
            logger.info("write-back: list column %r stored as ';'-joined text", field.name)
            table = table.set_column(i, field.name, pa.array(values, pa.string()))
        elif pa.types.is_struct(t):
            msg = f"column {field.name!r} is a struct; flatten it before writing back."
            raise UnsupportedError(msg)
    return table


def _prepare(columns: Any) -> tuple[pa.Table, list[str]]:
    table = as_arrow_table(columns)
    if "cell" not in table.column_names:
        msg = (
            "the columns to write back need a 'cell' column with the cell ids "
            f"(got columns {table.column_names})."
        )
        raise InputError(msg)
    cells = [str(c) for c in table.column("cell").to_pylist()]
    if len(set(cells)) != len(cells):
        msg = "the 'cell' column of the columns to write back has duplicated cell ids."
        raise InputError(msg)
    table = _flatten_nested(table.drop_columns(["cell"]))
    if table.num_columns == 0:
        msg = "nothing to write back: the table has only a 'cell' column."
        raise InputError(msg)
    return table, cells


def _check_cells(table_cells: list[str], object_cells: list[str], where: str) -> None:
    known = set(object_cells)
    unknown = [c for c in table_cells if c not in known]
    if unknown:
        msg = (
            f"{len(unknown)} cell id(s) in the columns are not in {where}, e.g. "
            f"{', '.join(map(repr, unknown[:3]))}. Were the calls made on a different object?"
        )
        raise InputError(msg)
    missing = len(known) - len(table_cells)
    if missing:
        logger.warning("%s: %d cells have no value in the new columns; they get NA", where, missing)


def _check_clash(new: list[str], existing: list[str], overwrite: bool, where: str) -> None:
    clash = sorted(set(new) & set(existing))
    if clash and not overwrite:
        msg = (
            f"{where} already has column(s) {', '.join(map(repr, clash))}; pass overwrite=True "
            "(CLI: --overwrite) to replace them, or choose another prefix."
        )
        raise InputError(msg)


def _column_spec(array: pa.ChunkedArray) -> dict[str, Any]:
    """One column in the shape helpers.R's scb_frame() expects."""
    array = array.combine_chunks()
    na = np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    t = array.type
    if pa.types.is_dictionary(t):
        codes = pc.fill_null(array.indices, 0).to_numpy().astype(np.int32) + 1
        levels = [str(v) for v in array.dictionary.to_pylist()]
        return {"kind": "factor", "values": codes, "levels": levels, "ordered": t.ordered, "na": na}
    if pa.types.is_boolean(t):
        values = pc.fill_null(array, False).to_numpy(zero_copy_only=False)
        return {"kind": "logical", "values": values, "na": na}
    if pa.types.is_integer(t):
        values = pc.fill_null(array, 0).to_numpy()
        if values.size and np.abs(values).max() < 2**31 - 1:
            return {"kind": "integer", "values": values.astype(np.int32), "na": na}
        return {"kind": "double", "values": values.astype(np.float64), "na": na}
    if pa.types.is_floating(t):
        values = pc.fill_null(array, 0).to_numpy().astype(np.float64)
        return {"kind": "double", "values": values, "na": na}
    values = [None if v is None else str(v) for v in array.to_pylist()]
    return {"kind": "character", "values": values, "na": na}


def _r_specs(table: pa.Table) -> Any:
    import rpy2.rinterface as ri
    import rpy2.robjects as ro

    specs = {}
    for name in table.column_names:
        spec = _column_spec(table.column(name))
        kind = spec["kind"]
        if kind in ("factor", "integer"):
            values = ro.IntVector(spec["values"])
        elif kind == "double":
            values = ro.FloatVector(spec["values"])
        elif kind == "logical":
            values = ro.BoolVector(spec["values"])
        else:
            values = ro.StrVector([ri.NA_Character if v is None else v for v in spec["values"]])
        entry = {"kind": ro.StrVector([kind]), "values": values, "na": ro.BoolVector(spec["na"])}
        if kind == "factor":
            entry["levels"] = ro.StrVector(spec["levels"])
            entry["ordered"] = ro.BoolVector([spec["ordered"]])
        specs[name] = ro.ListVector(entry)
    return ro.ListVector(specs)


def _located_object(source: Path) -> tuple[Any, Any]:
    """The file's located object (see :func:`bridge.io.rds.locate`), refused unless it is a
    Seurat object or a SingleCellExperiment."""
    from .rds import locate, located_object

    located = locate(source)
    obj = located_object(located)
    if str(_r.call("scb_kind", obj)[0]) not in ("seurat", "sce"):
        msg = (f"{source} holds a {_r.r_class(obj)[0]}; write-back needs a Seurat or "
               "SingleCellExperiment object (the calls themselves can still be saved, e.g. "
               "with --out calls.csv).")
        raise UnsupportedError(msg)
    return located, obj


def _write_back_rds(
    source: Path, table: pa.Table | None, cells: list[str], out: Path, overwrite: bool,
    layout: LayoutSpec | None = None, assay: str | None = None,
) -> None:
    import rpy2.robjects as ro

    where = str(source)
    located, obj = _located_object(source)
    updated = obj
    if table is not None:
        object_cells = list(_r.r_strings(_r.call("scb_object_cells", obj)))
        _check_cells(cells, object_cells, where)
        existing = list(_r.r_strings(_r.call("scb_existing_columns", obj)))
        _check_clash(table.column_names, existing, overwrite, where)
        frame = _r.call("scb_frame", _r_specs(table), ro.StrVector(cells))
        updated = _r.call("scb_add_columns", obj, frame, ro.BoolVector([overwrite]))
    if layout is not None:
        updated = add_to_r_object(updated, layout, assay=assay, overwrite=overwrite, where=where)
    # Written to a temporary file (same suffix: .rds or .rda) that replaces the target only
    # once complete.
    with atomic_output(out, inputs=[source], what="the write-back target") as temp:
        _r.call("scb_save_updated", located, updated, str(temp))


def _write_back_h5ad(
    source: Path, table: pa.Table | None, cells: list[str], out: Path, overwrite: bool,
    layout: LayoutSpec | None = None,
) -> None:
    import h5py
    import pandas as pd

    try:
        from anndata.io import read_elem, write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem, write_elem

    where = str(source)
    from .h5ad import h5ad_errors

    with h5ad_errors(where):
        with h5py.File(source, "r") as f:
            if "obs" not in f:
                msg = f"{where} has no obs group; is it an AnnData .h5ad file?"
                raise FormatError(msg)
            obs = read_elem(f["obs"])
        if table is not None:
            _check_cells(cells, [str(c) for c in obs.index], where)
            _check_clash(table.column_names, [str(c) for c in obs.columns], overwrite, where)
            new = table.to_pandas(types_mapper=None)
            new.index = cells
            for name in table.column_names:
                column = new[name].reindex(obs.index)
                if column.dtype == object:  # text with gaps: h5ad stores it as a categorical
                    column = pd.Categorical(column)
                obs[name] = column
        # A copy of the source (X and every other element byte-identical) gets the new obs
        # and layout; it replaces the target only once complete.
        with atomic_output(out, inputs=[source], what="the write-back target") as temp:
            shutil.copyfile(source, temp)
            with h5py.File(temp, "r+") as f:
                if layout is not None:
                    add_to_h5ad(f, layout, [str(c) for c in obs.index], overwrite=overwrite,
                                where=where)
                if table is not None:
                    del f["obs"]
                    write_elem(f, "obs", obs)


def check_write_back(source_path: str | os.PathLike[str],
                     out_path: str | os.PathLike[str]) -> None:
    """Refuse, before any computation, a write-back of ``source_path`` to ``out_path`` that
    cannot succeed.

    Checks that the input is a file write-back handles (``.rds``, ``.rda`` / ``.RData``,
    ``.h5ad``), that the output's suffix suits it, that the output's folder exists and is
    writable, and, for R files, that the object the reader chooses is a Seurat object or a
    SingleCellExperiment (this loads the file: inside :func:`bridge.io.rds.reuse_loaded` it
    is loaded once for the check, the reading and the write-back).

    Raises
    ------
    InputError, NotFoundError, UnsupportedError
        With what was wrong and what to do.
    """
    from .rds import parse_package_object

    source, out = Path(source_path), Path(out_path)
    if parse_package_object(str(source_path)) is not None:
        msg = (f"write-back needs an input file; {source_path} is a data set of an R package. "
               f"Save it first (in R: saveRDS({source_path}, \"object.rds\")) and annotate "
               "that file.")
        raise UnsupportedError(msg)
    if not source.exists():
        msg = f"{source} does not exist."
        raise InputError(msg)
    refuse_same_file(out, [source], what="the write-back target")
    suffix = source.suffix.lower()
    if suffix not in _OUTPUTS or not source.is_file():
        msg = (f"write-back adds columns to Seurat / SingleCellExperiment objects in .rds, .rda "
               f"or .RData files and to .h5ad files, not to {source}. Keep the calls table "
               "(--out), or convert the input to one of those first.")
        raise UnsupportedError(msg)
    allowed = _OUTPUTS[suffix]
    if out.suffix.lower() not in allowed:
        msg = (f"the write-back of {source.name} must be saved as {' or '.join(allowed)}, not "
               f"{out.name!r}"
               + ("; an .rda output keeps the file's other objects, an .rds one holds the "
                  "annotated object alone." if len(allowed) > 1 else "."))
        raise UnsupportedError(msg)
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        msg = f"cannot write {out}: the folder {folder} does not exist; create it first."
        raise NotFoundError(msg)
    if not os.access(folder, os.W_OK):
        msg = f"cannot write {out}: the folder {folder} is not writable."
        raise InputError(msg)
    if suffix in _R_SUFFIXES:
        _located_object(source)


def write_back(
    source_path: str | os.PathLike[str],
    columns: Any,
    out_path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    layout: pa.Table | None = None,
    assay: str | None = None,
) -> Path:
    """Add per-cell ``columns`` to the object in ``source_path`` and save it to ``out_path``.

    Parameters
    ----------
    source_path
        A Seurat or SingleCellExperiment in an ``.rds``, ``.rda`` or ``.RData`` (columns go to
        ``meta.data`` / ``colData``; the object is the one :func:`bridge.read` reads: the only
        readable object of an ``.rda``, the one supported element of a list) or an ``.h5ad``
        (columns go to ``obs``).  The source file is never modified.
    columns
        A pyarrow, polars or pandas table with a ``cell`` column of cell ids (any order) and
        the columns to add.  Cells missing from it get ``NA``; unknown cells are an error.
    out_path
        Where to write the updated object: an ``.rds`` input as ``.rds`` (a list stays that
        list); an ``.rda`` / ``.RData`` input as ``.rda`` / ``.RData`` (every other object
        of the file kept) or as ``.rds`` (the annotated object alone); an ``.h5ad`` as
        ``.h5ad``.  ``None`` columns with ``layout`` write the layout alone.  It must not be
        the source itself (nor a link to it): that is refused (code ``same_file``).  The object
        is written to a temporary file that replaces ``out_path`` only once complete.
    overwrite
        Replace existing columns (and a layout) of the same name instead of refusing.
    layout
        The table of ``bridge.embed(..., layout="auto")``: its ``layout`` column is stored as
        a reduction, matched by cell id (every cell of the object needs a position): Seurat
        ``obj[["scbridge_umap"]]`` (a ``DimReduc``, key ``scbridgeumap_``), SCE
        ``reducedDim(sce, "SCBRIDGE_UMAP")``, AnnData ``obsm["X_scbridge_umap"]`` (``tsne`` /
        ``pca`` in place of ``umap`` for those methods).
    assay
        The Seurat assay the layout was computed from (its ``assay.used``; default: the
        object's active assay).

    Returns
    -------
    pathlib.Path
        ``out_path``.
    """
    source, out = Path(source_path), Path(out_path)
    if not source.exists():
        msg = f"{source} does not exist."
        raise InputError(msg)
    refuse_same_file(out, [source], what="the write-back target")
    if columns is None and layout is None:
        msg = "nothing to write back: pass columns, a layout, or both."
        raise InputError(msg)
    table, cells = _prepare(columns) if columns is not None else (None, [])
    spec = layout_spec(layout) if layout is not None else None
    from .rds import reuse_loaded

    with reuse_loaded():  # the check and the write-back share one load of an R file
        check_write_back(source, out)
        if source.suffix.lower() in _R_SUFFIXES:
            _write_back_rds(source, table, cells, out, overwrite, spec, assay)
        else:
            _write_back_h5ad(source, table, cells, out, overwrite, spec)
    return out

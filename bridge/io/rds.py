"""Read Seurat (v3/v4/v5), SingleCellExperiment and bare R matrices through rpy2.

A genes x cells ``dgCMatrix`` has slots ``p``, ``i``, ``x``: exactly the ``indptr``,
``indices`` and ``data`` of the cells x genes CSR, so the common case is three numpy views on
R's memory and no copy.  Other layouts are converted, and the code says where:

============================  ==============================================================
``dgCMatrix``                 zero-copy views (read-only; the R object is kept alive)
``dgRMatrix``                 it is the CSC of cells x genes: one conversion
``dgTMatrix``                 triplets: one COO -> CSR conversion (duplicates summed, as in R)
dense ``matrix``              the column-major genes x cells *is* row-major cells x genes:
                              sparsified in blocks of cells, never a second dense copy
``DelayedArray`` and others   realised block-wise in R, one block of cells at a time
split v5 layers               each layer viewed, then joined in the object's cell order
============================  ==============================================================
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from numpy.typing import NDArray
from tqdm.auto import tqdm

from .._errors import BridgeError, InputError, NotFoundError, UnsupportedError
from .._validate import check_shape
from ..matrix import CellMatrix
from ..numerics import value_kind_for_layer
from . import _r
from ._layers import choose_layer

if TYPE_CHECKING:
    from ..numerics import ValueKind

__all__ = ["ALTEXP_PREFIX", "describe_r", "locate", "located_object", "r_frame_to_arrow", "read_r",
           "reuse_loaded"]

logger = logging.getLogger(__name__)

SUPPORTED_CLASSES = (
    "Seurat (v3, v4, v5 with Assay or Assay5)",
    "SingleCellExperiment / SummarizedExperiment",
    "dgCMatrix",
    "dgRMatrix",
    "dgTMatrix",
    "matrix (dense)",
    "DelayedArray / HDF5Array",
    "other Matrix classes (coerced to dgCMatrix)",
)
_BLOCK_ELEMENTS = 1 << 24  # dense elements per block when realising DelayedArray / dense input
#: ``assay="altexp:HTO"`` reads the alternative experiment HTO of a SingleCellExperiment.
ALTEXP_PREFIX = "altexp:"


@dataclass
class _Matrix:
    """A matrix found inside an R object, before conversion."""

    robj: Any
    cells: NDArray[Any]
    genes: NDArray[Any]
    label: str  # e.g. "Seurat assay RNA layer counts"
    layer: str
    X: sp.csr_matrix | None = None  # set when the matrix was already assembled (joined layers)


# -- entry points ---------------------------------------------------------------------------
# Files already loaded, by identity, while reuse_loaded() is active (else None).
_loaded: ContextVar[dict[tuple[str, int, int], Any] | None] = ContextVar("_loaded", default=None)


@contextlib.contextmanager
def reuse_loaded() -> Iterator[None]:
    """Within this block each R file is loaded once, and reading, the write-back check and
    the write-back itself share it (``scbridge annotate --write-back`` loads its input once,
    not three times); outside it nothing is kept.  Nested blocks share the outer one's."""
    if _loaded.get() is not None:
        yield
        return
    token = _loaded.set({})
    try:
        yield
    finally:
        _loaded.reset(token)


def locate(path: str | os.PathLike[str]) -> Any:
    """The object in an ``.rds`` / ``.rda`` / ``.RData`` file, as an R list: ``object``, and
    where it was (``name`` of the ``.rda`` object among ``names``, ``index`` in the plain
    list that held it, its ``container``, the ``env`` of everything the file holds).

    An ``.rda`` holding several objects gives the only one scbridge can read; a plain list
    holding exactly one supported object gives that object; several are listed in the error.
    """
    where = str(path)
    cache = _loaded.get()
    key = None
    if cache is not None:
        stat = os.stat(path)
        key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
        if key in cache:
            return cache[key]
    located = _r.call("scb_locate", where)
    names = _names(located.rx2("names"))
    if len(names) > 1:
        logger.info("%s: reading its object %r (the others: %s)", where,
                    str(located.rx2("name")[0]), [n for n in names if n != located.rx2("name")[0]])
    index = _list_index(located)
    if index is not None:
        logger.info("%s: reading element %d of the list it holds", where, index)
    if cache is not None and key is not None:
        cache[key] = located
    return located


def _list_index(located: Any) -> int | None:
    """The 1-based position of the located object in the list that held it, if any."""
    import rpy2.rinterface as ri

    index = located.rx2("index")[0]
    return None if index is ri.NA_Integer else int(index)


def _unwrap(obj: Any, where: str) -> Any:
    # Only a plain list is looked into: anything else is returned as it is (converting an S4
    # object back from R would cost rpy2 a class lookup, ~0.1 s for an SCE).
    if _r.r_class(obj) != ["list"]:
        return obj
    return located_object(_r.call("scb_unwrap", obj, where))


def load(source: str | Path | Any) -> Any:
    """The R object behind ``source`` (an ``.rds`` / ``.RData`` path or a live rpy2 object)."""
    if _r.is_r_object(source):
        return _unwrap(source, "the R object")
    package_object = parse_package_object(source)
    if package_object is not None:
        return _unwrap(_r.call("scb_package_object", *package_object), str(source))
    return located_object(locate(source))


def located_object(located: Any) -> Any:
    """The object of a :func:`locate` result (converting it may load its R package, whose
    start-up messages go to the log like those of every other R call of ours)."""
    with _r.r_console_to_log():
        return located.rx2("object")


_PACKAGE_OBJECT = re.compile(r"^([A-Za-z][A-Za-z0-9.]*)::([A-Za-z.][A-Za-z0-9._]*)$")


def parse_package_object(source: Any) -> tuple[str, str] | None:
    """``("SeuratObject", "pbmc_small")`` for ``"SeuratObject::pbmc_small"``, else ``None``.

    Data sets that ship with installed R packages are addressed as R users write them.
    A file of that name, if one exists, wins.
    """
    if not isinstance(source, str) or Path(source).exists():
        return None
    match = _PACKAGE_OBJECT.match(source)
    return (match.group(1), match.group(2)) if match else None


def read_r(
    source: str | Path | Any,
    *,
    assay: str | None = None,
    layer: str | None = None,
    value_kind: ValueKind | None = None,
    validate: bool = True,
) -> CellMatrix:
    """Read the expression matrix of an R object into a :class:`CellMatrix`."""
    obj = load(source)
    where = "the R object" if _r.is_r_object(source) else str(source)
    kind = str(_r.call("scb_kind", obj)[0])
    obs: _Obs | None
    if kind == "seurat":
        found, obs = _find_seurat(obj, assay, layer, where)
    elif kind == "sce":
        found, obs = _find_sce(obj, assay, layer, where)
    elif kind == "matrix":
        found, obs = _find_bare(obj, where), None
    elif kind == "seurat2":
        msg = (
            f"{where} is a Seurat v2 object (class 'seurat'). Update it first in R with "
            "SeuratObject::UpdateSeuratObject() (Seurat 3+), save it, and read that."
        )
        raise UnsupportedError(msg)
    else:
        cls = ", ".join(_r.r_class(obj))
        msg = (
            f"{where} holds an R object of class {cls}, which scbridge cannot read. Supported: "
            + "; ".join(SUPPORTED_CLASSES)
            + "."
        )
        raise UnsupportedError(msg)
    try:
        X = found.X if found.X is not None else _to_csr(found, where)
    except BridgeError:
        raise
    except ValueError as exc:  # scipy refusing slots that disagree
        msg = f"{where} ({found.label}): the matrix is damaged ({exc})."
        raise InputError(msg, code="shape_mismatch") from None
    if obs is not None and len(found.cells) < len(obs.cells):
        missing = len(obs.cells) - len(found.cells)
        logger.warning("%s: %s covers %d of the object's %d cells; the other %d are left out",
                       where, found.label, len(found.cells), len(obs.cells), missing)
    matrix = CellMatrix(
        X,
        found.cells,
        found.genes,
        obs=_align_obs(obs, found.cells),
        value_kind=value_kind or value_kind_for_layer(found.layer, X.data),
        source=found.label,
        validate=False,
        keepalive=obj,
    )
    if validate:  # messages name the file and the matrix in it
        matrix.validate(where=f"{where} ({found.label})")
    return matrix


def describe_r(source: str | Path | Any) -> dict[str, Any]:
    """Class, assays, layers, dims and nnz of an R object, without converting any matrix."""
    obj = load(source)
    kind = str(_r.call("scb_kind", obj)[0])
    info: dict[str, Any] = {"class": _r.r_class(obj)[0], "kind": kind}
    if kind == "seurat":
        info["seurat_version"] = str(_r.call("scb_seurat_version", obj)[0])
        info["active_assay"] = str(_r.call("scb_seurat_active_assay", obj)[0])
        assays = _r.call("scb_seurat_assays", obj)
        info["assays"] = {
            str(name): {
                "class": _r.r_class(a)[0],
                "layers": _layer_table(_r.call("scb_assay_layers", a)),
            }
            for name, a in zip(assays.names, assays, strict=True)
        }
    elif kind == "sce":
        info["assays"] = _sce_assay_tables(obj)
        alt_exps = _names(_r.call("scb_sce_altexp_names", obj))
        if alt_exps:
            info["alt_exps"] = {name: _sce_assay_tables(_r.call("scb_sce_altexp", obj, name))
                                for name in alt_exps}
    elif kind == "matrix":
        info["assays"] = {"matrix": _layer_table_one(obj)}
    return info


def _sce_assay_tables(experiment: Any) -> dict[str, Any]:
    return {name: _layer_table_one(_r.call("scb_sce_assay", experiment, name).rx2("matrix"))
            for name in _names(_r.call("scb_sce_assay_names", experiment))}


# -- finding the matrix ---------------------------------------------------------------------
def _names(values: Any) -> list[str]:
    return [] if _r.r_null(values) else [str(v) for v in values]


def _find_seurat(
    obj: Any, assay: str | None, layer: str | None, where: str
) -> tuple[_Matrix, _Obs]:
    assays = _r.call("scb_seurat_assays", obj)
    names = _names(assays.names)
    assay = assay or str(_r.call("scb_seurat_active_assay", obj)[0])
    if assay not in names:
        msg = f"{where} has no assay {assay!r}; available assays: {', '.join(names)}."
        raise NotFoundError(msg)
    the_assay = assays.rx2(assay)
    object_cells = _r.call("scb_seurat_cells", obj)
    obs_cells = _r.r_strings(object_cells)
    obs = _Obs(r_frame_to_arrow(obj.do_slot("meta.data")), obs_cells)
    v5 = bool(_r.call("scb_assay_is_v5", the_assay)[0])
    layers = _r.call("scb_assay_layers", the_assay)
    # Empty layers (the dropped counts of an SCTAssay, a 0 x 0 v5 layer) are absent.
    available = [name for name, spec in zip(_names(layers.names), layers, strict=True)
                 if all(d > 0 for d in spec.rx2("dim"))]
    chosen, covered = choose_layer("seurat", layer, available, split=v5, where=where,
                                   what=f"assay {assay!r}")
    if v5:
        return _find_seurat_v5(the_assay, assay, chosen, covered, where), obs
    part = _r.call("scb_assay_matrix_v3", the_assay, chosen)
    # The assay's cells are the object's cells (in the same order) unless the object is
    # inconsistent: convert the ids once, not twice.
    same = bool(_r.call("scb_identical", part.rx2("cells"), object_cells)[0])
    return (
        _Matrix(
            part.rx2("matrix"),
            obs_cells if same else _r.r_strings(part.rx2("cells")),
            _r.r_strings(part.rx2("genes")),
            f"Seurat assay {assay} {chosen}",
            chosen,
        ),
        obs,
    )


def _find_seurat_v5(
    the_assay: Any, assay: str, wanted: str, matching: list[str], where: str
) -> _Matrix:
    all_cells = _r.r_strings(_r.call("scb_assay_all_cells", the_assay))
    all_genes = _r.r_strings(_r.call("scb_assay_all_genes", the_assay))
    parts = []
    for name in matching:
        part = _r.call("scb_assay_layer_v5", the_assay, name)
        parts.append(
            _Matrix(
                part.rx2("matrix"),
                _r.r_strings(part.rx2("cells")),
                _r.r_strings(part.rx2("genes")),
                f"Seurat v5 assay {assay} layer {name}",
                wanted,
            )
        )
    if len(parts) == 1 and len(parts[0].genes) == len(all_genes):
        return parts[0]
    label = f"Seurat v5 assay {assay} layers {'+'.join(matching)} (joined)"
    logger.info("%s: joining %d split layers %s (a copy)", where, len(parts), matching)
    X, cells = _join_layers(parts, all_cells, all_genes, where)
    return _Matrix(None, cells, all_genes, label, wanted, X=X)


def _join_layers(
    parts: list[_Matrix], all_cells: NDArray[Any], all_genes: NDArray[Any], where: str
) -> tuple[sp.csr_matrix, NDArray[Any]]:
    """Stack split layers into one CSR over all genes, rows in the assay's cell order."""
    gene_pos = {g: i for i, g in enumerate(all_genes)}
    blocks: list[sp.csr_matrix] = []
    block_cells: list[NDArray[Any]] = []
    for part in parts:
        X = _to_csr(part, where)
        remap = np.fromiter((gene_pos[g] for g in part.genes), dtype=np.int32,
                            count=len(part.genes))
        block = sp.csr_matrix(
            (X.data, remap[X.indices], X.indptr), shape=(X.shape[0], len(all_genes))
        )
        block.sort_indices()
        blocks.append(block)
        block_cells.extend(part.cells)
    row_of = {c: i for i, c in enumerate(block_cells)}
    if len(row_of) != len(block_cells):
        msg = f"{where}: some cells appear in more than one of the split layers being joined."
        raise InputError(msg)
    order = [c for c in all_cells if c in row_of]
    stacked = sp.vstack(blocks, format="csr")
    perm = np.fromiter((row_of[c] for c in order), dtype=np.int64, count=len(order))
    return stacked[perm], np.asarray(order, dtype=object)


def _find_sce(
    obj: Any, assay: str | None, layer: str | None, where: str
) -> tuple[_Matrix, _Obs]:
    # altExps are looked up only when one is named or a name is not found: nothing extra on
    # the common path.
    experiment, what, label = obj, "the SingleCellExperiment", "SingleCellExperiment"
    if assay is not None and assay.lower().startswith(ALTEXP_PREFIX):
        alt = assay[len(ALTEXP_PREFIX):]
        alt_exps = _names(_r.call("scb_sce_altexp_names", obj))
        if alt not in alt_exps:
            msg = (f"{where}: the SingleCellExperiment has no altExp {alt!r}; its altExps: "
                   f"{', '.join(alt_exps) or 'none'}.")
            raise NotFoundError(msg)
        experiment = _r.call("scb_sce_altexp", obj, alt)
        what, label = f"altExp {alt!r}", f"SingleCellExperiment altExp {alt}"
        assay = None  # within the altExp, layer= names its assay
    if assay and layer and assay != layer:
        msg = f"{where}: for a SingleCellExperiment give the assay name once (assay={assay!r})."
        raise InputError(msg)
    available = _names(_r.call("scb_sce_assay_names", experiment))
    try:
        name, _ = choose_layer("sce", assay or layer, available, where=where, what=what)
    except NotFoundError as exc:
        requested = assay or layer
        if experiment is obj and requested in _names(_r.call("scb_sce_altexp_names", obj)):
            msg = (f"{exc} {requested!r} is an altExp (alternative experiment) of this object: "
                   f"read it with assay='{ALTEXP_PREFIX}{requested}' (the same in R and on the "
                   f"command line: --assay {ALTEXP_PREFIX}{requested}).")
            raise NotFoundError(msg) from None
        raise
    part = _r.call("scb_sce_assay", experiment, name)
    cells = _r.r_strings(part.rx2("cells"))
    genes = _r.r_strings(part.rx2("genes"))
    n_genes, n_cells = (int(d) for d in _r.call("scb_dims", part.rx2("matrix")))
    check_shape(n_cells, n_genes, where=f"{where} ({label} assay {name})")
    if len(cells) == 0 or len(genes) == 0:
        msg = (
            f"{where}: the SingleCellExperiment has no "
            f"{'colnames' if len(cells) == 0 else 'rownames'}; "
            "set cell barcodes with colnames(sce) <- ... and gene ids with rownames(sce) <- ...."
        )
        raise InputError(msg)
    obs = _Obs(r_frame_to_arrow(_r.call("scb_sce_coldata", obj)), cells)
    return _Matrix(part.rx2("matrix"), cells, genes, f"{label} assay {name}", name), obs


def _find_bare(obj: Any, where: str) -> _Matrix:
    import rpy2.robjects as ro

    genes = _r.r_strings(ro.r["rownames"](obj))
    cells = _r.r_strings(ro.r["colnames"](obj))
    if len(genes) == 0 or len(cells) == 0:
        msg = (
            f"{where}: the matrix has no "
            f"{'rownames (gene ids)' if len(genes) == 0 else 'colnames (cell ids)'}. "
            "Set dimnames(m) <- list(genes, cells) in R; scbridge expects genes x cells."
        )
        raise InputError(msg)
    cls = _r.r_class(obj)[0]
    return _Matrix(obj, cells, genes, f"R {cls}", "matrix")


# -- converting the matrix ------------------------------------------------------------------
def _to_csr(found: _Matrix, where: str) -> sp.csr_matrix:
    m = found.robj
    cls = _r.r_class(m)[0]
    n_genes, n_cells = len(found.genes), len(found.cells)
    if cls == "dgCMatrix":
        indptr = _r.r_vector_view(m.do_slot("p"))
        indices = _r.r_vector_view(m.do_slot("i"))
        data = _r.r_vector_view(m.do_slot("x"))
        _check_dims(m, n_genes, n_cells, where)
        _check_slots(indptr, indices, data, n_cells, f"{where} ({found.label})")
        return sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes), copy=False)
    if cls == "dgRMatrix":
        logger.info("%s: dgRMatrix is row-compressed genes x cells; converting (a copy)", where)
        indptr = _r.r_vector_view(m.do_slot("p"))
        cols = _r.r_vector_view(m.do_slot("j"))
        data = _r.r_vector_view(m.do_slot("x"))
        return sp.csc_matrix((data, cols, indptr), shape=(n_cells, n_genes)).tocsr()
    if cls == "dgTMatrix":
        logger.info("%s: dgTMatrix holds triplets; converting to CSR (a copy)", where)
        rows = _r.r_vector_view(m.do_slot("i"))
        cols = _r.r_vector_view(m.do_slot("j"))
        data = _r.r_vector_view(m.do_slot("x"))
        return sp.coo_matrix((data, (cols, rows)), shape=(n_cells, n_genes)).tocsr()
    if cls == "matrix" or cls == "array":
        return _dense_to_csr(m, n_cells, n_genes, where)
    return _blockwise_to_csr(m, n_cells, n_genes, cls, where)


def _check_dims(m: Any, n_genes: int, n_cells: int, where: str) -> None:
    dims = _r.r_vector_view(m.do_slot("Dim"))
    if (int(dims[0]), int(dims[1])) != (n_genes, n_cells):
        msg = (
            f"{where}: the matrix is {int(dims[0])} x {int(dims[1])} but there are {n_genes} "
            f"gene and {n_cells} cell names."
        )
        raise InputError(msg)


def _check_slots(p: NDArray[Any], i: NDArray[Any], x: NDArray[Any], n_cells: int,
                 where: str) -> None:
    """The slot lengths a dgCMatrix must have (a damaged object can break them; R does not
    check slots when they are assigned); the values are checked by the matrix validation."""
    if len(p) != n_cells + 1 or len(i) != len(x) or (len(p) and int(p[-1]) != len(x)):
        msg = (f"{where}: the dgCMatrix slots disagree (p has {len(p):,} entries for "
               f"{n_cells:,} cells, i {len(i):,}, x {len(x):,}); the object is damaged. "
               "Check it in R with validObject(m).")
        raise InputError(msg, code="shape_mismatch")


_R_TYPE_NAMES = {9: "character strings", 10: "logical", 13: "integer", 14: "double",
                 15: "complex numbers", 16: "character strings", 19: "list", 24: "raw bytes"}


def _dense_to_csr(m: Any, n_cells: int, n_genes: int, where: str) -> sp.csr_matrix:
    """Sparsify a dense R matrix a block of cells at a time (its memory is viewed, not copied)."""
    import rpy2.rinterface as ri

    typeof = int(m.typeof)
    if typeof not in (int(ri.RTYPES.REALSXP), int(ri.RTYPES.INTSXP), int(ri.RTYPES.LGLSXP)):
        kind = _R_TYPE_NAMES.get(typeof, f"R type {typeof}")
        msg = (f"{where}: the dense matrix holds {kind}, not numbers; expression data must be "
               "numeric (in R: storage.mode(m) <- \"double\" if the text holds numbers).")
        raise InputError(msg, code="invalid_values")
    flat = _r.r_vector_view(m)
    if typeof != int(ri.RTYPES.REALSXP) and flat.size and (flat == np.iinfo(np.int32).min).any():
        msg = f"{where}: the integer matrix holds NA values; replace them before converting."
        raise InputError(msg)
    # Column-major genes x cells == row-major cells x genes: a free reshape.
    cells_by_genes = flat.reshape(n_cells, n_genes)
    step = max(1, _BLOCK_ELEMENTS // max(n_genes, 1))
    blocks = [sp.csr_matrix(cells_by_genes[s : s + step]) for s in range(0, n_cells, step)]
    X = sp.vstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]
    if X.dtype != np.float64:
        X = X.astype(np.float64)
    return X


def _blockwise_to_csr(m: Any, n_cells: int, n_genes: int, cls: str, where: str) -> sp.csr_matrix:
    """Realise any matrix-like R object (DelayedArray, HDF5Array, Matrix) a block at a time."""
    step = max(1, _BLOCK_ELEMENTS // max(n_genes, 1))
    logger.info("%s: realising %s in blocks of %d cells", where, cls, step)
    indptr_parts = [np.zeros(1, dtype=np.int64)]
    index_parts, data_parts = [], []
    offset = 0
    starts = range(0, n_cells, step)
    for start in tqdm(starts, desc=f"realising {cls}", unit="block", disable=len(starts) < 4):
        stop = min(start + step, n_cells)
        block = _r.call("scb_block_dgc", m, start + 1, stop)
        p = _r.r_vector_view(block.do_slot("p"))
        index_parts.append(np.array(_r.r_vector_view(block.do_slot("i"))))
        data_parts.append(np.array(_r.r_vector_view(block.do_slot("x"))))
        indptr_parts.append(p[1:].astype(np.int64) + offset)
        offset += int(p[-1])
    indptr = np.concatenate(indptr_parts)
    if offset <= np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    indices = np.concatenate(index_parts) if index_parts else np.zeros(0, np.int32)
    data = np.concatenate(data_parts) if data_parts else np.zeros(0)
    return sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes), copy=False)


def r_frame_to_arrow(frame: Any) -> pa.Table:
    """An R data.frame as an Arrow table; factors keep their levels (unused ones included)."""
    specs = _r.call("scb_columns", frame)
    columns: dict[str, pa.Array] = {}
    for name, spec in zip(_names(specs.names), specs, strict=True):
        kind_r, values, na_r, levels_r, ordered_r = (spec[k] for k in range(5))
        kind = str(kind_r[0])
        na = None if _r.r_null(na_r) else np.asarray(na_r, dtype=bool)
        if kind == "factor":
            codes = np.asarray(values, dtype=np.int32) - 1
            if na is not None:
                codes[na] = 0  # NA_integer_ - 1 would not fit the dictionary; masked anyway
            levels = _r.r_strings(levels_r)
            indices = pa.array(codes, type=pa.int32(), mask=na)
            columns[name] = pa.DictionaryArray.from_arrays(
                indices, pa.array(levels.tolist(), pa.string()), ordered=bool(ordered_r[0]),
            )
        elif kind == "character":
            columns[name] = pa.array(_r.r_strings(values).tolist(), pa.string())
        elif kind == "logical":
            columns[name] = pa.array(np.asarray(values, dtype=bool), pa.bool_(), mask=na)
        elif kind == "integer":
            columns[name] = pa.array(np.asarray(values, dtype=np.int32), pa.int32(), mask=na)
        else:
            columns[name] = pa.array(np.asarray(values, dtype=np.float64), pa.float64(), mask=na)
    return pa.table(columns) if columns else pa.table({})


@dataclass
class _Obs:
    """Per-cell metadata as read from R, and the cell ids its rows belong to."""

    table: pa.Table
    cells: NDArray[Any]


def _align_obs(obs: _Obs | None, cells: NDArray[Any]) -> pa.Table | None:
    """Metadata rows in the matrix's cell order (matched by cell id)."""
    if obs is None or obs.table.num_columns == 0:
        return None
    if obs.cells is cells or (len(obs.cells) == len(cells) and np.array_equal(obs.cells, cells)):
        return obs.table
    row = {c: i for i, c in enumerate(obs.cells)}
    take = pa.array([row.get(c) for c in cells], pa.int64())
    return obs.table.take(take)


def _layer_table_one(m: Any) -> dict[str, Any]:
    import rpy2.robjects as ro

    dims = [int(d) for d in ro.r["dim"](m)]
    nnz = _r.call("scb_nnz", m)[0]
    return {
        "class": _r.r_class(m)[0],
        "genes": dims[0],
        "cells": dims[1],
        "nnz": None if np.isnan(nnz) else int(nnz),
    }


def _layer_table(layers: Any) -> dict[str, Any]:
    out = {}
    for name, spec in zip(_names(layers.names), layers, strict=True):
        dims = list(spec.rx2("dim"))
        nnz = spec.rx2("nnz")[0]
        out[name] = {
            "class": str(spec.rx2("class")[0]),
            "genes": int(dims[0]),
            "cells": int(dims[1]),
            "nnz": None if np.isnan(nnz) else int(nnz),
        }
    return out

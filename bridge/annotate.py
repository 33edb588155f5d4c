"""Cell-type annotation: ``annotate`` (the user's entry point) and ``call_cells`` (the engine run).

``call_cells`` is what the local path, the server and the remote client all share: gene-id
mapping, the genes-found check, the engine over chunk views, one Calls table in cell order.
``annotate`` wraps it with reading, QC, smoothing, the confidence threshold and provenance.
"""

from __future__ import annotations

import logging
import sys
import types
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from ._errors import InputError
from .calls import apply_min_confidence, chunk_table, concat_calls, with_metadata
from .matrix import CellMatrix

if TYPE_CHECKING:
    from .engines import Engine

__all__ = ["annotate", "call_cells"]

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 50_000
_DEFAULT_MIN_GENE_FRACTION = 0.1
# Genes detected in nearly every cell of any scRNA-seq data set; used to notice shuffled names.
_HOUSEKEEPING = ("ACTB", "B2M", "MALAT1", "TMSB4X", "EEF1A1", "RPL13", "RPS27", "RPLP1",
                 "RPS12", "TPT1", "FTL", "GAPDH", "MT-CO1", "RPL41", "RPS18")


def _engine_genes(engine: Engine) -> list[str] | None:
    """The genes an engine needs (for the genes-found check), when it says."""
    genes = getattr(engine, "genes", None)
    if genes is None and getattr(engine, "reference", None) is not None:
        genes = engine.reference.genes  # type: ignore[attr-defined]
    return None if genes is None else [str(g) for g in genes]


def _resolve_genes(matrix: CellMatrix, needed: list[str] | None
                   ) -> tuple[np.ndarray, str, int]:
    """Gene ids for the engine: the matrix's own, or mapped to human symbols if that finds more."""
    from .genes import map_to_human_symbols

    mapping = map_to_human_symbols(matrix.genes)
    if not mapping.changed or needed is None:
        return matrix.genes, mapping.kind, 0
    wanted = set(needed)
    raw_hits = sum(1 for g in matrix.genes if str(g) in wanted)
    mapped_hits = sum(1 for g in mapping.genes if g in wanted)
    if mapped_hits > raw_hits:
        logger.info("%s: mapped %d %s gene ids to human symbols (%d -> %d engine genes found)",
                    matrix.source or "matrix", mapping.n_mapped, mapping.kind, raw_hits,
                    mapped_hits)
        return mapping.genes, mapping.kind, mapping.n_mapped
    return matrix.genes, mapping.kind, 0


def _check_gene_order(matrix: CellMatrix, genes: np.ndarray) -> None:
    """Warn when ubiquitous genes look absent while others look ubiquitous (shuffled names)."""
    if matrix.n_cells < 50 or matrix.nnz == 0:
        return
    position = {str(g): j for j, g in enumerate(genes)}
    cols = [position[g] for g in _HOUSEKEEPING if g in position]
    if len(cols) < 5:
        return
    sample = matrix.slice_cells(0, min(matrix.n_cells, 2000)).X
    detected = np.bincount(sample.indices, minlength=matrix.n_genes) / sample.shape[0]
    top = np.quantile(detected, 0.999)
    if top > 0.5 and np.median(detected[cols]) < 0.2 * top:
        msg = (f"{matrix.source or 'the matrix'}: genes that are expressed in nearly every cell "
               f"(ACTB, B2M, MALAT1, ...) are detected in only "
               f"{np.median(detected[cols]):.0%} of cells while other genes reach {top:.0%}: "
               "the gene names may not match the matrix columns (wrong order or a shifted "
               "feature list). Calls will be wrong if so.")
        logger.warning(msg)
        warnings.warn(msg, stacklevel=4)


def call_cells(matrix: CellMatrix, *, model: str = "markers", atlas: str | None = None,
               chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = True,
               **engine_params: Any) -> pa.Table:
    """Run an annotation engine over ``matrix`` and return the Calls table.

    Parameters
    ----------
    matrix
        Cells x genes matrix (counts or log-normalised).
    model
        Engine name (see :func:`bridge.engines.available_models`); ``"markers"`` is the
        embedded curated marker engine.
    atlas
        The engine's database or reference (for ``"reference"``: a reference file path).
    chunk_size
        Cells per chunk; chunks are views, and calls do not depend on the chunk size.
    progress
        Show a progress bar on long inputs.
    **engine_params
        Passed to the engine (for example ``tissue="blood"`` or ``min_gene_fraction=0.3``).

    Returns
    -------
    pyarrow.Table
        The core Calls columns (``cell``, ``label``, ``ontology_id``, ``confidence``,
        ``alternates``, ``markers``) in the matrix's cell order, with provenance metadata
        (``scbridge.engine``, ``model``, ``atlas``, ``parameters``, ``genes_matched``, ...).

    Raises
    ------
    GeneIdError
        When too few of the engine's genes are found, even after mapping the ids.
    """
    from tqdm.auto import tqdm

    from .engines import get_engine
    from .genes import check_genes_found

    if chunk_size <= 0:
        msg = f"chunk_size must be positive, got {chunk_size}."
        raise InputError(msg)
    engine = get_engine(model, atlas=atlas, **engine_params)
    needed = _engine_genes(engine)
    genes, kind, n_mapped = _resolve_genes(matrix, needed)
    if kind == "other" and matrix.n_genes:
        msg = (f"{matrix.source or 'the matrix'}: the gene ids (e.g. "
               f"{', '.join(map(str, matrix.genes[:3]))}) look like neither gene symbols nor "
               "Ensembl ids.")
        logger.warning(msg)
        warnings.warn(msg, stacklevel=2)
    fraction = 1.0
    if needed is not None:
        fraction = check_genes_found(
            needed, genes, kind=kind, where=matrix.source or "the matrix",
            min_fraction=float(getattr(engine, "min_gene_fraction", _DEFAULT_MIN_GENE_FRACTION)),
            what=f"the {model!r} model")
    _check_gene_order(matrix, genes)
    tables = []
    bar = tqdm(total=matrix.n_cells, unit="cells", desc=f"annotating ({model})",
               disable=not progress or matrix.n_cells < 2 * min(chunk_size, 10_000),
               leave=False)
    for chunk in matrix.iter_chunks(chunk_size):
        if genes is not matrix.genes:
            chunk = CellMatrix(chunk.X, chunk.cells, genes, value_kind=chunk.value_kind,
                               source=chunk.source, validate=False, keepalive=chunk.keepalive)
        tables.append(chunk_table(chunk.cells, engine.annotate_chunk(chunk)))
        bar.update(chunk.n_cells)
    bar.close()
    if not tables:
        tables = [chunk_table([], engine.annotate_chunk(matrix))]
    return with_metadata(
        concat_calls(tables), engine=engine.name, model=model, atlas=engine.atlas or "",
        parameters=engine.parameters(), genes_matched=round(fraction, 4),
        gene_id_kind=kind, genes_mapped=n_mapped, value_kind=matrix.value_kind,
    )


def _group_labels(matrix: CellMatrix, groups: str | Sequence[Any] | np.ndarray) -> np.ndarray:
    if isinstance(groups, str):
        if groups not in matrix.obs.column_names:
            from ._errors import NotFoundError

            have = ", ".join(matrix.obs.column_names) or "none"
            msg = f"groups={groups!r} is not a cell metadata column (columns: {have})."
            raise NotFoundError(msg)
        column = matrix.obs.column(groups)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        return np.asarray(column.to_pylist(), dtype=object)
    values = np.asarray(groups, dtype=object)
    if len(values) != matrix.n_cells:
        msg = f"groups has {len(values)} values for {matrix.n_cells} cells."
        raise InputError(msg)
    return values


def annotate(source: Any, *, model: str = "markers", atlas: str | None = None,
             min_confidence: float | None = None,
             groups: str | Sequence[Any] | np.ndarray | None = None, qc: bool = True,
             smooth: Literal["knn"] | int | bool | None = None, endpoint: str | None = None,
             api_key: str | None = None, transport: str = "arrow",
             chunk_size: int | None = None, assay: str | None = None, layer: str | None = None,
             progress: bool = True, **engine_params: Any) -> pa.Table:
    """Cell-type calls for every cell, as an Arrow table.

    Parameters
    ----------
    source
        Anything :func:`bridge.read` accepts (a path to .rds / .h5ad / Arrow / 10x, a live R
        object, an AnnData) or a :class:`~bridge.CellMatrix`.
    model, atlas
        The engine and its database or reference (default: the embedded marker engine).
    min_confidence
        Cells whose confidence is below this get label ``Unknown``; the raw call stays in
        ``label_raw``.  ``None`` keeps every call.
    groups
        A cell metadata column (e.g. ``"seurat_clusters"``) or one value per cell: adds
        ``label_smoothed`` / ``smoothed_confidence`` by majority vote within each group.
    qc
        Add QC metrics and ``qc_pass`` / ``qc_reason`` (recorded, never applied).
    smooth
        ``"knn"`` (15 neighbours) or a neighbour count: majority vote over a kNN graph, in the
        same separate columns; ignored when ``groups`` is given.
    endpoint, api_key, transport
        Annotate through a remote service instead of locally (the raw gene ids are sent; the
        service maps them).
    chunk_size
        Cells per chunk (default 50,000); the calls do not depend on it.
    assay, layer
        Which matrix of the source to read.
    progress
        Show progress bars on long inputs.
    **engine_params
        Passed to the engine.

    Returns
    -------
    pyarrow.Table
        ``cell``, ``label``, ``ontology_id``, ``confidence``, ``alternates``, ``markers`` in
        input cell order, then ``label_raw`` (with ``min_confidence``), ``label_smoothed`` and
        ``smoothed_confidence`` (with ``groups`` / ``smooth``) and the QC columns.
    """
    matrix = source if isinstance(source, CellMatrix) else _read(source, assay, layer)
    size = chunk_size or DEFAULT_CHUNK_SIZE
    qc_table = None
    if qc:
        from .qc import qc_metrics

        qc_table = qc_metrics(matrix)
    if endpoint:
        from .engines.remote import RemoteClient

        client = RemoteClient(endpoint, api_key=api_key, transport=transport, model=model,
                              atlas=atlas, chunk_size=size)
        table = client.call_cells(matrix, progress=progress)
    else:
        table = call_cells(matrix, model=model, atlas=atlas, chunk_size=size,
                           progress=progress, **engine_params)
    metadata = dict(table.schema.metadata or {})
    provenance: dict[str, Any] = {"source": matrix.source, "n_cells": matrix.n_cells,
                                  "qc": bool(qc)}
    if endpoint:
        provenance["endpoint"] = endpoint
    if groups is not None or (smooth is not None and smooth is not False):
        from .smoothing import DEFAULT_K, smooth_labels

        group_values = _group_labels(matrix, groups) if groups is not None else None
        smoothed = smooth_labels(table, matrix=matrix, groups=group_values, k=smooth)
        for name in smoothed.column_names:
            table = table.append_column(name, smoothed.column(name))
        k = DEFAULT_K if smooth in ("knn", True) else smooth
        provenance["smoothing"] = (f"groups={groups}" if isinstance(groups, str)
                                   else "groups" if groups is not None else f"knn k={k}")
    if min_confidence is not None:
        table = apply_min_confidence(table, float(min_confidence))
        provenance["min_confidence"] = float(min_confidence)
    if qc_table is not None:
        for name in qc_table.column_names:
            table = table.append_column(name, qc_table.column(name))
        provenance["qc_thresholds"] = (qc_table.schema.metadata or {}).get(
            b"scbridge.qc_thresholds", b"{}").decode()
    table = table.replace_schema_metadata(metadata)
    return with_metadata(table, **provenance)


def _read(source: Any, assay: str | None, layer: str | None) -> CellMatrix:
    from .io import read

    return read(source, assay=assay, layer=layer)


class _CallableModule(types.ModuleType):
    """``bridge.annotate`` is both this module and the function: once any code has imported
    the module (``from bridge.annotate import call_cells``), Python binds the module to the
    package attribute, so the module itself must be callable as ``annotate``."""

    def __call__(self, *args: Any, **kwargs: Any) -> pa.Table:
        return annotate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

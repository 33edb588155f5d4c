"""Cell-type annotation: ``annotate`` (the user's entry point) and ``call_cells`` (the engine run).

``call_cells`` is what the local path and the server share: the engine from the catalogue,
gene-id mapping, the engine's genes-found check, the engine over chunk views, one Calls table
in cell order with provenance.  ``annotate`` wraps it with reading, QC, smoothing, the
confidence threshold, and the choice of a remote service (``endpoint=``, the ``"remote"``
engine).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from ._contract import apply_min_confidence, with_metadata
from ._errors import InputError, NotFoundError
from .engines import DEFAULT_CHUNK_SIZE
from .matrix import CellMatrix

if TYPE_CHECKING:
    from .engines import Engine

__all__ = ["annotate", "call_cells"]

logger = logging.getLogger(__name__)

# Genes detected in nearly every cell of any scRNA-seq data set; used to notice shuffled names.
_HOUSEKEEPING = ("ACTB", "B2M", "MALAT1", "TMSB4X", "EEF1A1", "RPL13", "RPS27", "RPLP1",
                 "RPS12", "TPT1", "FTL", "GAPDH", "MT-CO1", "RPL41", "RPS18")


def _resolve_genes(matrix: CellMatrix, needed: list[str] | None
                   ) -> tuple[NDArray[Any], str, int]:
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


def _check_gene_order(matrix: CellMatrix, genes: NDArray[Any]) -> None:
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
        warnings.warn(msg, stacklevel=4)  # one message: the CLI shows warnings as one line


def call_cells(matrix: CellMatrix, *, model: str = "markers", atlas: str | None = None,
               chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = True,
               engine: Engine | None = None, **engine_params: Any) -> pa.Table:
    """Run an annotation engine over ``matrix`` and return the Calls table.

    Parameters
    ----------
    matrix
        Cells x genes matrix (counts, log-normalised or normalised values).
    model
        Engine name (see :func:`bridge.engines.available_models`); ``"markers"`` is the
        embedded curated marker engine.
    atlas
        The engine's database or reference (for ``"reference"``: a reference file path).
    chunk_size
        Cells per chunk; chunks are views, and calls do not depend on the chunk size.
    progress
        Show a progress bar on long inputs.
    engine
        An engine already built (``model``, ``atlas`` and ``engine_params`` are then unused).
    **engine_params
        Passed to the engine (for example ``tissue="blood"`` or ``min_gene_fraction=0.3``);
        a parameter the engine does not take is refused, naming the ones it does.

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
    from .engines import get_engine

    if chunk_size <= 0:
        msg = f"chunk_size must be positive, got {chunk_size}."
        raise InputError(msg, code="invalid_parameter")
    if engine is None:
        engine = get_engine(model, atlas=atlas, **engine_params)
    needed = engine.genes
    genes, kind, n_mapped = _resolve_genes(matrix, None if needed is None else list(needed))
    if kind == "other" and matrix.n_genes and needed is not None:
        msg = (f"{matrix.source or 'the matrix'}: the gene ids (e.g. "
               f"{', '.join(map(str, matrix.genes[:3]))}) look like neither gene symbols nor "
               "Ensembl ids.")
        warnings.warn(msg, stacklevel=2)  # one message: the CLI shows warnings as one line
    if genes is not matrix.genes:
        matrix = CellMatrix(matrix.X, matrix.cells, genes, value_kind=matrix.value_kind,
                            source=matrix.source, validate=False, keepalive=matrix.keepalive)
    if needed is not None:
        _check_gene_order(matrix, genes)
    table = engine.annotate(matrix, chunk_size=chunk_size, progress=progress)
    described = engine.describe()
    provenance = {
        "engine": described["name"], "model": model, "atlas": engine.atlas or "",
        "parameters": described["parameters"], "gene_id_kind": kind, "genes_mapped": n_mapped,
        "value_kind": matrix.value_kind,
    }
    # A remote engine's table already names the service's engine, model and parameters:
    # those are kept, not overwritten with the client's view.
    present = {key.decode() for key in (table.schema.metadata or {})}
    return with_metadata(table, **{k: v for k, v in provenance.items()
                                   if f"scbridge.{k}" not in present})


def _group_labels(matrix: CellMatrix, groups: str | Sequence[Any] | NDArray[Any]) -> NDArray[Any]:
    if isinstance(groups, str):
        if groups not in matrix.obs.column_names:
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
        raise InputError(msg, code="invalid_parameter")
    return values


def annotate(source: Any, *, model: str = "markers", atlas: str | None = None,
             min_confidence: float | None = None,
             groups: str | Sequence[Any] | NDArray[Any] | None = None,
             qc: bool | pa.Table = True,
             smooth: Literal["knn"] | int | bool | None = None, endpoint: str | None = None,
             api_key: str | None = None, transport: Literal["arrow", "json"] = "arrow",
             chunk_size: int | None = None, assay: str | None = None, layer: str | None = None,
             value_kind: Literal["counts", "lognorm", "normalized"] | None = None,
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
        ``True``: compute the QC metrics (:func:`bridge.qc` without doublet scores, which cost
        far more than the annotation) and append them, recorded, never applied; a table from
        :func:`bridge.qc` (with doublet scores, or filtered by you): append that one;
        ``False``: none.
    smooth
        ``"knn"`` (15 neighbours) or a neighbour count: majority vote over a kNN graph, in the
        same separate columns; ignored when ``groups`` is given.
    endpoint, api_key, transport
        Annotate through a remote service instead of locally (the ``"remote"`` engine: the
        raw gene ids are sent; the service maps and checks them).
    chunk_size
        Cells per chunk (default 50,000); the calls do not depend on it.
    assay, layer, value_kind
        Which matrix of the source to read, and what its values are when the reader's guess
        is wrong (``"normalized"`` for TPM / CPM / FPKM).
    progress
        Show progress bars on long inputs.
    **engine_params
        Passed to the engine (``tissue=``, ``min_gene_fraction=``, ...); a parameter the
        engine does not take is refused with the list of those it does.

    Returns
    -------
    pyarrow.Table
        ``cell``, ``label``, ``ontology_id``, ``confidence``, ``alternates``, ``markers`` in
        input cell order, then ``label_raw`` (with ``min_confidence``), ``label_smoothed`` and
        ``smoothed_confidence`` (with ``groups`` / ``smooth``) and the QC columns.
    """
    # Everything that can be refused is checked before any computation.
    if min_confidence is not None and not 0.0 <= float(min_confidence) <= 1.0:
        msg = f"min_confidence must lie in [0, 1], got {min_confidence}"
        raise InputError(msg, code="invalid_parameter")
    size = chunk_size or DEFAULT_CHUNK_SIZE
    if groups is None and smooth in (None, False) and _streams(source):
        # A file that streams is annotated chunk by chunk: memory bounded by one chunk.
        from ._streaming import PLAN_CELLS, annotate_chunks
        from .engines._base import ChunkedEngine
        from .io import read_chunks, read_sample

        engine = _engine(model, atlas, endpoint, api_key, transport, engine_params)
        options = {k: v for k, v in (("assay", assay), ("layer", layer),
                                     ("value_kind", value_kind)) if v is not None}
        # The engine's plan (tissue context, ...) from cells spread over the whole file, as
        # for a matrix in memory, not from the file's first cells.
        plan_cells = (read_sample(source, PLAN_CELLS, **options)
                      if isinstance(engine, ChunkedEngine) else None)
        chunks = read_chunks(source, size, balanced=True, **options)
        return annotate_chunks(chunks, engine=engine,
                               model=model, qc=qc, min_confidence=min_confidence,
                               chunk_size=size, progress=progress, where=str(source),
                               plan_cells=plan_cells)
    if isinstance(source, CellMatrix):
        matrix = source
        if value_kind is not None and value_kind != matrix.value_kind:
            matrix = CellMatrix(matrix.X, matrix.cells, matrix.genes, obs=matrix.obs,
                                value_kind=value_kind, source=matrix.source,
                                keepalive=matrix.keepalive)
    else:
        matrix = _read(source, assay, layer, value_kind)
    group_values = _group_labels(matrix, groups) if groups is not None else None
    engine = _engine(model, atlas, endpoint, api_key, transport, engine_params)
    qc_table = _qc_columns(matrix, qc)
    table = call_cells(matrix, model=model, engine=engine, chunk_size=size, progress=progress)
    provenance: dict[str, Any] = {"source": matrix.source, "n_cells": matrix.n_cells,
                                  "qc": qc_table is not None}
    if endpoint:
        provenance["endpoint"] = endpoint
    if groups is not None or (smooth is not None and smooth is not False):
        from ._smoothing import DEFAULT_K, smooth_labels

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
        metadata = dict(table.schema.metadata or {})
        for name in qc_table.column_names:
            table = table.append_column(name, qc_table.column(name))
        table = table.replace_schema_metadata(metadata)
        provenance["qc_thresholds"] = (qc_table.schema.metadata or {}).get(
            b"scbridge.qc_thresholds", b"{}").decode()
    return with_metadata(table, **provenance)


def _engine(model: str, atlas: str | None, endpoint: str | None, api_key: str | None,
            transport: str, engine_params: dict[str, Any]) -> Engine:
    from .engines import get_engine

    if endpoint:
        return get_engine("remote", endpoint=endpoint, api_key=api_key, transport=transport,
                          model=model, atlas=atlas, cache=False, **engine_params)
    return get_engine(model, atlas=atlas, **engine_params)


def _streams(source: Any) -> bool:
    """Whether ``source`` is a file whose reader streams it in chunks."""
    from .io import can_stream

    return isinstance(source, str | os.PathLike) and can_stream(source)


def _qc_columns(matrix: CellMatrix, qc: bool | pa.Table) -> pa.Table | None:
    """The QC columns for ``annotate(qc=...)``: computed, taken from a QC table, or none."""
    from ._qc import qc_for_cells, qc_metrics

    if isinstance(qc, pa.Table):
        return qc_for_cells(qc, matrix.cells).replace_schema_metadata(qc.schema.metadata)
    if qc is True:
        # Doublet scores take seconds per 10,000 cells (a simulation, a PCA and a kNN search):
        # they come from bridge.qc(), whose table annotate(qc=table) attaches.
        table = qc_metrics(matrix, doublets=False)
        notes = json.loads((table.schema.metadata or {}).get(b"scbridge.qc_thresholds", b"{}"))
        notes["doublets"] = ("not computed by annotate: run bridge.qc() (scbridge qc) and pass "
                             "its table as qc= (--qc-table)")
        return table.replace_schema_metadata(
            {b"scbridge.qc_thresholds": json.dumps(notes).encode()})
    if qc is False or qc is None:
        return None
    msg = f"qc must be True, False or a table from bridge.qc(), got {type(qc).__name__}."
    raise InputError(msg, code="invalid_parameter")


def _read(source: Any, assay: str | None, layer: str | None,
          value_kind: str | None) -> CellMatrix:
    from .io import read

    return read(source, assay=assay, layer=layer, value_kind=value_kind)  # type: ignore[arg-type]

"""Annotation of inputs that do not fit in memory: one engine over a stream of chunks.

:func:`bridge.annotate` hands a file that its reader can stream (``.h5ad`` in backed mode,
Arrow CSR files, partitioned data sets) to :func:`annotate_chunks`: each chunk is read,
validated, called and QC'd on its own, so memory stays bounded by one chunk (plus the calls)
whatever the size of the file, and 64-bit offsets never reach the engines.  Calls do not
depend on the chunking: a local engine's plan (the marker engine's species, inferred tissue
context and reading of log values) is made once, on about :data:`PLAN_CELLS` cells spread over
the whole file (:func:`bridge.io.read_sample`: the cells the engine samples from a matrix in
memory; the stream's first cells where the reader cannot sample, e.g. partitioned data sets),
and kept for every chunk of that gene list.  Per-cell QC metrics do not depend on it
either; doublet scores are left to :func:`bridge.qc` (were they scored per chunk, the
``scbridge.qc_scope`` metadata would say so).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from ._contract import apply_min_confidence, concat_calls, with_metadata
from ._errors import InputError
from .engines import DEFAULT_CHUNK_SIZE
from .matrix import CellMatrix

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from .engines import Engine
    from .engines._base import ChunkedEngine, ChunkPlan

__all__ = ["PLAN_CELLS", "annotate_chunks", "check_unique_cells", "first_duplicate"]

logger = logging.getLogger(__name__)

#: Cells the engine's plan is made on (the marker engine infers its tissue context from about
#: 2,000 cells of a matrix): the first chunks of the stream, joined when they are smaller.
PLAN_CELLS = 2_000


def annotate_chunks(chunks: Iterable[CellMatrix], *, engine: Engine, model: str,
                    qc: bool | pa.Table = True, min_confidence: float | None = None,
                    chunk_size: int, progress: bool = True, total: int | None = None,
                    where: str = "the input", plan_cells: CellMatrix | None = None
                    ) -> pa.Table:
    """The Calls table of a stream of chunks, as :func:`bridge.annotate` gives it.

    Parameters
    ----------
    chunks
        Consecutive chunks of cells (:func:`bridge.read_chunks`), each validated.
    engine, model
        The engine, built once, and the model name recorded in the provenance.
    qc
        ``True``: QC columns computed per chunk; ``False``: none; a table from
        :func:`bridge.qc`: its rows for these cells, attached at the end.
    min_confidence
        As for :func:`bridge.annotate`.
    chunk_size
        Cells per chunk of the engine (the stream's chunks are never larger).
    progress, total
        A progress bar over cells, and the number of cells when known.
    where
        The input, for messages.
    plan_cells
        Cells spread over the whole input (:func:`bridge.io.read_sample`) that a local
        engine's plan is made on; without them, the stream's first :data:`PLAN_CELLS` cells.
    """
    from tqdm.auto import tqdm

    from ._annotate import _qc_columns
    from .engines._base import ChunkedEngine

    if isinstance(engine, ChunkedEngine):
        if plan_cells is not None and plan_cells.n_cells:
            engine = _PlannedEngine(engine, [plan_cells])
        else:
            head, chunks = _head(chunks, PLAN_CELLS)
            if head:
                engine = _PlannedEngine(engine, head)
    tables: list[pa.Table] = []
    cells: list[pa.Array] = []
    state = _GeneState()
    qc_notes: list[dict[str, Any]] = []
    compute_qc = qc is True
    largest = 0
    with tqdm(total=total, unit="cells", desc=f"annotating ({model})", leave=False,
              disable=not progress) as bar:
        for chunk in chunks:
            table = state.call(chunk, engine, model, chunk_size)
            if compute_qc:
                qc_table = _qc_columns(chunk, True)
                if qc_table is not None:
                    qc_notes.append(json.loads((qc_table.schema.metadata or {}).get(
                        b"scbridge.qc_thresholds", b"{}")))
                    for name in qc_table.column_names:
                        table = table.append_column(name, qc_table.column(name))
            tables.append(table)
            cells.append(table.column("cell").combine_chunks())
            largest = max(largest, chunk.n_cells)
            bar.update(chunk.n_cells)
    if not tables:
        msg = f"{where} holds no cells; there is nothing to annotate."
        raise InputError(msg, code="invalid_shape")
    check_unique_cells(pa.chunked_array(cells), where)
    table = concat_calls(tables).replace_schema_metadata(state.metadata)
    provenance: dict[str, Any] = {"source": state.source, "n_cells": table.num_rows,
                                  "qc": qc is not False and qc is not None,
                                  "streamed_chunks": len(tables)}
    if isinstance(qc, pa.Table):
        table, provenance["qc_thresholds"] = _attach_qc_table(table, qc)
    if min_confidence is not None:
        table = apply_min_confidence(table, float(min_confidence))
        provenance["min_confidence"] = float(min_confidence)
    if qc_notes:
        provenance["qc_thresholds"] = json.dumps(_merge_notes(qc_notes))
        scored = any(t.column("doublet_score").null_count < t.num_rows for t in tables
                     if "doublet_score" in t.column_names)
        if len(tables) > 1 and scored:
            provenance["qc_scope"] = (f"doublet scores within each of {len(tables)} chunks "
                                      f"of at most {largest} cells")
    return with_metadata(table, **provenance)


def _head(chunks: Iterable[CellMatrix], n_cells: int
          ) -> tuple[list[CellMatrix], Iterator[CellMatrix]]:
    """The first chunks of a stream holding ``n_cells`` cells (or all of it), and the whole
    stream again."""
    stream = iter(chunks)
    head: list[CellMatrix] = []
    while sum(c.n_cells for c in head) < n_cells:
        chunk = next(stream, None)
        if chunk is None:
            break
        head.append(chunk)
    return head, itertools.chain(head, stream)


class _PlannedEngine:
    """A local engine whose plan for the stream's gene list is made once, on its first cells
    (other gene lists, e.g. a partition with other genes, are planned as usual)."""

    def __init__(self, engine: ChunkedEngine, head: list[CellMatrix]) -> None:
        from ._annotate import _resolve_genes

        self._engine = engine
        first = head[0]
        same = [c for c in head if np.array_equal(c.genes, first.genes)]
        X = same[0].X if len(same) == 1 else sp.vstack([c.X for c in same], format="csr")
        needed = engine.genes
        genes = _resolve_genes(first, None if needed is None else list(needed))[0]
        planning = CellMatrix(X, np.concatenate([c.cells for c in same]), genes,
                              value_kind=first.value_kind, source=first.source, validate=False)
        self._genes = genes
        self._plan = engine.plan(planning)

    def __getattr__(self, name: str) -> Any:  # name, atlas, genes, describe, ...
        return getattr(self._engine, name)

    def plan(self, matrix: CellMatrix) -> ChunkPlan:
        if np.array_equal(matrix.genes, self._genes):
            return self._plan
        return self._engine.plan(matrix)

    def annotate(self, matrix: CellMatrix, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 progress: bool = True) -> pa.Table:
        from .engines._base import ChunkedEngine

        # The base class's walk over chunks, with this object's plan().
        return ChunkedEngine.annotate(self, matrix,  # type: ignore[arg-type]
                                      chunk_size=chunk_size, progress=progress)


class _GeneState:
    """Gene-id mapping and checks done once per gene list, not once per chunk."""

    def __init__(self) -> None:
        self.genes: NDArray[Any] | None = None
        self.resolved: NDArray[Any] | None = None
        self.metadata: dict[bytes, bytes] | None = None
        self.source = ""

    def call(self, chunk: CellMatrix, engine: Engine, model: str, chunk_size: int
             ) -> pa.Table:
        from ._annotate import _resolve_genes, call_cells

        known = self.genes is not None and (
            chunk.genes is self.genes or np.array_equal(chunk.genes, self.genes))
        if not known:
            # A new gene list (the first chunk, or a partition with other genes): every
            # check call_cells makes, and the mapping for the chunks that follow.
            table = call_cells(chunk, model=model, engine=engine, chunk_size=chunk_size,
                               progress=False)
            needed = engine.genes
            self.genes = chunk.genes
            self.resolved = _resolve_genes(chunk, None if needed is None else list(needed))[0]
            if self.metadata is None:
                self.metadata = dict(table.schema.metadata or {})
                self.source = chunk.source
            return table
        mapped = CellMatrix(chunk.X, chunk.cells, self.resolved, value_kind=chunk.value_kind,
                            source=chunk.source, validate=False, keepalive=chunk.keepalive)
        return engine.annotate(mapped, chunk_size=chunk_size, progress=False)


def _attach_qc_table(table: pa.Table, qc: pa.Table) -> tuple[pa.Table, str]:
    from ._qc import qc_for_cells

    cells = table.column("cell").to_numpy(zero_copy_only=False)
    rows = qc_for_cells(qc, cells)
    metadata = table.schema.metadata
    for name in rows.column_names:
        table = table.append_column(name, rows.column(name))
    notes = (qc.schema.metadata or {}).get(b"scbridge.qc_thresholds", b"{}").decode()
    return table.replace_schema_metadata(metadata), notes


def _merge_notes(notes: list[dict[str, Any]]) -> dict[str, Any]:
    """One QC note for all chunks; a doublet note that differs between chunks lists each."""
    merged = dict(notes[0])
    doublets = list(dict.fromkeys(str(n.get("doublets", "")) for n in notes))
    if len(doublets) > 1:
        merged["doublets"] = doublets
    return merged


def first_duplicate(cells: pa.ChunkedArray | pa.Array) -> Any:
    """A cell id that appears more than once in ``cells``, or ``None``."""
    if pc.count_distinct(cells).as_py() == len(cells):
        return None
    counts = pc.value_counts(cells)
    return next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)


def check_unique_cells(cells: pa.ChunkedArray | pa.Array, where: str) -> None:
    """Refuse a cell id that appears twice in ``cells`` (chunks are checked one by one as they
    are read; this is the check across them)."""
    duplicate = first_duplicate(cells)
    if duplicate is not None:
        msg = (f"cell id {duplicate!r} appears more than once in {where}; cell ids must be "
               "unique (prefix them per sample).")
        raise InputError(msg, code="invalid_cells")

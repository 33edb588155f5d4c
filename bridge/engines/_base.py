"""What local engines share: annotating chunk by chunk, and per-gene-list layouts.

A local engine implements :meth:`ChunkedEngine.annotate_chunk` for one chunk of cells;
:meth:`ChunkedEngine.annotate` walks the matrix in chunk views (no copy of the values) and
joins the chunk tables in order.  Engines are shared between threads (the server computes
requests in a thread pool) and kept for the life of the process, so nothing a call computes
is stored on the engine except caches that are replaced in one assignment.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from .._contract import ChunkCalls, chunk_table, concat_calls, with_metadata
from . import DEFAULT_CHUNK_SIZE

if TYPE_CHECKING:
    import pyarrow as pa

    from ..matrix import CellMatrix

__all__ = ["ChunkPlan", "ChunkedEngine", "GeneLayoutCache"]

L = TypeVar("L")


class GeneLayoutCache(Generic[L]):
    """Remembers one layout computed from a gene list (the chunks of one matrix share it).

    The gene array itself is kept and compared, not its ``id`` (which can be reused after
    garbage collection); the pair is stored in one assignment, so threads sharing an engine
    never see one matrix's genes with another's layout.
    """

    def __init__(self) -> None:
        self._entry: tuple[NDArray[Any], L] | None = None

    def get(self, genes: NDArray[Any], build: Callable[[NDArray[Any]], L]) -> L:
        entry = self._entry
        if entry is not None:
            cached, layout = entry
            if cached is genes or (len(cached) == len(genes) and np.array_equal(cached, genes)):
                return layout
        layout = build(genes)
        self._entry = (genes, layout)
        return layout


@dataclass(frozen=True)
class ChunkPlan:
    """What annotating one matrix needs, worked out once before its chunks: the function
    that annotates a chunk, the genes-found fraction, and provenance for the metadata."""

    annotate_chunk: Callable[[CellMatrix], ChunkCalls]
    genes_matched: float
    provenance: dict[str, Any] = field(default_factory=dict)


class ChunkedEngine(abc.ABC):
    """Base class of local engines: calls are made chunk by chunk, each cell on its own."""

    name: str = ""
    atlas: str | None = None
    min_gene_fraction: float = 0.1

    @property
    @abc.abstractmethod
    def genes(self) -> Sequence[str] | None:
        """The genes the engine reads."""

    @abc.abstractmethod
    def annotate_chunk(self, matrix: CellMatrix) -> ChunkCalls:
        """Calls for the cells of one chunk, in its cell order."""

    @abc.abstractmethod
    def parameters(self) -> dict[str, Any]:
        """Parameters recorded in the calls' provenance."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "atlas": self.atlas, "parameters": self.parameters()}

    def check_genes(self, matrix: CellMatrix) -> float:
        """The fraction of :attr:`genes` found in ``matrix``; refused
        (:class:`~bridge.GeneIdError`) below :attr:`min_gene_fraction`, so an engine that sees
        none of its genes never calls every cell the same."""
        from ..genes import check_genes_found, detect_gene_id_kind

        needed = self.genes
        if needed is None:
            return 1.0
        return check_genes_found(needed, matrix.genes,
                                 kind=detect_gene_id_kind(list(matrix.genes)),
                                 min_fraction=self.min_gene_fraction,
                                 where=matrix.source or "the matrix",
                                 what=f"the {self.name!r} model")

    def plan(self, matrix: CellMatrix) -> ChunkPlan:
        """Work done once per matrix before its chunks (here: the genes-found check)."""
        return ChunkPlan(self.annotate_chunk, self.check_genes(matrix))

    def annotate(self, matrix: CellMatrix, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 progress: bool = True) -> pa.Table:
        """The Calls table for every cell, chunk by chunk (calls never depend on the chunking).

        :meth:`plan` runs first, once (the genes-found check, recorded as
        ``scbridge.genes_matched``, and whatever else an engine decides for the whole matrix).
        """
        from tqdm.auto import tqdm

        plan = self.plan(matrix)
        tables = []
        bar = tqdm(total=matrix.n_cells, unit="cells", desc=f"annotating ({self.name})",
                   disable=not progress or matrix.n_cells < 2 * min(chunk_size, 10_000),
                   leave=False)
        try:
            for chunk in matrix.iter_chunks(chunk_size):
                tables.append(chunk_table(chunk.cells, plan.annotate_chunk(chunk)))
                bar.update(chunk.n_cells)
        finally:
            bar.close()
        if not tables:
            tables = [chunk_table([], plan.annotate_chunk(matrix))]
        return with_metadata(concat_calls(tables), genes_matched=round(plan.genes_matched, 4),
                             **plan.provenance)

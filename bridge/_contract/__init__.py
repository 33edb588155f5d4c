"""The contract every path shares: the Calls table, the companion tables, and their bytes on
the wire (JSON and Arrow, requests and replies).

Framework-free and below both the engines and the server (neither imports the other): an
engine builds Calls tables with :func:`chunk_table` / :func:`concat_calls`, the server
decodes requests and encodes replies with :mod:`.wire`, the remote engine does the opposite,
so every path gives identical tables.
"""

from __future__ import annotations

from .calls import (
    ALTERNATE_TYPE,
    CALLS_SCHEMA,
    ENGINE_COLUMNS,
    UNKNOWN,
    ChunkCalls,
    apply_min_confidence,
    calls_for_csv,
    calls_from_records,
    calls_to_records,
    chunk_table,
    concat_calls,
    metadata_dict,
    with_metadata,
)
from .tables import MARKERS_SCHEMA, embedding_array, embedding_table

__all__ = [
    "ALTERNATE_TYPE",
    "CALLS_SCHEMA",
    "ENGINE_COLUMNS",
    "MARKERS_SCHEMA",
    "UNKNOWN",
    "ChunkCalls",
    "apply_min_confidence",
    "calls_for_csv",
    "calls_from_records",
    "calls_to_records",
    "chunk_table",
    "concat_calls",
    "embedding_array",
    "embedding_table",
    "metadata_dict",
    "with_metadata",
]

"""Per-partition calls files streamed into one ``--out`` file, one partition at a time.

``scbridge annotate DIR --out calls.parquet`` never holds the calls of the whole data set:
each partition's file is read, checked and appended in partition order, into a hidden
temporary file renamed to ``--out`` only when every partition is in (so an interrupted
assembly leaves no partial output).  In an Arrow IPC file the dictionary columns (``label``,
...) get one dictionary for the whole file, which the format requires; Parquet keeps a
dictionary per row group (one per partition) and CSV / JSON hold values, so for them the
partitions' own dictionaries are kept and each calls file is read once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .._errors import InputError
from ..io._files import atomic_output
from ._calls_out import WRITERS

__all__ = ["assemble_calls"]

#: Output suffixes whose format allows one dictionary per column for the whole file.
_ONE_DICTIONARY = frozenset({".arrow"})


def assemble_calls(files: Sequence[str | os.PathLike[str]], partitions: Sequence[str],
                   out: Path, *, provenance: dict[str, Any],
                   inputs: Iterable[str | os.PathLike[str] | None] = ()) -> pa.Table:
    """Stream ``files`` (one calls file per partition, in order) into ``out`` by its suffix,
    written through :func:`bridge.io._files.atomic_output` (an ``out`` that is one of
    ``inputs`` is refused with code ``same_file``).

    Returns the columns the summary needs (``label``, ``confidence``, ``qc_pass``) with the
    output's metadata: small, whatever the number of cells.
    """
    from .._partition_calls import read_partition_calls
    from .._streaming import first_duplicate

    suffix = out.suffix.lower()
    schema, dictionaries, n_cells = _survey(files, partitions,
                                            one_dictionary=suffix in _ONE_DICTIONARY)
    metadata = dict(schema.metadata or {})
    for key, value in {**provenance, "n_cells": n_cells}.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        metadata[f"scbridge.{key}".encode()] = text.encode()
    schema = schema.with_metadata(metadata)
    summary_columns = [c for c in ("label", "confidence", "qc_pass") if c in schema.names]
    kept: list[pa.Table] = []
    cells: list[pa.Array] = []

    def tables() -> Iterator[pa.Table]:
        for file in files:
            table = _recode(read_partition_calls(file), dictionaries).replace_schema_metadata(
                metadata)
            cells.append(table.column("cell").combine_chunks())
            kept.append(table.select(summary_columns))
            yield table

    with atomic_output(out, inputs=inputs, what="--out") as temporary:
        WRITERS[suffix](temporary, schema, tables())
        duplicate = first_duplicate(pa.chunked_array(cells, pa.string()))
        if duplicate is not None:
            owners = [p for p, c in zip(partitions, cells, strict=True)
                      if pc.any(pc.equal(c, duplicate)).as_py()]
            msg = (f"cell id {duplicate!r} appears in more than one partition "
                   f"({', '.join(owners)}); cell ids must be unique across the data set "
                   "(prefix them per sample).")
            raise InputError(msg, code="invalid_cells")
    summary = pa.concat_tables(kept) if kept else schema.empty_table().select(summary_columns)
    return summary.replace_schema_metadata(metadata)


def _survey(files: Sequence[str | os.PathLike[str]], partitions: Sequence[str], *,
            one_dictionary: bool) -> tuple[pa.Schema, dict[str, pa.Array], int]:
    """The common schema (from the footers), one dictionary per dictionary column (with
    ``one_dictionary``; else none: the partitions' own are kept), and the number of cells;
    refuses files whose schemas differ."""
    from .._partition_calls import read_partition_calls

    first = pq.read_schema(files[0])
    n_cells = 0
    for file, partition in zip(files, partitions, strict=True):
        schema = pq.read_schema(file)
        if not schema.equals(first, check_metadata=False):
            msg = (f"the calls of partition {partition} do not have the columns of the first "
                   f"partition's ({partition} was annotated with other options); annotate "
                   "every partition alike (rerun without --resume).")
            raise InputError(msg)
        n_cells += pq.ParquetFile(file).metadata.num_rows
    names = [f.name for f in first if pa.types.is_dictionary(f.type)] if one_dictionary else []
    values: dict[str, dict[str, None]] = {name: {} for name in names}
    if names:
        for file in files:
            table = pq.read_table(file, columns=names)  # only the dictionary columns
            for name in names:
                decoded = pc.cast(table.column(name), pa.string())
                values[name].update(dict.fromkeys(pc.unique(decoded).to_pylist()))
    dictionaries = {name: pa.array([v for v in found if v is not None], pa.string())
                    for name, found in values.items()}
    schema = read_partition_calls(files[0]).schema
    return schema, dictionaries, n_cells


def _recode(table: pa.Table, dictionaries: dict[str, pa.Array]) -> pa.Table:
    """Dictionary columns re-encoded against the whole output's dictionaries."""
    for name, dictionary in dictionaries.items():
        position = table.column_names.index(name)
        field = table.schema.field(name)
        decoded = pc.cast(table.column(name), pa.string()).combine_chunks()
        indices = pc.index_in(decoded, value_set=dictionary).cast(field.type.index_type)
        column = pa.DictionaryArray.from_arrays(indices, dictionary)
        table = table.set_column(position, field, column)
    return table



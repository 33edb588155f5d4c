"""Calls files by suffix (``--out`` of ``scbridge annotate``): Parquet, Arrow IPC file, CSV or
the JSON of the service's reply.

One writer per format, fed a stream of tables: a run in one piece hands it one table, the
assembly of a partitioned run (:mod:`._assemble`) one table per partition, and both write the
same bytes.  Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .._contract import calls_for_csv, calls_to_records, metadata_dict
from .._errors import InputError
from ..io._files import atomic_output

__all__ = ["SUFFIXES", "WRITERS", "write_calls"]

SUFFIXES = (".parquet", ".arrow", ".csv", ".json")


def _write_parquet(path: Path, schema: pa.Schema, tables: Iterator[pa.Table]) -> None:
    with pq.ParquetWriter(path, schema) as writer:
        for table in tables:
            writer.write_table(table)


def _write_arrow(path: Path, schema: pa.Schema, tables: Iterator[pa.Table]) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for table in tables:
            writer.write_table(table)


def _write_csv(path: Path, schema: pa.Schema, tables: Iterator[pa.Table]) -> None:
    import pyarrow.csv as pcsv

    writer: pcsv.CSVWriter | None = None
    try:
        for table in tables:
            flat = calls_for_csv(table)
            if writer is None:
                writer = pcsv.CSVWriter(str(path), flat.schema)
            writer.write_table(flat)
    finally:
        if writer is not None:
            writer.close()


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _write_json(path: Path, schema: pa.Schema, tables: Iterator[pa.Table]) -> None:
    # The bytes json.dump({"calls": [...], "metadata": {...}}) would give, a table at a time.
    with open(path, "w", encoding="utf-8") as handle:
        handle.write('{"calls": [')
        first = True
        for table in tables:
            cells = table.column("cell").to_pylist()
            for cell, record in zip(cells, calls_to_records(table), strict=True):
                handle.write(("" if first else ", ")
                             + json.dumps({"cell": cell, **record}, default=_json_default))
                first = False
        handle.write('], "metadata": ')
        json.dump(metadata_dict(schema.empty_table()), handle, default=_json_default)
        handle.write("}")


#: Suffix -> writer of a stream of tables of one schema into a file.
WRITERS: dict[str, Callable[[Path, pa.Schema, Iterator[pa.Table]], None]] = {
    ".parquet": _write_parquet,
    ".arrow": _write_arrow,
    ".csv": _write_csv,
    ".json": _write_json,
}


def write_calls(table: pa.Table, out: str | Path, *,
                inputs: Iterable[str | Path | None] = ()) -> Path:
    """Write a Calls table by the suffix of ``out`` (under a temporary name renamed when
    complete; an ``out`` that is one of ``inputs`` is refused with code ``same_file``)."""
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        msg = f"{path}: unsupported output suffix {suffix!r}; use one of {', '.join(SUFFIXES)}."
        raise InputError(msg)
    with atomic_output(path, inputs=inputs, what="--out") as temp:
        WRITERS[suffix](temp, table.schema, iter([table]))
    return path

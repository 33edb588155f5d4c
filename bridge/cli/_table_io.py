"""Reading and writing plain result tables (markers, embeddings, calls) by file suffix."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from .._errors import FormatError, InputError, NotFoundError
from ..io._files import atomic_output

__all__ = ["TABLE_SUFFIXES", "read_table", "write_table"]

TABLE_SUFFIXES = (".parquet", ".arrow", ".csv", ".tsv", ".json")


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        msg = f"{path}: unknown table format {suffix or '(none)'!r}; use one of {TABLE_SUFFIXES}."
        raise InputError(msg)
    return suffix


def _flatten_for_text(table: pa.Table) -> pa.Table:
    """CSV cannot hold lists: fixed-size lists become one column per element, lists strings."""
    import pyarrow.compute as pc

    columns, names = [], []
    for name, column in zip(table.column_names, table.columns, strict=True):
        kind = column.type
        if pa.types.is_fixed_size_list(kind):
            values = column.combine_chunks().flatten()
            width = kind.list_size
            for k in range(width):
                columns.append(values.take(pa.array(range(k, len(values), width))))
                names.append(f"{name}_{k + 1}")
        elif pa.types.is_list(kind) and pa.types.is_string(kind.value_type):
            columns.append(pa.array([";".join(v or []) for v in column.to_pylist()]))
            names.append(name)
        elif pa.types.is_dictionary(kind):
            columns.append(pc.cast(column, pa.string()))
            names.append(name)
        else:
            columns.append(column)
            names.append(name)
    return pa.table(dict(zip(names, columns, strict=True)))


def write_table(table: pa.Table, path: str | Path, *,
                inputs: Iterable[str | Path | None] = ()) -> Path:
    """Write ``table`` as Parquet, Arrow IPC file, CSV / TSV or JSON (records), by suffix.

    The file is written under a temporary name and renamed when complete; a ``path`` that is
    one of ``inputs`` is refused (code ``same_file``).
    """
    path = Path(path)
    suffix = _suffix(path)
    with atomic_output(path, inputs=inputs) as temp:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, temp)
        elif suffix == ".arrow":
            with pa.OSFile(str(temp), "wb") as sink, \
                    pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
        elif suffix in (".csv", ".tsv"):
            import pyarrow.csv as pacsv

            options = pacsv.WriteOptions(delimiter="," if suffix == ".csv" else "\t")
            pacsv.write_csv(_flatten_for_text(table), temp, write_options=options)
        else:
            meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
            records = _flatten_dictionaries(table).to_pylist()
            temp.write_text(json.dumps({"rows": records, "metadata": meta}, default=str))
    return path


def _flatten_dictionaries(table: pa.Table) -> pa.Table:
    import pyarrow.compute as pc

    for i, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, pc.cast(table.column(i), pa.string()))
    return table


def read_table(path: str | Path) -> pa.Table:
    """Read a table written by scbridge (Parquet, Arrow, CSV / TSV, JSON ``calls`` or ``rows``)."""
    path = Path(path)
    if not path.is_file():
        msg = f"{path} does not exist."
        raise NotFoundError(msg)
    suffix = _suffix(path)
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if suffix == ".arrow":
            with pa.memory_map(str(path)) as source:
                return pa.ipc.open_file(source).read_all()
        if suffix in (".csv", ".tsv"):
            import pyarrow.csv as pacsv

            parse = pacsv.ParseOptions(delimiter="," if suffix == ".csv" else "\t")
            # Cell ids and labels stay text even when they look like numbers ("0", "1", ...).
            convert = pacsv.ConvertOptions(column_types={"cell": pa.string(),
                                                         "label": pa.string()})
            return pacsv.read_csv(path, parse_options=parse, convert_options=convert)
        document = json.loads(path.read_text())
    except (pa.ArrowException, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"{path}: cannot read it as a {suffix[1:]} table ({exc})."
        raise FormatError(msg) from None
    rows = document.get("calls", document.get("rows")) if isinstance(document, dict) else None
    if not isinstance(rows, list):
        msg = f"{path}: a JSON table must be an object with a 'calls' or 'rows' array."
        raise FormatError(msg)
    return pa.Table.from_pylist(rows)

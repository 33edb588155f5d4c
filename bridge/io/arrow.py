"""Arrow CSR: the transport format between processes and machines (docs/format.md).

A record batch holds a contiguous chunk of cells; its list offsets *are* the CSR ``indptr`` of
that chunk, so reading is zero-copy: a memory-mapped file with one batch gives numpy arrays on
the map itself.  Several batches are joined into one CSR (a copy, logged), or streamed one by
one with :func:`iter_arrow_chunks`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa

from .._errors import FormatError, InputError
from .._validate import INT32_MAX
from ..matrix import CellMatrix, csr_view

if TYPE_CHECKING:
    from ..matrix import ValueKind

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "arrow_schema",
    "batches_from_matrix",
    "is_arrow_file",
    "iter_arrow_chunks",
    "matrix_from_batches",
    "read_arrow",
    "write_arrow",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "scbridge.arrow-csr"
FORMAT_VERSION = "1.0"
_KEY_FORMAT = b"scbridge.format"
_KEY_VERSION = b"scbridge.format_version"
_KEY_GENES = b"scbridge.genes"
_KEY_VALUE_KIND = b"scbridge.value_kind"
_KEY_SOURCE = b"scbridge.source"
_CORE_COLUMNS = ("cell", "indices", "values")
_ARROW_MAGIC = b"ARROW1"
_VALUE_TYPES = {
    np.dtype("float32"): pa.float32(),
    np.dtype("float64"): pa.float64(),
    np.dtype("int32"): pa.int32(),
}

Offsets = Literal["auto", "int32", "int64"]


# -- writing --------------------------------------------------------------------------------
def _list_type(value_type: pa.DataType, large: bool) -> pa.DataType:
    return pa.large_list(value_type) if large else pa.list_(value_type)


def arrow_schema(
    matrix: CellMatrix, *, large: bool = False, values_dtype: np.dtype | None = None
) -> pa.Schema:
    """The Arrow CSR schema (with its metadata) for ``matrix``."""
    dtype = np.dtype(values_dtype or matrix.X.dtype)
    if dtype not in _VALUE_TYPES:
        dtype = np.dtype("float64")
    fields = [
        pa.field("cell", pa.string(), nullable=False),
        pa.field("indices", _list_type(pa.int32(), large), nullable=False),
        pa.field("values", _list_type(_VALUE_TYPES[dtype], large), nullable=False),
    ]
    fields += [f for f in matrix.obs.schema if f.name not in _CORE_COLUMNS]
    metadata = {
        _KEY_FORMAT: FORMAT_NAME.encode(),
        _KEY_VERSION: FORMAT_VERSION.encode(),
        _KEY_GENES: json.dumps([str(g) for g in matrix.genes]).encode(),
        _KEY_VALUE_KIND: matrix.value_kind.encode(),
        _KEY_SOURCE: matrix.source.encode(),
    }
    return pa.schema(fields, metadata=metadata)


def _needs_large(nnz: int, offsets: Offsets) -> bool:
    if offsets == "int64":
        return True
    if offsets == "int32" and nnz > INT32_MAX:
        msg = f"{nnz:,} non-zeros do not fit 32-bit offsets; use offsets='int64' or 'auto'."
        raise InputError(msg)
    return nnz > INT32_MAX


def batches_from_matrix(
    matrix: CellMatrix,
    *,
    chunk_size: int | None = None,
    schema: pa.Schema | None = None,
) -> Iterator[pa.RecordBatch]:
    """Record batches of ``chunk_size`` cells (all cells in one batch when ``None``).

    Values and indices are passed to Arrow as views; only each batch's offsets are new.
    """
    schema = schema or arrow_schema(matrix)
    large = pa.types.is_large_list(schema.field("indices").type)
    value_type = schema.field("values").type.value_type
    offset_dtype = np.int64 if large else np.int32
    list_cls = pa.LargeListArray if large else pa.ListArray
    obs_names = [f.name for f in schema if f.name not in _CORE_COLUMNS]
    X = matrix.X
    step = chunk_size or max(matrix.n_cells, 1)
    for start in range(0, max(matrix.n_cells, 1), step):
        stop = min(start + step, matrix.n_cells)
        lo, hi = int(X.indptr[start]), int(X.indptr[stop])
        offsets = pa.array((X.indptr[start : stop + 1] - lo).astype(offset_dtype, copy=False))
        indices = pa.array(X.indices[lo:hi].astype(np.int32, copy=False), type=pa.int32())
        values = pa.array(X.data[lo:hi].astype(value_type.to_pandas_dtype(), copy=False))
        columns = [
            pa.array(matrix.cells[start:stop].tolist(), type=pa.string()),
            list_cls.from_arrays(offsets, indices),
            list_cls.from_arrays(offsets, values),
        ]
        columns += [matrix.obs.column(n).slice(start, stop - start) for n in obs_names]
        columns = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns]
        yield pa.RecordBatch.from_arrays(columns, schema=schema)
        if matrix.n_cells == 0:
            break


def write_arrow(
    matrix: CellMatrix,
    path: str | os.PathLike[str] | pa.NativeFile,
    *,
    stream: bool | None = None,
    chunk_size: int | None = None,
    offsets: Offsets = "auto",
    values_dtype: np.dtype | str | None = None,
) -> None:
    """Write ``matrix`` as an Arrow CSR IPC file (``.arrow``) or stream (``.arrows``).

    ``stream=None`` picks the stream format for ``.arrows`` paths.  ``offsets="auto"``
    switches to 64-bit list offsets when nnz exceeds 2**31 - 1.
    """
    if stream is None:
        stream = isinstance(path, str | os.PathLike) and str(path).endswith(".arrows")
    dtype = np.dtype(values_dtype) if values_dtype is not None else None
    schema = arrow_schema(matrix, large=_needs_large(matrix.nnz, offsets), values_dtype=dtype)
    write_batches(schema, batches_from_matrix(matrix, chunk_size=chunk_size, schema=schema),
                  path, stream=stream)


def write_batches(
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    path: str | os.PathLike[str] | pa.NativeFile,
    *,
    stream: bool,
) -> None:
    """Write record batches to an IPC file or stream (used by streaming conversion)."""
    new = pa.ipc.new_stream if stream else pa.ipc.new_file
    sink = path if isinstance(path, pa.NativeFile) else pa.OSFile(os.fspath(path), "wb")
    try:
        with new(sink, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
    finally:
        if not isinstance(path, pa.NativeFile):
            sink.close()


# -- reading --------------------------------------------------------------------------------
def is_arrow_file(path: Path) -> bool:
    """Whether ``path`` is an Arrow IPC file or stream (by suffix or magic bytes)."""
    if path.suffix in {".arrow", ".arrows", ".feather", ".ipc"}:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return head.startswith(_ARROW_MAGIC) or head[:4] == b"\xff\xff\xff\xff"


def _open_reader(source: pa.NativeFile | pa.Buffer, where: str) -> pa.ipc.RecordBatchReader:
    """A batch reader over an IPC file or stream; file format tried first."""
    try:
        reader = pa.ipc.open_file(source)
        return _FileBatches(reader)  # type: ignore[return-value]
    except (pa.ArrowInvalid, OSError):
        pass
    try:
        if isinstance(source, pa.NativeFile):
            source.seek(0)
        return pa.ipc.open_stream(source)
    except (pa.ArrowInvalid, OSError) as exc:
        msg = (
            f"{where} is not a readable Arrow IPC file or stream ({exc}). It may be truncated, "
            "or not an Arrow file at all; write it with bridge.write() or `scbridge convert`."
        )
        raise FormatError(msg) from None


class _FileBatches:
    """Iterate an IPC *file* like a stream reader."""

    def __init__(self, reader: pa.ipc.RecordBatchFileReader) -> None:
        self._reader = reader
        self.schema = reader.schema

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for i in range(self._reader.num_record_batches):
            yield self._reader.get_batch(i)


def _check_schema(schema: pa.Schema, where: str) -> tuple[list[str], ValueKind, str]:
    meta = schema.metadata or {}
    if meta.get(_KEY_FORMAT) != FORMAT_NAME.encode():
        msg = (
            f"{where} is an Arrow file but not an scbridge Arrow CSR file (schema metadata "
            f"'scbridge.format' is "
            f"{meta.get(_KEY_FORMAT, b'missing').decode(errors='replace')!r}). "
            "See docs/format.md for the layout, or convert the data with `scbridge convert`."
        )
        raise FormatError(msg)
    version = meta.get(_KEY_VERSION, b"").decode()
    major = version.split(".", 1)[0]
    if major != FORMAT_VERSION.split(".", 1)[0]:
        msg = (
            f"{where} uses Arrow CSR format version {version or '?'}, but this scbridge reads "
            f"major version {FORMAT_VERSION.split('.')[0]} only. Upgrade scbridge, or rewrite "
            "the file with the scbridge that reads it."
        )
        raise FormatError(msg)
    for name in _CORE_COLUMNS:
        if schema.get_field_index(name) < 0:
            msg = f"{where}: Arrow CSR column {name!r} is missing (columns: {schema.names})."
            raise FormatError(msg)
    for name in ("indices", "values"):
        t = schema.field(name).type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
            msg = f"{where}: column {name!r} must be a list column, got {t}."
            raise FormatError(msg)
    if schema.field("indices").type.value_type != pa.int32():
        msg = f"{where}: 'indices' must hold int32, got {schema.field('indices').type}."
        raise FormatError(msg)
    try:
        genes = json.loads(meta[_KEY_GENES])
    except (KeyError, ValueError):
        msg = f"{where}: schema metadata 'scbridge.genes' is missing or not a JSON list."
        raise FormatError(msg) from None
    value_kind = meta.get(_KEY_VALUE_KIND, b"counts").decode()
    if value_kind not in ("counts", "lognorm"):
        msg = f"{where}: unknown value kind {value_kind!r} (expected 'counts' or 'lognorm')."
        raise FormatError(msg)
    return genes, value_kind, meta.get(_KEY_SOURCE, b"").decode()  # type: ignore[return-value]


def _list_parts(column: pa.Array, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, flat values) of one list column, as views where the layout allows."""
    if column.null_count:
        msg = f"{where}: list column has {column.null_count} null rows; use empty lists instead."
        raise FormatError(msg)
    offsets = column.offsets.to_numpy(zero_copy_only=True)
    first, last = int(offsets[0]), int(offsets[-1])
    child = column.values.slice(first, last - first)
    if child.null_count:
        msg = f"{where}: {child.null_count} null entries inside the lists."
        raise FormatError(msg)
    flat = child.to_numpy(zero_copy_only=True)
    indptr = offsets if first == 0 else offsets - first
    return indptr, flat


def _batch_to_csr(
    batch: pa.RecordBatch, n_genes: int, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    indptr, indices = _list_parts(batch.column("indices"), where)
    value_ptr, data = _list_parts(batch.column("values"), where)
    if len(value_ptr) != len(indptr) or not np.array_equal(value_ptr, indptr):
        msg = f"{where}: 'indices' and 'values' lists differ in length for some cells."
        raise FormatError(msg)
    return indptr, indices, data


def _obs_from_batches(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table | None:
    names = [n for n in schema.names if n not in _CORE_COLUMNS]
    if not names:
        return None
    return pa.Table.from_batches(batches, schema=schema).select(names)


def matrix_from_batches(
    batches: list[pa.RecordBatch],
    schema: pa.Schema,
    *,
    where: str,
    keepalive: object = None,
    validate: bool = True,
) -> CellMatrix:
    """One :class:`CellMatrix` from Arrow CSR batches (zero-copy for a single batch)."""
    genes, value_kind, source = _check_schema(schema, where)
    n_genes = len(genes)
    parts = [_batch_to_csr(b, n_genes, where) for b in batches]
    if len(parts) == 1:
        indptr, indices, data = parts[0]
    elif parts:
        logger.info("%s: joining %d record batches into one CSR (a copy)", where, len(parts))
        indices = np.concatenate([p[1] for p in parts])
        data = np.concatenate([p[2] for p in parts])
        ends = np.cumsum([int(p[0][-1]) for p in parts])
        big = ends[-1] > INT32_MAX
        pieces = [parts[0][0].astype(np.int64 if big else parts[0][0].dtype)]
        pieces += [p[0][1:] + ends[i] for i, p in enumerate(parts[1:])]
        indptr = np.concatenate(pieces)
    else:
        indptr, indices, data = np.zeros(1, np.int32), np.zeros(0, np.int32), np.zeros(0)
    n_cells = len(indptr) - 1
    X = csr_view(data, indices, indptr, (n_cells, n_genes))
    cells = (
        np.concatenate([b.column("cell").to_numpy(zero_copy_only=False) for b in batches])
        if batches else np.empty(0, dtype=object)
    )
    return CellMatrix(
        X,
        cells,
        genes,
        obs=_obs_from_batches(batches, schema),
        value_kind=value_kind,
        source=source or f"Arrow CSR {where}",
        keepalive=keepalive,
        validate=validate,
    )


def read_arrow(
    path: str | os.PathLike[str] | pa.Buffer | bytes, *, validate: bool = True
) -> CellMatrix:
    """Read an Arrow CSR file or stream, memory-mapped: one batch gives views on the map.

    ``validate=False`` skips the checks on ids and values (the format itself is always
    checked), e.g. to round-trip an empty matrix.
    """
    if isinstance(path, bytes | pa.Buffer):
        source = pa.BufferReader(path)
        where = "the Arrow CSR payload"
    else:
        where = os.fspath(path)
        source = pa.memory_map(where, "r")
    reader = _open_reader(source, where)
    try:
        batches = list(reader)
    except (pa.ArrowInvalid, OSError) as exc:
        msg = f"{where}: the Arrow data ends early or is corrupt ({exc}). Re-create the file."
        raise FormatError(msg) from None
    return matrix_from_batches(
        batches, reader.schema, where=where, keepalive=source, validate=validate
    )


def iter_arrow_chunks(path: str | os.PathLike[str]) -> Iterator[CellMatrix]:
    """One :class:`CellMatrix` per record batch, streamed from a memory-mapped file."""
    where = os.fspath(path)
    source = pa.memory_map(where, "r")
    reader = _open_reader(source, where)
    for batch in reader:
        yield matrix_from_batches([batch], reader.schema, where=where, keepalive=source)

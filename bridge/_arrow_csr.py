"""The Arrow CSR format (docs/format.md): schema, record batches, and back to a CellMatrix.

A record batch holds a contiguous chunk of cells; its list offsets *are* the CSR ``indptr`` of
that chunk, so decoding is zero-copy: numpy arrays are views on Arrow's buffers (a memory-mapped
file, a request body).  This module is the format itself, shared by the file reader and writer
(:mod:`bridge.io.arrow`) and the wire payloads (:mod:`bridge._contract`); it touches no files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from ._errors import CapacityError, FormatError
from ._validate import INT32_MAX
from .matrix import CellMatrix, csr_view
from .numerics import VALUE_KINDS, ValueKind

__all__ = [
    "CORE_COLUMNS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Offsets",
    "arrow_schema",
    "batches_from_matrix",
    "check_schema",
    "compact_offsets",
    "list_parts",
    "matrix_from_batches",
    "needs_large",
    "open_reader",
    "stream_buffer",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "scbridge.arrow-csr"
FORMAT_VERSION = "1.1"  # 1.1: value kind "normalized"
_KEY_FORMAT = b"scbridge.format"
_KEY_VERSION = b"scbridge.format_version"
_KEY_GENES = b"scbridge.genes"
_KEY_VALUE_KIND = b"scbridge.value_kind"
_KEY_SOURCE = b"scbridge.source"
CORE_COLUMNS = ("cell", "indices", "values")
_VALUE_TYPES = {
    np.dtype("float32"): pa.float32(),
    np.dtype("float64"): pa.float64(),
    np.dtype("int32"): pa.int32(),
}

Offsets = Literal["auto", "int32", "int64"]


def _list_type(value_type: pa.DataType, large: bool) -> pa.DataType:
    return pa.large_list(value_type) if large else pa.list_(value_type)


def arrow_schema(
    matrix: CellMatrix, *, large: bool = False, values_dtype: np.dtype[Any] | None = None
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
    fields += [f for f in matrix.obs.schema if f.name not in CORE_COLUMNS]
    metadata = {
        _KEY_FORMAT: FORMAT_NAME.encode(),
        _KEY_VERSION: FORMAT_VERSION.encode(),
        _KEY_GENES: json.dumps([str(g) for g in matrix.genes]).encode(),
        _KEY_VALUE_KIND: matrix.value_kind.encode(),
        _KEY_SOURCE: matrix.source.encode(),
    }
    return pa.schema(fields, metadata=metadata)


def needs_large(nnz: int, offsets: Offsets) -> bool:
    if offsets == "int64":
        return True
    if offsets == "int32" and nnz > INT32_MAX:
        msg = f"{nnz:,} non-zeros do not fit 32-bit offsets; use offsets='int64' or 'auto'."
        raise CapacityError(msg)
    return nnz > INT32_MAX


def compact_offsets(indptr: NDArray[Any]) -> NDArray[Any]:
    """``indptr`` (starting at 0) as int32 when its values fit, else as it is.

    A chunk of a ``large_list`` batch has 64-bit offsets that usually fit 32 bits again;
    scipy widens ``indices`` to int64 (a copy) for every operation on a matrix with int64
    ``indptr``, so chunks get 32-bit offsets back where they can.
    """
    if indptr.dtype == np.int32 or (len(indptr) and int(indptr[-1]) > INT32_MAX):
        return indptr
    return indptr.astype(np.int32)


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
    obs_names = [f.name for f in schema if f.name not in CORE_COLUMNS]
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


def stream_buffer(matrix: CellMatrix, *, chunk_size: int | None = None) -> pa.Buffer:
    """``matrix`` as an Arrow CSR IPC stream in memory (its cell metadata included).

    Returned as the Arrow buffer itself (it supports the buffer protocol): no copy into bytes.
    """
    schema = arrow_schema(matrix, large=needs_large(matrix.nnz, "auto"))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches_from_matrix(matrix, chunk_size=chunk_size, schema=schema):
            writer.write_batch(batch)
    return sink.getvalue()


def open_reader(source: pa.NativeFile | pa.Buffer, where: str
                ) -> pa.ipc.RecordBatchReader | _FileBatches:
    """A batch reader over an IPC file or stream; file format tried first."""
    try:
        reader = pa.ipc.open_file(source)
        return _FileBatches(reader)
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
        raise FormatError(msg, code="invalid_arrow") from None


class _FileBatches:
    """Iterate an IPC *file* like a stream reader."""

    def __init__(self, reader: pa.ipc.RecordBatchFileReader) -> None:
        self._reader = reader
        self.schema = reader.schema

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for i in range(self._reader.num_record_batches):
            yield self._reader.get_batch(i)


def check_schema(schema: pa.Schema, where: str) -> tuple[list[str], ValueKind, str]:
    try:
        schema.names  # noqa: B018 - pyarrow decodes every field name here
    except UnicodeDecodeError:
        msg = f"{where}: the Arrow schema's column names are not UTF-8 text; the file is damaged."
        raise FormatError(msg, code="invalid_arrow") from None
    meta = schema.metadata or {}
    if meta.get(_KEY_FORMAT) != FORMAT_NAME.encode():
        msg = (
            f"{where} is an Arrow file but not an scbridge Arrow CSR file (schema metadata "
            f"'scbridge.format' is "
            f"{meta.get(_KEY_FORMAT, b'missing').decode(errors='replace')!r}). "
            "See docs/format.md for the layout, or convert the data with `scbridge convert`."
        )
        raise FormatError(msg, code="invalid_arrow")
    version = meta.get(_KEY_VERSION, b"").decode(errors="replace")[:40]
    major = version.split(".", 1)[0]
    if major != FORMAT_VERSION.split(".", 1)[0]:
        msg = (
            f"{where} uses Arrow CSR format version {version or '?'}, but this scbridge reads "
            f"major version {FORMAT_VERSION.split('.')[0]} only. Upgrade scbridge, or rewrite "
            "the file with the scbridge that reads it."
        )
        raise FormatError(msg, code="unsupported_version")
    for name in CORE_COLUMNS:
        if schema.get_field_index(name) < 0:
            msg = f"{where}: Arrow CSR column {name!r} is missing (columns: {schema.names})."
            raise FormatError(msg, code="invalid_arrow")
    _check_column_types(schema, where)
    genes = _genes_from_metadata(meta.get(_KEY_GENES), where)
    value_kind = meta.get(_KEY_VALUE_KIND, b"counts").decode(errors="replace")
    if value_kind not in VALUE_KINDS:
        msg = (f"{where}: unknown value kind {value_kind!r} (expected one of "
               f"{', '.join(VALUE_KINDS)}).")
        raise FormatError(msg, code="invalid_arrow")
    kind: ValueKind = value_kind  # checked just above
    return genes, kind, meta.get(_KEY_SOURCE, b"").decode(errors="replace")[:500]


_VALUE_ARROW_TYPES = (pa.float32(), pa.float64(), pa.int32())


def _check_column_types(schema: pa.Schema, where: str) -> None:
    """The column types of docs/format.md, before any buffer is looked at."""
    cell = schema.field("cell").type
    if cell != pa.string():
        msg = f"{where}: column 'cell' must be utf8 (cell ids as text), got {cell}."
        raise FormatError(msg, code="invalid_arrow")
    types = {name: schema.field(name).type for name in ("indices", "values")}
    for name, t in types.items():
        if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
            msg = f"{where}: column {name!r} must be a list column, got {t}."
            raise FormatError(msg, code="invalid_arrow")
    if pa.types.is_large_list(types["indices"]) != pa.types.is_large_list(types["values"]):
        msg = (f"{where}: 'indices' ({types['indices']}) and 'values' ({types['values']}) must "
               "use the same list type (both list or both large_list).")
        raise FormatError(msg, code="invalid_arrow")
    if types["indices"].value_type != pa.int32():
        msg = f"{where}: 'indices' must hold int32, got {types['indices']}."
        raise FormatError(msg, code="invalid_arrow")
    if types["values"].value_type not in _VALUE_ARROW_TYPES:
        msg = (f"{where}: 'values' must hold float32, float64 or int32, got "
               f"{types['values']}; cast the values before writing.")
        raise FormatError(msg, code="invalid_arrow")


def _genes_from_metadata(raw: bytes | None, where: str) -> list[str]:
    """``scbridge.genes``: a JSON list of strings (nesting or other types refused)."""
    problem = "is missing" if raw is None else ""
    genes: Any = None
    if raw is not None:
        try:
            genes = json.loads(raw)
        except RecursionError:
            problem = "is nested too deeply to be a list of gene ids"
        except ValueError:
            problem = "is not valid JSON"
        else:
            if not isinstance(genes, list) or not all(isinstance(g, str) for g in genes):
                problem = "must be a JSON list of strings (one gene id per column)"
    if problem:
        msg = f"{where}: schema metadata 'scbridge.genes' {problem}."
        raise FormatError(msg, code="invalid_arrow")
    return list(genes)


def list_parts(column: pa.Array, where: str) -> tuple[NDArray[Any], NDArray[Any]]:
    """(indptr, flat values) of one list column, as views where the layout allows."""
    if column.null_count:
        msg = f"{where}: list column has {column.null_count} null rows; use empty lists instead."
        raise FormatError(msg, code="invalid_arrow")
    offsets = column.offsets.to_numpy(zero_copy_only=True)
    first, last = int(offsets[0]), int(offsets[-1])
    child = column.values.slice(first, last - first)
    if child.null_count:
        msg = f"{where}: {child.null_count} null entries inside the lists."
        raise FormatError(msg, code="invalid_arrow")
    flat = child.to_numpy(zero_copy_only=True)
    indptr = offsets if first == 0 else offsets - first
    return indptr, flat


def _batch_to_csr(
    batch: pa.RecordBatch, n_genes: int, where: str
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    try:
        # Offsets checked against the buffers (a damaged file could point past them) before
        # numpy views are taken on them.
        batch.validate(full=True)
    except pa.ArrowException as exc:
        msg = f"{where}: a record batch is damaged ({exc}). Re-create the file."
        raise FormatError(msg, code="invalid_arrow") from None
    indptr, indices = list_parts(batch.column("indices"), where)
    value_ptr, data = list_parts(batch.column("values"), where)
    if len(value_ptr) != len(indptr) or not np.array_equal(value_ptr, indptr):
        msg = f"{where}: 'indices' and 'values' lists differ in length for some cells."
        raise FormatError(msg, code="invalid_arrow")
    return indptr, indices, data


def _obs_from_batches(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table | None:
    names = [n for n in schema.names if n not in CORE_COLUMNS]
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
    genes, value_kind, source = check_schema(schema, where)
    n_genes = len(genes)
    parts = [_batch_to_csr(b, n_genes, where) for b in batches]
    if len(parts) == 1:
        indptr, indices, data = parts[0]
    elif parts:
        logger.info("%s: joining %d record batches into one CSR (a copy)", where, len(parts))
        indices = np.concatenate([p[1] for p in parts])
        data = np.concatenate([p[2] for p in parts])
        ends = np.cumsum([int(p[0][-1]) for p in parts])
        dtype = np.int64 if ends[-1] > INT32_MAX else parts[0][0].dtype
        # Cast before adding: numpy 1.x keeps an int32 array int32 when the scalar added
        # fits 32 bits, so the sum would wrap past 2**31 values.
        pieces = [parts[0][0].astype(dtype)]
        pieces += [p[0][1:].astype(dtype) + ends[i] for i, p in enumerate(parts[1:])]
        indptr = np.concatenate(pieces)
    else:
        indptr, indices, data = np.zeros(1, np.int32), np.zeros(0, np.int32), np.zeros(0)
    n_cells = len(indptr) - 1
    X = csr_view(data, indices, indptr, (n_cells, n_genes))
    cells = (
        np.concatenate([b.column("cell").to_numpy(zero_copy_only=False) for b in batches])
        if batches else np.empty(0, dtype=object)
    )
    matrix = CellMatrix(
        X,
        cells,
        genes,
        obs=_obs_from_batches(batches, schema),
        value_kind=value_kind,
        source=source or f"Arrow CSR {where}",
        keepalive=keepalive,
        validate=False,
    )
    if validate:  # messages name the file, and the source recorded in it
        matrix.validate(where=f"{where} ({source})" if source else where)
    return matrix



"""Request bodies -> a validated :class:`~bridge.CellMatrix`, or an :class:`ApiError` saying
exactly what to change.

Checks run in an order that never lets a bad body reach code that could misbehave on it:
types and sizes first, then the CSR structure (shape, indptr, indices), then ids and values.
Arrow bodies are fully validated by Arrow (offsets inside buffers) before any array is viewed.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from .._errors import FormatError, InputError
from ..matrix import CellMatrix, csr_view
from ._problems import ApiError

__all__ = ["Parsed", "parse_arrow", "parse_json"]

_WHERE = "the request"
_CHUNK_HINT = ("split the cells into requests of at most {n} cells "
               "(bridge.annotate(..., chunk_size={n}))")


@dataclass
class Parsed:
    """A decoded request: the matrix plus the JSON body's other fields."""

    matrix: CellMatrix
    fields: dict[str, Any]


def _invalid(code: str, message: str, hint: str, status: int = 422) -> ApiError:
    return ApiError(status, code, message, hint)


def too_many_cells(n_cells: int, max_cells: int) -> ApiError:
    return ApiError(413, "too_many_cells",
                    f"the request holds {n_cells:,} cells; this server accepts at most "
                    f"{max_cells:,} per request.", _CHUNK_HINT.format(n=max_cells))


# -- JSON --------------------------------------------------------------------------------------
def _int_array(values: Any, name: str) -> np.ndarray:
    """A 1-D int64 array from a JSON list of integers, or a 422 naming the field."""
    hint = f"'matrix.{name}' must be a flat list of non-negative integers"
    if not isinstance(values, list):
        raise _invalid("invalid_payload", f"'matrix.{name}' must be a list, got "
                       f"{type(values).__name__}.", hint)
    if not values:
        return np.zeros(0, dtype=np.int64)
    try:
        arr = np.array(values)
    except (ValueError, OverflowError, TypeError):
        arr = np.zeros(0, dtype=object)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise _invalid("invalid_payload", f"'matrix.{name}' holds something other than integers.",
                       hint)
    return arr.astype(np.int64, copy=False)


def _data_array(values: Any) -> np.ndarray:
    hint = "'matrix.data' must be a flat list of numbers (the non-zero expression values)"
    if not isinstance(values, list):
        raise _invalid("invalid_payload", "'matrix.data' must be a list.", hint)
    if not values:
        return np.zeros(0, dtype=np.float64)
    try:
        arr = np.array(values)
    except (ValueError, OverflowError, TypeError):
        arr = np.zeros(0, dtype=object)
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        raise _invalid("invalid_payload", "'matrix.data' holds something other than numbers.",
                       hint)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
            arr = arr.astype(np.float64)
        else:
            arr = arr.astype(np.int32)
    return arr


def _shape(shape: Any) -> tuple[int, int]:
    ok = (isinstance(shape, list) and len(shape) == 2
          and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape))
    if not ok:
        raise _invalid("invalid_shape", f"'matrix.shape' must be [n_cells, n_genes], got "
                       f"{json.dumps(shape)[:80]}.", "send two non-negative integers")
    return int(shape[0]), int(shape[1])


def _genes(genes: Any) -> list[str]:
    if not isinstance(genes, list) or not all(isinstance(g, str) for g in genes):
        raise _invalid("invalid_payload", "'genes' must be a list of gene id strings.",
                       "send the gene ids of the matrix columns, in column order")
    return genes


def parse_json(body: bytes | bytearray, *, max_cells: int) -> Parsed:
    """Decode and validate the tutorial's JSON body."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON ({exc}).",
                       "send the payload built by sparse_to_payload() as JSON") from None
    if not isinstance(payload, dict):
        raise _invalid("invalid_payload", "the JSON body must be an object.",
                       "send {\"genes\": [...], \"matrix\": {...}, \"model\": ...}")
    missing = [k for k in ("genes", "matrix") if k not in payload]
    if missing:
        raise _invalid("invalid_payload", f"the JSON body lacks {', '.join(missing)}.",
                       "send {\"genes\": [...], \"matrix\": {\"indptr\", \"indices\", \"data\", "
                       "\"shape\"}, \"model\": ..., \"reference_atlas\": ...}")
    m = payload["matrix"]
    if not isinstance(m, dict) or any(k not in m for k in ("indptr", "indices", "data", "shape")):
        raise _invalid("invalid_payload",
                       "'matrix' must be an object with indptr, indices, data and shape.",
                       "build it with sparse_to_payload(X, genes) from a cells x genes CSR matrix")
    n_cells, n_genes = _shape(m["shape"])
    if n_cells > max_cells:
        raise too_many_cells(n_cells, max_cells)
    genes = _genes(payload["genes"])
    indptr = _int_array(m["indptr"], "indptr")
    indices = _int_array(m["indices"], "indices")
    data = _data_array(m["data"])
    cells = np.array([str(i) for i in range(n_cells)], dtype=object)
    matrix = _build(indptr, indices, data, (n_cells, n_genes), genes, cells, value_kind=None)
    fields = {k: v for k, v in payload.items() if k not in ("genes", "matrix")}
    return Parsed(matrix, fields)


# -- structure shared by both transports ----------------------------------------------------
def check_structure(indptr: np.ndarray, indices: np.ndarray, n_data: int,
                    shape: tuple[int, int], n_gene_ids: int) -> None:
    """The CSR checks, each failure with its own code."""
    n_cells, n_genes = shape
    if n_cells == 0 or n_genes == 0:
        raise _invalid("invalid_shape", f"the matrix has {n_cells} cells and {n_genes} genes.",
                       "send at least one cell and one gene")
    if n_gene_ids != n_genes:
        raise _invalid("genes_mismatch",
                       f"{n_gene_ids} gene ids for a matrix of {n_genes} columns.",
                       "send exactly one gene id per matrix column, in column order")
    if len(indptr) != n_cells + 1:
        raise _invalid("indptr_length",
                       f"'indptr' has {len(indptr)} entries but shape {list(shape)} needs "
                       f"n_cells + 1 = {n_cells + 1}.",
                       "indptr must hold one offset per cell plus a final one (scipy CSR indptr)")
    if len(indices) != n_data:
        raise _invalid("shape_mismatch",
                       f"{len(indices)} indices but {n_data} values.",
                       "indices and data must have the same length (one gene index per value)")
    # Bounds first, so that the differences below cannot overflow.
    if indptr.min() < 0 or indptr.max() > max(n_data, 0):
        raise _invalid("indptr_not_monotone",
                       f"'indptr' values must lie in [0, {n_data}] (the number of values).",
                       "send the CSR indptr of a cells x genes matrix (X.indptr of a csr_matrix)")
    steps = np.diff(indptr)
    if indptr[0] != 0 or (steps.size and steps.min() < 0):
        where = 0 if indptr[0] != 0 else int(np.argmax(steps < 0))
        raise _invalid("indptr_not_monotone",
                       f"'indptr' must start at 0 and never decrease (problem at cell {where}).",
                       "send the CSR indptr of a cells x genes matrix (X.indptr of a csr_matrix)")
    if indptr[-1] != n_data:
        raise _invalid("shape_mismatch",
                       f"'indptr' ends at {int(indptr[-1])} but there are {n_data} values.",
                       "indptr[-1] must equal the number of non-zero values")
    if indices.size and (indices.min() < 0 or indices.max() >= n_genes):
        bad = int(indices[(indices < 0) | (indices >= n_genes)][0])
        raise _invalid("index_out_of_range",
                       f"gene index {bad} is out of range for {n_genes} genes.",
                       "indices are 0-based column numbers in [0, n_genes); check the matrix "
                       "is cells x genes, not genes x cells")


def _sorted_within_rows(indptr: np.ndarray, indices: np.ndarray) -> bool:
    """Whether gene indices increase strictly within every cell.

    Indices are already known to lie in [0, n_genes), so int32 differences cannot overflow
    (cheaper than the general check, which widens to int64).
    """
    n = len(indices)
    if n < 2:
        return True
    row_start = np.zeros(n, dtype=bool)
    starts = indptr[1:-1]
    row_start[starts[starts < n]] = True
    step = 1 << 22
    for lo in range(1, n, step):
        hi = min(lo + step, n)
        if np.any((indices[lo:hi] <= indices[lo - 1:hi - 1]) & ~row_start[lo:hi]):
            return False
    return True


def _whole_numbers(data: np.ndarray) -> bool:
    if data.dtype.kind in "iu":
        return True
    step = 1 << 22
    return all(np.array_equal(data[i:i + step], np.rint(data[i:i + step]))
               for i in range(0, len(data), step))


def _build(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, shape: tuple[int, int],
           genes: list[str], cells: np.ndarray, *, value_kind: str | None,
           source: str = _WHERE) -> CellMatrix:
    """A CellMatrix from checked parts: structure here, ids and values by bridge._validate."""
    from .. import _validate as check

    check_structure(indptr, indices, len(data), shape, len(genes))
    offset_type = np.int32 if len(data) < np.iinfo(np.int32).max else np.int64
    indptr = indptr.astype(offset_type, copy=False)
    indices = indices.astype(np.int32, copy=False)
    hint = "fix the data as the message says and resend"
    try:
        check.check_ids(cells, what="cell", where=source)
    except InputError as exc:
        raise _invalid("invalid_cells", str(exc), hint) from None
    try:
        check.check_ids(genes, what="gene", where=source)
    except InputError as exc:
        raise _invalid("invalid_genes", str(exc), hint) from None
    if value_kind is None:  # JSON says nothing: whole numbers are counts
        value_kind = "counts" if data.dtype.kind == "f" and _whole_numbers(data) else "lognorm"
        value_kind = "counts" if data.dtype.kind in "iu" else value_kind
    X = csr_view(data, indices, indptr, shape)
    if not _sorted_within_rows(indptr, indices):
        X = check.sorted_csr(X)
        if not _sorted_within_rows(X.indptr, X.indices):  # still not strict: repeats
            raise _invalid("duplicate_indices", "a cell lists the same gene index twice.",
                           "send each gene at most once per cell (sum duplicates first, e.g. "
                           "X.sum_duplicates() in scipy)")
    X.has_sorted_indices = True
    try:
        check.check_values(X.data, value_kind=value_kind, where=source, indptr=X.indptr,
                           cells=cells)  # type: ignore[arg-type]
    except InputError as exc:
        code = "non_finite_values" if "non-finite" in str(exc) else "invalid_values"
        raise _invalid(code, str(exc), "send finite, non-negative expression values (counts "
                       "or log-normalised); remove or impute NaN / Inf") from None
    return CellMatrix(X, cells, genes, value_kind=value_kind,  # type: ignore[arg-type]
                      source=source, validate=False)


# -- Arrow -------------------------------------------------------------------------------------
def _flatbuffer_field(buf: bytes, table: int, index: int) -> int:
    """Offset of field ``index`` within a flatbuffer table (0 when absent)."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    size = struct.unpack_from("<H", buf, vtable)[0]
    at = vtable + 4 + 2 * index
    return struct.unpack_from("<H", buf, at)[0] if at + 2 <= vtable + size else 0


def _is_compressed(metadata: pa.Buffer) -> bool:
    """Whether an IPC record batch / dictionary message declares body compression.

    Reads the Message flatbuffer (Arrow format/Message.fbs): Message.header_type (field 1),
    Message.header (2) -> RecordBatch.compression (3), or DictionaryBatch.data (1) -> the
    RecordBatch.  Compressed bodies are refused: a few MB of zstd can claim many GB, and Arrow
    would allocate them before any limit here could look.
    """
    buf = metadata.to_pybytes()
    root = struct.unpack_from("<I", buf, 0)[0]
    kind_at = _flatbuffer_field(buf, root, 1)
    kind = buf[root + kind_at] if kind_at else 0
    header_at = _flatbuffer_field(buf, root, 2)
    if not header_at or kind not in (2, 3):  # 2 DictionaryBatch, 3 RecordBatch
        return False
    header = root + header_at + struct.unpack_from("<I", buf, root + header_at)[0]
    if kind == 2:
        data_at = _flatbuffer_field(buf, header, 1)
        if not data_at:
            return False
        header = header + data_at + struct.unpack_from("<I", buf, header + data_at)[0]
    return _flatbuffer_field(buf, header, 3) != 0


def _refuse_compressed(body: bytes | bytearray) -> None:
    try:
        for message in pa.ipc.MessageReader.open_stream(pa.BufferReader(body)):
            if message.type in ("record batch", "dictionary") and _is_compressed(
                    message.metadata):
                raise ApiError(400, "compressed_arrow",
                               "compressed Arrow IPC bodies (LZ4 / ZSTD) are not accepted.",
                               "write the stream without compression (the default of "
                               "bridge.write / pyarrow.ipc.new_stream)")
    except (pa.ArrowInvalid, OSError, struct.error, IndexError) as exc:
        raise ApiError(400, "invalid_arrow", f"the body is not an Arrow IPC stream ({exc}).",
                       "send an Arrow CSR IPC stream as written by bridge.write(matrix, "
                       "'x.arrows')") from None


def parse_arrow(body: bytes | bytearray, *, max_cells: int,
                label_column: str | None = None) -> Parsed:
    """Decode and validate an Arrow CSR stream (or file) body."""
    from ..io.arrow import _check_schema, _list_parts

    hint = "send an Arrow CSR IPC stream as written by bridge.write(matrix, 'x.arrows')"
    _refuse_compressed(body)
    try:
        reader = pa.ipc.open_stream(pa.BufferReader(body))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ApiError(400, "invalid_arrow", f"the body is not an Arrow IPC stream ({exc}).",
                       hint) from None
    schema = reader.schema
    try:
        genes, value_kind, _source = _check_schema(schema, _WHERE)
    except FormatError as exc:
        raise ApiError(400, "invalid_arrow", str(exc), hint) from None
    if not isinstance(genes, list) or not all(isinstance(g, str) for g in genes):
        raise ApiError(400, "invalid_arrow", "schema metadata 'scbridge.genes' must be a JSON "
                       "list of strings.", hint)
    batches: list[pa.RecordBatch] = []
    n_cells = 0
    try:
        for batch in reader:
            n_cells += batch.num_rows
            if n_cells > max_cells:
                raise too_many_cells(n_cells, max_cells)
            # Offsets and lengths are checked against the buffers before numpy sees them.
            batch.validate(full=True)
            batches.append(batch)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ApiError(400, "invalid_arrow", f"the Arrow stream is corrupt or truncated ({exc}).",
                       hint) from None
    table = pa.Table.from_batches(batches, schema=schema).combine_chunks()
    if table.num_rows == 0:
        raise _invalid("invalid_shape", "the Arrow stream holds no cells.",
                       "send at least one cell")
    try:
        indptr, indices = _list_parts(table.column("indices").chunk(0), _WHERE)
        value_ptr, data = _list_parts(table.column("values").chunk(0), _WHERE)
    except (FormatError, pa.ArrowException) as exc:
        raise ApiError(400, "invalid_arrow", str(exc), hint) from None
    if not np.array_equal(indptr, value_ptr):
        raise _invalid("shape_mismatch", "'indices' and 'values' lists differ in length for "
                       "some cells.", "each cell needs one value per gene index")
    cell_col = table.column("cell")
    if cell_col.null_count:
        raise _invalid("invalid_cells", "some cell ids are null.", "give every cell a unique id")
    cells = np.asarray(cell_col.to_pylist(), dtype=object)
    matrix = _build(indptr, indices, data,
                    (len(cells), len(genes)), genes, cells, value_kind=value_kind)
    fields: dict[str, Any] = {}
    if label_column is not None:
        if label_column not in table.column_names:
            raise _invalid("invalid_payload", f"the Arrow stream has no {label_column!r} column.",
                           f"add a utf8 column {label_column!r} with one label per cell")
        fields["labels"] = table.column(label_column).to_pylist()
    return Parsed(matrix, fields)


def check_value_kind(value: Any) -> str | None:
    if value is None:
        return None
    if value not in ("counts", "lognorm"):
        raise InputError(f"value_kind must be 'counts' or 'lognorm', got {value!r}")
    return value

"""The bytes on the wire of the Cell Atlas HTTP contract, both directions, both transports.

Framework-free (numpy / pyarrow only): the server decodes requests and encodes replies with
it, the remote engine does the opposite, and neither imports the other.

JSON (the public tutorial's body, byte for byte what ``requests.post(url, json=payload)``
sends for ``sparse_to_payload(X, genes)`` plus ``model`` and ``reference_atlas``)::

    {"genes": [...], "matrix": {"indptr": [...], "indices": [...], "data": [...],
     "shape": [n_cells, n_genes]}, "model": "...", "reference_atlas": "...", "tissue": "..."}

reply ``{"calls": [{"cell", "label", "ontology_id", "confidence", "alternates", "markers",
...}], "metadata": {...}}`` (one record per cell, request order; ``metadata`` is the Calls
table's provenance).

Arrow: request body = an Arrow CSR IPC stream (docs/format.md), ``model``,
``reference_atlas`` and ``tissue`` as query parameters; reply = the Calls table as an IPC
stream.

Decoding checks a body in an order that never lets it reach code that could misbehave on
it: types and sizes first, then the CSR structure, then ids and values.  Every refusal is a
:class:`~bridge.BridgeError` with a specific code (``invalid_json``, ``invalid_payload``,
``too_many_cells``, ``indptr_length``, ...), which the server maps to an HTTP status.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from .. import _validate as check
from .._arrow_csr import check_schema, list_parts, stream_buffer
from .._errors import CapacityError, FormatError, InputError, RemoteError
from ..matrix import CellMatrix, csr_view
from ..numerics import detect_value_kind
from .calls import calls_from_records, calls_to_records

if TYPE_CHECKING:
    import scipy.sparse as sp

__all__ = [
    "ARROW_MEDIA_TYPE",
    "JSON_MEDIA_TYPE",
    "Request",
    "arrow_bytes",
    "calls_from_arrow",
    "calls_from_json",
    "calls_json_body",
    "decode_arrow_request",
    "decode_json_request",
    "json_body",
    "json_reply",
    "matrix_arrow_body",
    "matrix_arrow_buffer",
    "metadata_from_json",
    "metadata_to_json",
    "sparse_to_payload",
    "table_from_arrow",
    "wants_arrow",
]

ARROW_MEDIA_TYPE = "application/vnd.apache.arrow.stream"
JSON_MEDIA_TYPE = "application/json"
_WHERE = "the request"


# -- requests: encoding ----------------------------------------------------------------------
def sparse_to_payload(X: sp.csr_matrix, genes: Any) -> dict[str, Any]:
    """The public tutorial's ``sparse_to_payload``: a cells x genes CSR as a JSON-ready dict."""
    return {
        "genes": list(genes),
        "matrix": {
            "indptr": X.indptr.tolist(),
            "indices": X.indices.tolist(),
            "data": X.data.tolist(),
            "shape": list(X.shape),
        },
    }


def json_body(matrix: CellMatrix, *, model: str | None, atlas: str | None,
              **fields: Any) -> bytes:
    """The JSON request body, the same bytes ``requests.post(json=payload)`` would send.

    requests serialises with ``json.dumps(payload, allow_nan=False)`` and UTF-8, so non-finite
    values are refused here exactly as they would be there.  ``fields`` are further optional
    members of the body (``tissue``, ``labels``, ...); ``None`` values are left out.
    """
    payload = sparse_to_payload(matrix.X, [str(g) for g in matrix.genes])
    payload["model"] = model
    payload["reference_atlas"] = atlas
    payload.update({k: v for k, v in fields.items() if v is not None})
    try:
        return json.dumps(payload, allow_nan=False).encode("utf-8")
    except ValueError as exc:
        msg = f"the matrix cannot be sent as JSON ({exc}); remove NaN / Inf values."
        raise InputError(msg, code="non_finite_values") from None


def matrix_arrow_buffer(matrix: CellMatrix, labels: list[str | None] | None = None
                        ) -> pa.Buffer:
    """An Arrow CSR IPC stream of ``matrix``: cell ids, gene ids, values, and a ``label``
    column when ``labels`` are given.  The caller's other cell metadata stays behind."""
    obs = None if labels is None else pa.table({"label": pa.array(labels, pa.string())})
    bare = CellMatrix(matrix.X, matrix.cells, matrix.genes, obs=obs,
                      value_kind=matrix.value_kind, source=matrix.source, validate=False)
    return stream_buffer(bare)


def matrix_arrow_body(matrix: CellMatrix) -> bytes:
    """:func:`matrix_arrow_buffer` as ``bytes``."""
    return matrix_arrow_buffer(matrix).to_pybytes()


# -- requests: decoding ----------------------------------------------------------------------
@dataclass
class Request:
    """A decoded request: the validated matrix plus the body's other fields."""

    matrix: CellMatrix
    fields: dict[str, Any] = field(default_factory=dict)


def too_many_cells(n_cells: int, max_cells: int) -> CapacityError:
    return CapacityError(
        f"the request holds {n_cells:,} cells; this server accepts at most {max_cells:,} per "
        "request.", code="too_many_cells",
        hint=f"split the cells into requests of at most {max_cells} cells "
             f"(bridge.annotate(..., chunk_size={max_cells}))")


def _payload_error(message: str, hint: str) -> InputError:
    return InputError(message, code="invalid_payload", hint=hint)


def _int_array(values: Any, name: str) -> NDArray[Any]:
    """A 1-D int64 array from a JSON list of integers."""
    hint = f"'matrix.{name}' must be a flat list of non-negative integers"
    if not isinstance(values, list):
        raise _payload_error(f"'matrix.{name}' must be a list, got {type(values).__name__}.",
                             hint)
    if not values:
        return np.zeros(0, dtype=np.int64)
    try:
        arr = np.array(values)
    except (ValueError, OverflowError, TypeError):
        arr = np.zeros(0, dtype=object)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise _payload_error(f"'matrix.{name}' holds something other than integers.", hint)
    return arr.astype(np.int64, copy=False)


def _data_array(values: Any) -> NDArray[Any]:
    hint = "'matrix.data' must be a flat list of numbers (the non-zero expression values)"
    if not isinstance(values, list):
        raise _payload_error("'matrix.data' must be a list.", hint)
    if not values:
        return np.zeros(0, dtype=np.float64)
    try:
        arr = np.array(values)
    except (ValueError, OverflowError, TypeError):
        arr = np.zeros(0, dtype=object)
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        raise _payload_error("'matrix.data' holds something other than numbers.", hint)
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
        msg = f"'matrix.shape' must be [n_cells, n_genes], got {json.dumps(shape)[:80]}."
        raise InputError(msg, code="invalid_shape", hint="send two non-negative integers")
    return int(shape[0]), int(shape[1])


def _genes(genes: Any) -> list[str]:
    if not isinstance(genes, list) or not all(isinstance(g, str) for g in genes):
        raise _payload_error("'genes' must be a list of gene id strings.",
                             "send the gene ids of the matrix columns, in column order")
    return genes


def decode_json_request(body: bytes | bytearray, *, max_cells: int) -> Request:
    """Decode and validate the tutorial's JSON body."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"the body is not valid JSON ({exc}).", code="invalid_json",
                          hint="send the payload built by sparse_to_payload() as JSON") from None
    if not isinstance(payload, dict):
        raise _payload_error("the JSON body must be an object.",
                             'send {"genes": [...], "matrix": {...}, "model": ...}')
    missing = [k for k in ("genes", "matrix") if k not in payload]
    if missing:
        raise _payload_error(f"the JSON body lacks {', '.join(missing)}.",
                             'send {"genes": [...], "matrix": {"indptr", "indices", "data", '
                             '"shape"}, "model": ..., "reference_atlas": ...}')
    m = payload["matrix"]
    if not isinstance(m, dict) or any(k not in m for k in ("indptr", "indices", "data", "shape")):
        raise _payload_error("'matrix' must be an object with indptr, indices, data and shape.",
                             "build it with sparse_to_payload(X, genes) from a cells x genes "
                             "CSR matrix")
    n_cells, n_genes = _shape(m["shape"])
    if n_cells > max_cells:
        raise too_many_cells(n_cells, max_cells)
    genes = _genes(payload["genes"])
    indptr = _int_array(m["indptr"], "indptr")
    indices = _int_array(m["indices"], "indices")
    data = _data_array(m["data"])
    cells = np.array([str(i) for i in range(n_cells)], dtype=object)
    matrix = build_matrix(indptr, indices, data, (n_cells, n_genes), genes, cells,
                          value_kind=None)
    fields = {k: v for k, v in payload.items() if k not in ("genes", "matrix")}
    return Request(matrix, fields)


def build_matrix(indptr: NDArray[Any], indices: NDArray[Any], data: NDArray[Any],
                 shape: tuple[int, int], genes: list[str], cells: NDArray[Any], *,
                 value_kind: str | None, source: str = _WHERE) -> CellMatrix:
    """A validated :class:`CellMatrix` from the parts of a request (the checks of
    :mod:`bridge._validate`, each failure with its own code)."""
    n_cells, n_genes = shape
    if n_cells == 0 or n_genes == 0:
        msg = f"the matrix has {n_cells} cells and {n_genes} genes."
        raise InputError(msg, code="invalid_shape", hint="send at least one cell and one gene")
    if len(genes) != n_genes:
        msg = f"{len(genes)} gene ids for a matrix of {n_genes} columns."
        raise InputError(msg, code="genes_mismatch",
                         hint="send exactly one gene id per matrix column, in column order")
    check.check_csr_structure(indptr, indices, len(data), shape, where=source)
    offset_type = np.int32 if len(data) < check.INT32_MAX else np.int64
    indptr = indptr.astype(offset_type, copy=False)
    indices = indices.astype(np.int32, copy=False)
    check.check_ids(cells, what="cell", where=source)
    check.check_ids(genes, what="gene", where=source)
    if value_kind is None:  # JSON says nothing: judge the values
        value_kind = detect_value_kind(data)
    X = csr_view(data, indices, indptr, shape)
    if not check.indices_sorted(indptr, indices):
        X = check.sorted_csr(X)
        if not check.indices_sorted(X.indptr, X.indices):  # still not strict: repeats
            raise InputError("a cell lists the same gene index twice.", code="duplicate_indices",
                             hint="send each gene at most once per cell (sum duplicates first, "
                                  "e.g. X.sum_duplicates() in scipy)")
    X.has_sorted_indices = True
    check.check_values(X.data, value_kind=value_kind, where=source, indptr=X.indptr,
                       cells=cells)
    return CellMatrix(X, cells, genes, value_kind=value_kind,  # type: ignore[arg-type]
                      source=source, validate=False)


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


_ARROW_HINT = "send an Arrow CSR IPC stream as written by bridge.write(matrix, 'x.arrows')"


def _refuse_compressed(body: bytes | bytearray) -> None:
    try:
        for message in pa.ipc.MessageReader.open_stream(pa.BufferReader(body)):
            if message.type in ("record batch", "dictionary") and _is_compressed(
                    message.metadata):
                raise FormatError("compressed Arrow IPC bodies (LZ4 / ZSTD) are not accepted.",
                                  code="compressed_arrow",
                                  hint="write the stream without compression (the default of "
                                       "bridge.write / pyarrow.ipc.new_stream)")
    except (pa.ArrowInvalid, OSError, struct.error, IndexError) as exc:
        raise FormatError(f"the body is not an Arrow IPC stream ({exc}).", code="invalid_arrow",
                          hint=_ARROW_HINT) from None


def decode_arrow_request(body: bytes | bytearray, *, max_cells: int,
                         label_column: str | None = None) -> Request:
    """Decode and validate an Arrow CSR stream body (``label_column``: also read that
    column into ``fields["labels"]``)."""
    _refuse_compressed(body)
    try:
        reader = pa.ipc.open_stream(pa.BufferReader(body))
    except (pa.ArrowInvalid, OSError) as exc:
        raise FormatError(f"the body is not an Arrow IPC stream ({exc}).", code="invalid_arrow",
                          hint=_ARROW_HINT) from None
    schema = reader.schema
    genes, value_kind, _source = check_schema(schema, _WHERE)
    if not isinstance(genes, list) or not all(isinstance(g, str) for g in genes):
        raise FormatError("schema metadata 'scbridge.genes' must be a JSON list of strings.",
                          code="invalid_arrow", hint=_ARROW_HINT)
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
        raise FormatError(f"the Arrow stream is corrupt or truncated ({exc}).",
                          code="invalid_arrow", hint=_ARROW_HINT) from None
    table = pa.Table.from_batches(batches, schema=schema).combine_chunks()
    if table.num_rows == 0:
        raise InputError("the Arrow stream holds no cells.", code="invalid_shape",
                         hint="send at least one cell")
    try:
        indptr, indices = list_parts(table.column("indices").chunk(0), _WHERE)
        value_ptr, data = list_parts(table.column("values").chunk(0), _WHERE)
    except pa.ArrowException as exc:
        raise FormatError(str(exc), code="invalid_arrow", hint=_ARROW_HINT) from None
    if not np.array_equal(indptr, value_ptr):
        raise InputError("'indices' and 'values' lists differ in length for some cells.",
                         code="shape_mismatch", hint="each cell needs one value per gene index")
    cell_col = table.column("cell")
    if cell_col.null_count:
        raise InputError("some cell ids are null.", code="invalid_cells",
                         hint="give every cell a unique id")
    cells = np.asarray(cell_col.to_pylist(), dtype=object)
    matrix = build_matrix(indptr, indices, data, (len(cells), len(genes)), genes, cells,
                          value_kind=value_kind)
    fields: dict[str, Any] = {}
    if label_column is not None:
        if label_column not in table.column_names:
            raise _payload_error(f"the Arrow stream has no {label_column!r} column.",
                                 f"add a utf8 column {label_column!r} with one label per cell")
        fields["labels"] = table.column(label_column).to_pylist()
    return Request(matrix, fields)


# -- replies ---------------------------------------------------------------------------------
def arrow_bytes(table: pa.Table) -> bytes:
    """``table`` as an Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def metadata_to_json(schema: pa.Schema) -> dict[str, str]:
    """Schema metadata as a JSON object of strings (undecodable entries skipped)."""
    out: dict[str, str] = {}
    for key, value in (schema.metadata or {}).items():
        try:
            out[key.decode()] = value.decode()
        except UnicodeDecodeError:
            continue
    return out


def metadata_from_json(metadata: Any) -> dict[bytes, bytes]:
    if not isinstance(metadata, dict):
        return {}
    return {str(k).encode(): str(v).encode() for k, v in metadata.items()}


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def json_reply(body: Any) -> bytes:
    """Compact, strict JSON (NaN / Inf, which JSON cannot carry, become null)."""
    try:
        text = json.dumps(body, allow_nan=False, separators=(",", ":"))
    except ValueError:
        text = json.dumps(_finite(body), allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8")


def calls_json_body(table: pa.Table) -> bytes:
    """The JSON reply of the annotate endpoint for a Calls table (each call names its
    ``cell``: the row number as text for JSON requests, the cell id for Arrow ones)."""
    records = calls_to_records(table)
    cells = table.column("cell").to_pylist()
    calls = [{"cell": c, **r} for c, r in zip(cells, records, strict=True)]
    return json_reply({"calls": calls, "metadata": metadata_to_json(table.schema)})


def calls_from_json(body: Any, cells: Any) -> pa.Table:
    """A Calls table from the JSON reply (``cells`` are the ids of the cells that were sent)."""
    if not isinstance(body, dict) or not isinstance(body.get("calls"), list):
        msg = "the service's reply has no 'calls' list; is the endpoint a Cell Atlas annotate URL?"
        raise RemoteError(msg, code="remote_reply")
    try:
        table = calls_from_records(body["calls"], [str(c) for c in cells])
    except (KeyError, TypeError, ValueError, pa.ArrowException) as exc:
        msg = f"the service's 'calls' do not follow the Calls contract ({exc})."
        raise RemoteError(msg, code="remote_reply") from None
    return table.replace_schema_metadata(metadata_from_json(body.get("metadata")))


def table_from_arrow(body: bytes) -> pa.Table:
    """A table from an Arrow IPC stream reply."""
    try:
        with pa.ipc.open_stream(pa.BufferReader(body)) as reader:
            return reader.read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        msg = f"the service's Arrow reply is not a readable IPC stream ({exc})."
        raise RemoteError(msg, code="remote_reply") from None


calls_from_arrow = table_from_arrow


def wants_arrow(accept: str | None, content_type: str | None) -> bool:
    """Reply in Arrow when asked by ``Accept``, or when the request was Arrow and ``Accept``
    names no preference."""
    accept = (accept or "").lower()
    if ARROW_MEDIA_TYPE in accept:
        return True
    if JSON_MEDIA_TYPE in accept:
        return False
    return (content_type or "").split(";")[0].strip().lower() == ARROW_MEDIA_TYPE

"""The bytes on the wire of the Cell Atlas HTTP contract, shared by the server and the client.

Pure numpy / pyarrow (no web framework), so the remote client imports it without FastAPI.

JSON (the public tutorial's body, byte for byte what ``requests.post(url, json=payload)``
sends for ``sparse_to_payload(X, genes)`` plus ``model`` and ``reference_atlas``)::

    {"genes": [...], "matrix": {"indptr": [...], "indices": [...], "data": [...],
     "shape": [n_cells, n_genes]}, "model": "...", "reference_atlas": "..."}

reply ``{"calls": [{"label", "ontology_id", "confidence", "alternates", "markers", ...}],
"metadata": {...}}`` (one record per cell, request order; ``metadata`` is the Calls table's
provenance).

Arrow: request body = an Arrow CSR IPC stream (docs/format.md), ``model`` and
``reference_atlas`` as query parameters; reply = the Calls table as an IPC stream.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    import scipy.sparse as sp

    from ..matrix import CellMatrix

__all__ = [
    "ARROW_MEDIA_TYPE",
    "JSON_MEDIA_TYPE",
    "arrow_bytes",
    "body_chunks",
    "calls_from_arrow",
    "calls_from_json",
    "calls_json_body",
    "json_body",
    "json_reply",
    "matrix_arrow_body",
    "matrix_arrow_buffer",
    "metadata_from_json",
    "metadata_to_json",
    "sparse_to_payload",
    "wants_arrow",
]

ARROW_MEDIA_TYPE = "application/vnd.apache.arrow.stream"
JSON_MEDIA_TYPE = "application/json"


# -- requests ----------------------------------------------------------------------------------
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


def json_body(matrix: CellMatrix, *, model: str | None, atlas: str | None) -> bytes:
    """The JSON request body, the same bytes ``requests.post(json=payload)`` would send.

    requests serialises with ``json.dumps(payload, allow_nan=False)`` and UTF-8, so non-finite
    values are refused here exactly as they would be there.
    """
    payload = sparse_to_payload(matrix.X, [str(g) for g in matrix.genes])
    payload["model"] = model
    payload["reference_atlas"] = atlas
    return json.dumps(payload, allow_nan=False).encode("utf-8")


def matrix_arrow_buffer(matrix: CellMatrix) -> pa.Buffer:
    """An Arrow CSR IPC stream of ``matrix`` (cell ids, gene ids, values; no cell metadata).

    Returned as the Arrow buffer itself (it supports the buffer protocol): no copy into bytes.
    """
    from ..io.arrow import write_arrow
    from ..matrix import CellMatrix

    # Only the matrix travels: the caller's per-cell metadata stays on the caller's machine.
    bare = CellMatrix(matrix.X, matrix.cells, matrix.genes, value_kind=matrix.value_kind,
                      source=matrix.source, validate=False)
    sink = pa.BufferOutputStream()
    write_arrow(bare, sink, stream=True)
    return sink.getvalue()


def matrix_arrow_body(matrix: CellMatrix) -> bytes:
    """:func:`matrix_arrow_buffer` as ``bytes``."""
    return matrix_arrow_buffer(matrix).to_pybytes()


def body_chunks(body: bytes | pa.Buffer, size: int = 1 << 20) -> Iterator[memoryview]:
    """``body`` as memoryview slices, for streaming uploads.

    httpcore sends a ``bytes`` body with ``while buf: n = sock.send(buf); buf = buf[n:]``,
    which copies the rest of the body on every partial send: quadratic, ~80 MB/s for a
    240 MB body on loopback.  Slices of at most 1 MiB keep each copy small (~2 GB/s).
    """
    view = memoryview(body).cast("B")
    for start in range(0, len(view), size):
        yield view[start:start + size]


# -- replies -----------------------------------------------------------------------------------
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
    """The JSON reply of the annotate endpoint for a Calls table."""
    from ..calls import calls_to_records

    records = calls_to_records(table)
    return json_reply({"calls": records, "metadata": metadata_to_json(table.schema)})


def calls_from_json(body: Any, cells: Any) -> pa.Table:
    """A Calls table from the JSON reply (``cells`` are the ids of the cells that were sent)."""
    from .._errors import RemoteError
    from ..calls import calls_from_records

    if not isinstance(body, dict) or not isinstance(body.get("calls"), list):
        msg = "the service's reply has no 'calls' list; is the endpoint a Cell Atlas annotate URL?"
        raise RemoteError(msg)
    try:
        table = calls_from_records(body["calls"], [str(c) for c in cells])
    except (KeyError, TypeError, ValueError, pa.ArrowException) as exc:
        msg = f"the service's 'calls' do not follow the Calls contract ({exc})."
        raise RemoteError(msg) from None
    return table.replace_schema_metadata(metadata_from_json(body.get("metadata")))


def calls_from_arrow(body: bytes) -> pa.Table:
    """A table from an Arrow IPC stream reply."""
    from .._errors import RemoteError

    try:
        with pa.ipc.open_stream(pa.BufferReader(body)) as reader:
            return reader.read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        msg = f"the service's Arrow reply is not a readable IPC stream ({exc})."
        raise RemoteError(msg) from None


def wants_arrow(accept: str | None, content_type: str | None) -> bool:
    """Reply in Arrow when asked by ``Accept``, or when the request was Arrow and ``Accept``
    names no preference."""
    accept = (accept or "").lower()
    if ARROW_MEDIA_TYPE in accept:
        return True
    if JSON_MEDIA_TYPE in accept:
        return False
    return (content_type or "").split(";")[0].strip().lower() == ARROW_MEDIA_TYPE

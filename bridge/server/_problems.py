"""Errors as the service reports them: ``{"error": {"code", "message", "hint", "request_id"}}``.

Every refusal is an :class:`ApiError` with an HTTP status, a stable machine-readable ``code``,
a message saying what was wrong and a hint saying what to change.  scbridge's own exceptions
carry their code (:mod:`bridge._errors`); :data:`STATUS` is the one table from code to HTTP
status, with a default hint per code.  Failures of the server itself (R, a missing
dependency) are 5xx: the client did nothing wrong.  Anything else is a 500 whose details stay
in the log.
"""

from __future__ import annotations

import json

from .. import _errors

__all__ = ["STATUS", "ApiError", "error_body", "from_bridge_error"]


class ApiError(Exception):
    """A request the service refuses."""

    def __init__(self, status: int, code: str, message: str, hint: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint
        self.headers = headers or {}


def error_body(code: str, message: str, hint: str, request_id: str | None) -> bytes:
    body = {"error": {"code": code, "message": message, "hint": hint, "request_id": request_id}}
    return json.dumps(body).encode("utf-8")


_FIX = "fix the data as the message says and resend"
_CSR = "send the CSR of a cells x genes matrix (X.indptr, X.indices, X.data of a csr_matrix)"

#: Error code (or family, see :data:`bridge._errors.CODES`) -> (HTTP status, default hint).
STATUS: dict[str, tuple[int, str]] = {
    # the request's data
    "invalid_input": (422, _FIX),
    "invalid_parameter": (422, "set the parameter within the documented range"),
    "unknown_parameter": (422, "see /openapi.json for the accepted fields"),
    "unknown_tissue": (422, "send a tissue name, synonym or UBERON id the message lists, "
                            "'auto', 'all' or 'unknown'"),
    "invalid_payload": (422, "send the body the documentation describes (/openapi.json)"),
    "invalid_shape": (422, "send at least one cell and one gene"),
    "genes_mismatch": (422, "send exactly one gene id per matrix column, in column order"),
    "indptr_length": (422, "indptr must hold one offset per cell plus a final one "
                           "(scipy CSR indptr)"),
    "indptr_not_monotone": (422, _CSR),
    "shape_mismatch": (422, "indices and data must have the same length (one gene index per "
                            "value), and indptr must end at their length"),
    "index_out_of_range": (422, "indices are 0-based column numbers in [0, n_genes); check the "
                                "matrix is cells x genes, not genes x cells"),
    "duplicate_indices": (422, "send each gene at most once per cell (sum duplicates first)"),
    "invalid_cells": (422, _FIX),
    "invalid_genes": (422, _FIX),
    "non_finite_values": (422, "send finite, non-negative expression values (counts or "
                               "log-normalised); remove or impute NaN / Inf"),
    "invalid_values": (422, "send finite, non-negative expression values (counts or "
                            "log-normalised)"),
    "non_integer_counts": (422, "send raw counts, or declare the values log-normalised"),
    "empty_cells": (422, _FIX),
    "gene_ids": (422, "send gene symbols (or Ensembl ids) of the organism the model was built "
                      "for, in column order"),
    "invalid_labels": (422, "send one label per cell (null for unlabelled cells), with at "
                            "least two labels of min_cells cells or more"),
    "too_many_labels": (422, "rank coarser labels or raise min_cells"),
    "same_file": (422, "choose an output that is not an input"),
    "too_large": (413, "send fewer cells per request"),
    "too_many_cells": (413, "send fewer cells per request (bridge.annotate(..., chunk_size=N))"),
    # the body's format
    "invalid_format": (400, "send a body in the documented format"),
    "invalid_json": (400, "send the payload built by sparse_to_payload() as JSON"),
    "invalid_arrow": (400, "send an Arrow CSR IPC stream as written by bridge.write(matrix, "
                           "'x.arrows')"),
    "compressed_arrow": (400, "write the stream without compression"),
    "unsupported_version": (400, "write the body with a matching scbridge version"),
    # what the request names
    "unsupported": (422, "see GET /v1/models and /openapi.json"),
    "not_found": (422, "GET /v1/models lists what this server offers"),
    "unknown_model": (422, "GET /v1/models lists the models and atlases; pick one of them"),
    # the server's own failures: not the client's doing
    "invalid_reference": (500, "the server's reference is broken; tell its administrator"),
    "missing_dependency": (500, "the server lacks an optional dependency; tell its "
                                "administrator"),
    "r_failure": (500, "the server's R failed; retry later or tell its administrator"),
    "remote_error": (502, "an upstream service failed; retry later"),
    "error": (500, "retry later; report the request id if it persists"),
}


def from_bridge_error(exc: _errors.BridgeError) -> ApiError:
    """The API error for one of scbridge's own exceptions raised by a computation: status
    and default hint by its code, else by its family."""
    status, default_hint = STATUS.get(exc.code) or STATUS.get(exc.family) or STATUS["error"]
    return ApiError(status, exc.code, exc.message, exc.hint or default_hint)

"""Errors as the service reports them: ``{"error": {"code", "message", "hint", "request_id"}}``.

Every refusal is an :class:`ApiError` with an HTTP status, a stable machine-readable ``code``,
a message saying what was wrong and a hint saying what to change.  scbridge's own exceptions
raised while computing map onto these; anything else is a 500 whose details stay in the log.
"""

from __future__ import annotations

import json

from .. import _errors

__all__ = ["ApiError", "error_body", "from_bridge_error"]


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


_BY_CLASS: list[tuple[type[Exception], int, str, str]] = [
    (_errors.GeneIdError, 422, "gene_ids",
     "send gene symbols (or Ensembl ids) of the organism the model was built for, in column order"),
    (_errors.CapacityError, 413, "too_large", "send fewer cells per request"),
    (_errors.InputError, 422, "invalid_input", "fix the data as the message says and resend"),
    (_errors.FormatError, 400, "invalid_format", "send a body in the documented format"),
    (_errors.NotFoundError, 422, "not_found", "GET /v1/models lists what this server offers"),
    (_errors.UnsupportedError, 422, "unsupported", "see GET /v1/models and /openapi.json"),
]


def from_bridge_error(exc: _errors.BridgeError) -> ApiError:
    """The API error for one of scbridge's own exceptions raised by a computation."""
    for cls, status, code, hint in _BY_CLASS:
        if isinstance(exc, cls):
            return ApiError(status, code, str(exc), hint)
    return ApiError(422, "invalid_request", str(exc), "see /openapi.json")

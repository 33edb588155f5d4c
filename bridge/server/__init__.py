"""``scbridge serve``: the annotation service (Cell Atlas contract, JSON and Arrow).

HTTP only: parse, admit, map error codes to statuses.  The bytes on the wire and their
validation live in :mod:`bridge._contract.wire` (shared with the remote engine, which never
imports the server).  Layout: ``_settings`` (keys, limits, catalogue), ``_protocol`` (the HTTP
protocol: header size and time limits), ``_body`` (bodies bounded in size and time, admission
by bytes in flight), ``_compute`` (the catalogue of built engines, reloaded on change; calls,
embeddings, markers), ``_problems`` (error code -> HTTP status, error replies), ``_context``
(request ids, access log), ``_logging`` (escaped and JSON log lines), ``_openapi`` (documented
schemas), ``_app`` (routes).

FastAPI loads only when :func:`create_app` is first used, so the client never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._settings import Settings

if TYPE_CHECKING:
    from ._app import create_app

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from ._app import create_app

        return create_app
    msg = f"module 'bridge.server' has no attribute {name!r}"
    raise AttributeError(msg)

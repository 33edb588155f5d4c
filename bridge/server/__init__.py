"""``scbridge serve``: the annotation service (Cell Atlas contract, JSON and Arrow).

Layout: ``_wire`` (the bytes on the wire, shared with the remote client, no web framework),
``_settings`` (keys, limits, catalogue), ``_payload`` (bodies -> validated matrices),
``_compute`` (calls, embeddings, markers), ``_problems`` (error replies), ``_context``
(request ids, access log), ``_openapi`` (documented schemas), ``_app`` (routes).

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

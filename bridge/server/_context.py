"""Request ids and the access log (a plain ASGI middleware, so it wraps every response).

Each request gets an id (the client's ``X-Request-ID`` when it is a sane token, else a new
one) that is returned in the ``X-Request-ID`` header, included in error bodies, and attached to
every log record made while serving it, also in worker threads (anyio copies the context).
Headers are never logged, so API keys never reach the log; the path is logged escaped (see
:mod:`bridge.server._logging`).  A client that disconnects before its reply is one info line
(status 499, as nginx logs it), not an error.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from typing import Any

from starlette.requests import ClientDisconnect

from ._body import ClientGone
from ._logging import escape
from ._problems import error_body

__all__ = ["RequestContext", "RequestIdFilter", "current_request_id"]

logger = logging.getLogger("bridge.server")
_REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("scbridge_request_id",
                                                                  default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def current_request_id() -> str:
    return _REQUEST_ID.get()


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (``-`` outside a request) for log formats that show it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _REQUEST_ID.get()
        return True


class RequestContext:
    """ASGI middleware: request id, access log line, and a last-resort 500 for bugs."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if _SANE_ID.match(incoming) else uuid.uuid4().hex
        token = _REQUEST_ID.set(request_id)
        started = time.perf_counter()
        state = {"status": 500, "started": False}

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"],
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except (ClientGone, ClientDisconnect):
            state["status"] = 499
            logger.info("client disconnected before the reply (request %s)", request_id)
        except Exception:
            logger.exception("request %s failed with an unexpected error", request_id)
            if not state["started"]:
                body = error_body("internal_error", "the server failed to process the request.",
                                  f"retry later; report request id {request_id} if it persists",
                                  request_id)
                await send_with_id({"type": "http.response.start", "status": 500,
                                    "headers": [(b"content-type", b"application/json"),
                                                (b"content-length", str(len(body)).encode())]})
                await send_with_id({"type": "http.response.body", "body": body})
        finally:
            elapsed = 1000 * (time.perf_counter() - started)
            client = (scope.get("client") or ("?",))[0]
            logger.info("%s %s %s -> %d in %.1f ms (request %s)", client,
                        escape(str(scope["method"]), 20), escape(str(scope["path"]), 300),
                        state["status"], elapsed, request_id)
            _REQUEST_ID.reset(token)

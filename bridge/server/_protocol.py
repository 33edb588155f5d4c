"""The HTTP protocol the service runs on: uvicorn's httptools protocol with two more limits.

uvicorn's httptools protocol reads request headers without any size limit (a 64 MiB header was
answered 200; four unfinished 128 MiB headers took 630 MB), and its h11 protocol answers an
oversized header with a plain 400.  :class:`LimitedHttpToolsProtocol` feeds the parser the
request line and headers in small pieces and counts them: past ``max_header_bytes`` the client
gets ``431 Request Header Fields Too Large`` (code ``headers_too_large``) and the connection is
closed, before any header reaches the application (so before authentication too).  A client
must also finish its request line and headers within ``header_timeout`` seconds of connecting
(or of its previous request): otherwise ``408`` (code ``header_timeout``) and the connection
is closed, so connections that never send a request cannot pile up.

``scbridge serve`` passes the class to uvicorn (``http=``); with ``--workers`` the worker
processes import :class:`EnvHttpProtocol`, which reads the limits from the settings the parent
process put in the environment.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ._settings import ENV_SETTINGS

__all__ = ["EnvHttpProtocol", "LimitedHttpToolsProtocol", "protocol_class"]

_PIECE = 4096  # header bytes fed to the parser at a time while counting


def _error_response(status: int, reason: str, code: str, message: str, hint: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message, "hint": hint,
                                 "request_id": None}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    return head + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header size limit (431) and a header timeout."""

    max_header_bytes: int = 64 * 1024
    header_timeout: float = 20.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_headers = True
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None

    # -- the header timeout ---------------------------------------------------------------
    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._in_headers and not self.transport.is_closing():
            self.logger.info("closing a connection that sent no complete request headers "
                             "within %g s", self.header_timeout)
            self._refuse(408, "Request Timeout", "header_timeout",
                         f"the request line and headers did not arrive within "
                         f"{self.header_timeout:g} s.", "send the whole request at once")

    def _refuse(self, status: int, reason: str, code: str, message: str, hint: str) -> None:
        self.transport.write(_error_response(status, reason, code, message, hint))
        self.transport.close()

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_headers:
            super().data_received(data)
            return
        self._unset_keepalive_if_required()
        self._arm_header_timer()
        view = memoryview(data)
        at = 0
        while at < len(data):
            if self._in_headers:
                piece = view[at : at + _PIECE]
                self._header_bytes += len(piece)
                if self._header_bytes > self.max_header_bytes:
                    self.logger.info("refused a request whose headers exceed %d bytes",
                                     self.max_header_bytes)
                    self._refuse(431, "Request Header Fields Too Large", "headers_too_large",
                                 f"the request line and headers exceed this server's limit "
                                 f"of {self.max_header_bytes:,} bytes.",
                                 "send shorter headers (the API needs only Authorization and "
                                 "Content-Type)")
                    return
            else:
                piece = view[at:]
            at += len(piece)
            if not self._feed(bytes(piece)):
                return

    def _feed(self, piece: bytes) -> bool:
        """Feed the parser as uvicorn's own ``data_received`` does; False once it gave up."""
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return self.parser is not None and not self.transport.is_closing()

    # -- parser callbacks -------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = 0
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_headers = True  # the next request on this connection starts with headers
        self._header_bytes = 0


def protocol_class(max_header_bytes: int, header_timeout: float
                   ) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for one server's limits."""
    return type("ScbridgeHttpProtocol", (LimitedHttpToolsProtocol,),
                {"max_header_bytes": max_header_bytes, "header_timeout": header_timeout})


def _limits_from_env() -> tuple[int, float]:
    try:
        data = json.loads(os.environ.get(ENV_SETTINGS, "{}"))
    except ValueError:
        data = {}
    return (int(data.get("max_header_bytes", LimitedHttpToolsProtocol.max_header_bytes)),
            float(data.get("header_timeout", LimitedHttpToolsProtocol.header_timeout)))


class EnvHttpProtocol(LimitedHttpToolsProtocol):
    """The protocol of ``--workers`` processes: limits from ``$SCBRIDGE_SERVER_SETTINGS``."""

    max_header_bytes, header_timeout = _limits_from_env()

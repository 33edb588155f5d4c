"""Reading a request body: bounded in size, in time, and in the bytes all requests hold.

Nothing is allocated from what a client *declares*: the body grows as its bytes arrive, in one
buffer capped by the limit (a ``Content-Length`` above the limit is refused at once).  Each
body must keep arriving (a progress timeout between pieces) and be complete within a total
deadline; a client that stops sending gets 408 and its bytes are released.  Every received
byte is counted against the server-wide budget of bytes in flight (:class:`Admission`), so
memory is bounded by that budget, and clients that stall after a few bytes hold almost none
of it: they cannot lock others out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio

__all__ = [
    "DRAIN_LIMIT",
    "Admission",
    "BodyLimits",
    "BodyTimeout",
    "BodyTooLarge",
    "ClientGone",
    "InFlightBudget",
    "Ticket",
    "read_body",
]

DRAIN_LIMIT = 256 * 1024 * 1024  # past a refused body, read at most this much before replying

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class BodyTooLarge(Exception):
    """The body exceeds the limit."""


class BodyTimeout(Exception):
    """The body stopped arriving (``stalled``) or took longer than the deadline."""

    def __init__(self, kind: str, seconds: float, received: int) -> None:
        super().__init__(kind)
        self.kind = kind
        self.seconds = seconds
        self.received = received


class ClientGone(Exception):
    """The client disconnected before its request was read."""


class InFlightBudget(Exception):
    """Accepting these bytes would exceed the server's budget of body bytes in flight."""


@dataclass(frozen=True)
class BodyLimits:
    """How much, and how slowly, one body may arrive."""

    max_bytes: int
    progress_timeout: float  # seconds without a single byte
    deadline: float  # seconds for the whole body


class Admission:
    """Who may hold memory: bytes of bodies in flight, and requests queued for computing.

    ``max_inflight_bytes`` bounds the bytes of all bodies being received, waiting or computed
    (refused with 503 + Retry-After beyond it); ``max_pending`` bounds the requests whose
    bodies are complete and wait for, or are in, a compute thread.  A request only takes a
    pending slot once its body is complete, so slow uploads never block computing.  Counted on
    the event loop thread, so no lock is needed.
    """

    def __init__(self, max_pending: int, max_inflight_bytes: int) -> None:
        self.limit = max(1, max_pending)
        self.max_inflight_bytes = max(1, max_inflight_bytes)
        self.pending = 0
        self.inflight_bytes = 0
        self.receiving = 0

    @contextlib.contextmanager
    def ticket(self) -> Iterator[Ticket]:
        """Bytes held by one request, given back when it ends (however it ends)."""
        ticket = Ticket(self)
        try:
            yield ticket
        finally:
            self.inflight_bytes -= ticket.held
            ticket.held = 0

    @contextlib.contextmanager
    def compute_slot(self) -> Iterator[None]:
        """A place in the compute queue, or :class:`OverflowError` when it is full."""
        if self.pending >= self.limit:
            raise OverflowError(self.pending)
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    def snapshot(self) -> dict[str, int]:
        return {"pending": self.pending, "receiving": self.receiving,
                "inflight_bytes": self.inflight_bytes}


class Ticket:
    """One request's share of the in-flight byte budget."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.held = 0

    def take(self, n: int) -> None:
        admission = self.admission
        if admission.inflight_bytes + n > admission.max_inflight_bytes:
            raise InFlightBudget(admission.inflight_bytes)
        admission.inflight_bytes += n
        self.held += n


async def _next_piece(receive: Receive, progress_timeout: float, received: int
                      ) -> tuple[bytes, bool]:
    """The next piece of the body and whether more follows."""
    try:
        with anyio.fail_after(progress_timeout):
            message = await receive()
    except TimeoutError:
        raise BodyTimeout("stalled", progress_timeout, received) from None
    if message["type"] == "http.disconnect":
        raise ClientGone
    return message.get("body", b""), bool(message.get("more_body", False))


async def _drain(receive: Receive, limits: BodyLimits, budget: int) -> None:
    """Read and drop up to ``budget`` bytes (so the client sees the 413, not a reset)."""
    dropped = 0
    while dropped <= budget:
        message: MutableMapping[str, Any]
        try:
            with anyio.fail_after(limits.progress_timeout):
                message = await receive()
        except TimeoutError:
            return
        if message["type"] == "http.disconnect":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def read_body(receive: Receive, declared: int | None, limits: BodyLimits,
                    ticket: Ticket) -> bytearray:
    """The whole body, in one buffer that grows as bytes arrive.

    Raises
    ------
    BodyTooLarge
        More than ``limits.max_bytes`` (declared or sent).
    BodyTimeout
        No byte for ``progress_timeout`` seconds, or not complete within ``deadline``.
    InFlightBudget
        The server holds too many body bytes already.
    ClientGone
        The client disconnected.
    """
    if declared is not None and declared > limits.max_bytes:
        if declared <= limits.max_bytes + DRAIN_LIMIT:
            with anyio.move_on_after(limits.deadline):
                await _drain(receive, limits, declared)
        raise BodyTooLarge
    buffer = bytearray()
    try:
        with anyio.fail_after(limits.deadline):
            more = True
            while more:
                piece, more = await _next_piece(receive, limits.progress_timeout, len(buffer))
                if len(buffer) + len(piece) > limits.max_bytes:
                    received = len(buffer) + len(piece)
                    buffer = bytearray()
                    if more:
                        await _drain(receive, limits, limits.max_bytes + DRAIN_LIMIT - received)
                    raise BodyTooLarge
                ticket.take(len(piece))
                buffer += piece
            return buffer
    except TimeoutError:
        raise BodyTimeout("deadline", limits.deadline, len(buffer)) from None

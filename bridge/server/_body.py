"""Reading a request body under a size limit, into one buffer.

With a ``Content-Length`` the body is read straight into a buffer of that size (no list of
pieces joined at the end: one copy of a 240 MB body fewer).  Past the limit the rest is read
and dropped, up to a bound, so the client gets the 413 instead of a reset connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

__all__ = ["DRAIN_LIMIT", "asgi_chunks", "read_limited"]

DRAIN_LIMIT = 256 * 1024 * 1024  # past a refused body, read at most this much before replying


async def asgi_chunks(receive: Callable[[], Awaitable[dict[str, Any]]]) -> AsyncIterator[bytes]:
    """The body pieces of an ASGI request."""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        yield message.get("body", b"")
        more = message.get("more_body", False)


async def read_limited(chunks: AsyncIterator[bytes], declared: int | None,
                       limit: int) -> bytes | bytearray | None:
    """The whole body, or ``None`` when it is larger than ``limit`` bytes."""
    if declared is not None and declared <= limit:
        buffer = bytearray(declared)
        view = memoryview(buffer)
        at = 0
        async for chunk in chunks:
            end = at + len(chunk)
            if end > declared:  # more than announced (the HTTP layer normally stops this)
                return None
            view[at:end] = chunk
            at = end
        view.release()
        if at < declared:
            del buffer[at:]
        return buffer
    if declared is not None and declared > limit + DRAIN_LIMIT:
        return None
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            parts.clear()
            if size > limit + DRAIN_LIMIT:
                break
            continue
        parts.append(chunk)
    return None if size > limit else b"".join(parts)

"""Log lines a client cannot forge: escaped text, or one JSON object per line.

Request paths, header values and whatever else a client sends can hold newlines and other
control characters (``%0A`` in a path is decoded before the application sees it).  Written
as they are, they would start a new, well-formed looking log line.  :class:`EscapingFormatter`
writes every control character of a message as an escape (``\\n``, ``\\x1b``, ``\\u2028``);
:class:`JsonFormatter` (``scbridge serve --log-format json``) writes each record as one JSON
object, where the encoder escapes them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re

__all__ = ["EscapingFormatter", "JsonFormatter", "escape"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str, limit: int | None = None) -> str:
    """``text`` with control characters escaped, cut to ``limit`` characters (marked)."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"...({len(text) - limit} more)"
    return _CONTROL.sub(_escaped, text)


class EscapingFormatter(logging.Formatter):
    """A text formatter whose messages stay on one line (tracebacks keep their lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, request id, message, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True, default=str)

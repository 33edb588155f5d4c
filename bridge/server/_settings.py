"""Server settings and API keys."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._errors import InputError, NotFoundError

__all__ = [
    "ENV_KEYS",
    "ENV_SETTINGS",
    "Settings",
    "load_api_keys",
    "parse_atlases",
    "parse_references",
]

ENV_KEYS = "SCBRIDGE_API_KEYS"
# How `scbridge serve --workers N` hands its settings to the worker processes (never keys).
ENV_SETTINGS = "SCBRIDGE_SERVER_SETTINGS"


@dataclass
class Settings:
    """What one server offers and enforces.

    Parameters
    ----------
    api_keys_file
        File with one API key per line (blank lines and ``#`` comments ignored).
    api_keys
        Keys given directly (tests, embedding); joined with the file's and ``$SCBRIDGE_API_KEYS``.
    allow_anonymous
        Serve without any key.  Off by default: a server with no keys refuses to start.
    max_cells
        Cells per request; larger requests get 413 with a hint to chunk.
    max_body_bytes
        Request body size limit (413 beyond it).
    max_json_body_bytes
        A lower limit for JSON bodies: parsing JSON builds Python objects of about 10x the
        body's size (a 342 MB body peaked at 3.4 GB), so this bounds the server's memory.
    compute_threads
        Requests computed at once per process (decode + annotate); the rest wait their turn.
        The engines hold the GIL for much of their work, so more cores are used through more
        processes (``--workers``); measured on 2 cores, 1 thread served 2x the cells/s of 2.
    max_pending
        Requests whose bodies are complete and wait for, or are in, a compute thread; more get
        503 with ``Retry-After``.  Requests still being received do not count, so slow or
        stalled uploads never block computing.
    max_inflight_bytes
        Bytes of request bodies the process holds at once (being received, waiting or
        computed); a body that would exceed it gets 503 with ``Retry-After``.  Counts bytes
        that arrived, never what a client declares.
    body_timeout
        Seconds a body may pause between two pieces before the request gets 408.
    body_deadline
        Seconds a body may take in all before the request gets 408.
    max_header_bytes
        Size of a request's line and headers together; more gets 431 before anything is read
        further (and before authentication).
    header_timeout
        Seconds a client has to send its request line and headers; then the connection is
        closed.
    max_marker_labels
        Labels ranked per markers request (each costs memory of the number of genes).
    atlases
        Model -> {atlas name -> value handed to the engine} (for ``model="reference"`` the
        value is a reference file path).  Clients name atlases; they never send paths.
    models
        Models offered (``None``: every registered engine).
    default_model
        Model used when a request names none.
    """

    api_keys_file: str | None = None
    api_keys: tuple[str, ...] = ()
    allow_anonymous: bool = False
    max_cells: int = 100_000
    max_body_bytes: int = 1024 * 1024 * 1024
    max_json_body_bytes: int = 256 * 1024 * 1024
    compute_threads: int = 1
    max_pending: int = 16
    max_inflight_bytes: int = 1024 * 1024 * 1024
    body_timeout: float = 20.0
    body_deadline: float = 300.0
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 20.0
    max_marker_labels: int = 200
    atlases: dict[str, dict[str, str]] = field(default_factory=dict)
    models: tuple[str, ...] | None = None
    default_model: str = "markers"

    def to_env(self) -> str:
        """JSON for worker processes; keys given directly are left out (they come from env)."""
        data = asdict(self)
        data["api_keys"] = []
        return json.dumps(data)

    @classmethod
    def from_env(cls) -> Settings:
        data = json.loads(os.environ.get(ENV_SETTINGS, "{}"))
        data["api_keys"] = tuple(data.get("api_keys") or ())
        if data.get("models") is not None:
            data["models"] = tuple(data["models"])
        return cls(**data)


def load_api_keys(settings: Settings) -> frozenset[bytes]:
    """Keys from ``settings.api_keys``, the keys file and ``$SCBRIDGE_API_KEYS``."""
    keys = [k.strip() for k in settings.api_keys]
    if settings.api_keys_file:
        path = Path(settings.api_keys_file)
        if not path.is_file():
            msg = f"API keys file {path} does not exist (one key per line)."
            raise NotFoundError(msg)
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
    keys += [k.strip() for k in os.environ.get(ENV_KEYS, "").split(",")]
    keys = [k for k in keys if k]
    if any(len(k) < 8 for k in keys):
        msg = "API keys must be at least 8 characters long; use long random strings."
        raise InputError(msg)
    return frozenset(k.encode() for k in keys)


def parse_references(items: list[str] | None) -> dict[str, str]:
    """``["NAME=PATH", ...]`` -> ``{NAME: PATH}``, checking that each file exists."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            msg = f"--reference expects NAME=PATH, got {item!r}."
            raise InputError(msg)
        if not Path(path).is_file():
            msg = f"--reference {name}: {path} does not exist."
            raise NotFoundError(msg)
        out[name] = str(Path(path).resolve())
    return out


def parse_atlases(items: list[str] | None) -> dict[str, dict[str, str]]:
    """``["MODEL:NAME=VALUE", ...]`` -> ``{MODEL: {NAME: VALUE}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        head, sep, value = item.partition("=")
        model, colon, name = head.partition(":")
        if not sep or not colon or not model or not name or not value:
            msg = f"--atlas expects MODEL:NAME=VALUE, got {item!r}."
            raise InputError(msg)
        out.setdefault(model, {})[name] = value
    return out

"""Fixtures for the service tests: synthetic labelled cells, a reference, and real servers.

``live_server`` runs ``python -m bridge serve`` in a subprocess on a free loopback port (the
way users and the R package start it).  ``thread_server`` runs any ASGI app with uvicorn in a
thread of the test process, for servers that need an extra test-only layer (e.g. one that
fails on purpose).  Import the fixtures with ``pytest_plugins = ["tests._server"]``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from bridge.matrix import CellMatrix

# The environment as it was before any test started R: rpy2 prepends R's library folders
# (and /usr/lib/x86_64-linux-gnu) to LD_LIBRARY_PATH, and a Python subprocess started with
# that environment can load the system's libssl / libpython instead of its own and crash.
_BASE_ENV = dict(os.environ)


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for Python subprocesses: the pre-R environment plus ``extra``."""
    return {**_BASE_ENV, **extra}


API_KEY = "test-key-0123456789"
OTHER_KEY = "second-key-abcdefgh"
LABELS = ("B cell", "T cell", "Monocyte")
MAX_CELLS = 2_000
MAX_BODY_MB = 4


def synthetic_cells(n_cells: int = 600, n_genes: int = 300, *, seed: int = 0,
                    prefix: str = "cell") -> CellMatrix:
    """Counts where each of three labels over-expresses its own block of 20 genes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(LABELS), n_cells)
    rate = np.full((n_cells, n_genes), 0.3)
    for k in range(len(LABELS)):
        rate[labels == k, 20 * k: 20 * (k + 1)] = 4.0
    dense = rng.poisson(rate).astype(np.float32)
    X = sp.csr_matrix(dense)
    genes = [f"GENE{j}" for j in range(n_genes)]
    obs = pa.table({"label": pa.array([LABELS[k] for k in labels], pa.string())})
    return CellMatrix(X, [f"{prefix}{i}" for i in range(n_cells)], genes, obs=obs,
                      source="synthetic")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None,
                 timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not become healthy")


@dataclass
class LiveServer:
    url: str
    reference: Path
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def headers(self, key: str = API_KEY) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def reference_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bridge import build_reference

    out = tmp_path_factory.mktemp("reference") / "synthetic.parquet"
    build_reference(synthetic_cells(900, seed=1), label_column="label", out=out,
                    genes_per_label=20)
    return out


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory,
                reference_file: Path) -> Iterator[LiveServer]:
    """``python -m bridge serve`` on a free loopback port, keys from a file, small limits."""
    tmp = tmp_path_factory.mktemp("server")
    keys = tmp / "keys.txt"
    keys.write_text(f"# test keys\n{API_KEY}\n\n{OTHER_KEY}\n")
    port = free_port()
    log = tmp / "server.log"
    env = subprocess_env(SCBRIDGE_API_KEYS="")
    cmd = [sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--api-keys", str(keys), "--max-cells", str(MAX_CELLS),
           "--max-body-mb", str(MAX_BODY_MB), "--reference", f"synthetic={reference_file}",
           "--log-level", "info"]
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            yield LiveServer(url, reference_file, log)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class ThreadServer:
    """uvicorn serving ``app`` on a free loopback port in a background thread."""

    def __init__(self, app: Any, *, http: Any = "auto") -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, http=http)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_healthy(self.url, timeout=20)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class Scripted:
    """ASGI wrapper for a server that fails on purpose and records what clients send.

    The first POSTs are answered from ``script`` (``(status, headers)`` pairs, e.g. 503 with
    ``Retry-After``) after reading their body; later ones reach ``app``.  Every POST body and
    its headers are kept in ``posts``.
    """

    def __init__(self, app: Any, script: list[tuple[int, dict[str, str]]] | None = None) -> None:
        self.app = app
        self.script = list(script or [])
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        messages, more = [], True
        while more:
            message = await receive()
            messages.append(message)
            more = message.get("more_body", False)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        with self.lock:
            self.posts.append((headers, b"".join(m.get("body", b"") for m in messages)))
            step = self.script.pop(0) if self.script else None
        if step is not None:
            status, extra = step
            body = b'{"error": {"code": "scripted", "message": "failing on purpose", "hint": ""}}'
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    *[(k.encode(), v.encode()) for k, v in extra.items()]]})
            await send({"type": "http.response.body", "body": body})
            return
        replay = iter(messages)

        async def receive_again() -> dict[str, Any]:
            return next(replay, {"type": "http.disconnect"})

        await self.app(scope, receive_again, send)


def marker_gene_cells(n_cells: int = 400, *, seed: int = 0) -> CellMatrix:
    """Counts on the knowledge base's own gene symbols (for model="markers"): each cell
    expresses the positive markers of one blood cell type and of its ancestors."""
    from bridge.engines._marker_model import load_marker_model

    model = load_marker_model()
    blood = [k for k in range(model.n_nodes) if model.is_type[k]
             and model.compartments[k] == "immune" and "blood" in model.tissues[k]]
    by_type = {model.names[k]: [g for g, w in zip(model.genes, model.positive[k], strict=True)
                                if w > 0] for k in blood}
    genes = sorted({g for gs in by_type.values() for g in gs} | {"ACTB", "B2M", "MALAT1"})
    column = {g: j for j, g in enumerate(genes)}
    rng = np.random.default_rng(seed)
    dense = rng.poisson(0.2, size=(n_cells, len(genes))).astype(np.float32)
    types = sorted(by_type)
    for i in range(n_cells):
        for g in by_type[types[rng.integers(len(types))]]:
            dense[i, column[g]] += rng.poisson(6)
    return CellMatrix(sp.csr_matrix(dense), [f"m{i}" for i in range(n_cells)], genes,
                      source="marker genes")

"""The service against hostile and careless clients (issue 12), over real sockets on loopback.

A real ``python -m bridge serve`` (or uvicorn in a thread with scbridge's own HTTP protocol)
and raw sockets where a well-behaved HTTP client cannot misbehave enough: stalled and
oversized bodies, huge and unfinished headers, disconnects, forged log lines, compressed and
forbidden bodies, the markers memory bomb, references that break or change while serving.
Memory is read from the server's /proc entry; no assertion depends on timing.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from bridge._contract.wire import ARROW_MEDIA_TYPE, matrix_arrow_body, sparse_to_payload
from bridge.matrix import CellMatrix

pytest.register_assert_rewrite("tests._server")
from tests._server import (  # noqa: E402
    API_KEY,
    LABELS,
    ThreadServer,
    free_port,
    subprocess_env,
    synthetic_cells,
    wait_healthy,
)

pytest_plugins = ["tests._server"]

ANNOTATE = "/v1/singlecell/annotate"
MARKERS = "/v1/singlecell/markers"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


# -- helpers ----------------------------------------------------------------------------------
@dataclass
class Served:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def rss_mb(self) -> float:
        return _status_kb(self.proc.pid, "VmRSS") / 1024

    def peak_mb(self) -> float:
        return _status_kb(self.proc.pid, "VmHWM") / 1024


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


@contextlib.contextmanager
def serve(folder: Path, *args: str) -> Iterator[Served]:
    """``python -m bridge serve`` with the test key on a free loopback port."""
    keys = folder / "keys.txt"
    keys.write_text(API_KEY + "\n")
    port = free_port()
    log = folder / f"server-{port}.log"
    cmd = [sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--api-keys", str(keys), "--log-level", "info", *args]
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT,
                                env=subprocess_env(SCBRIDGE_API_KEYS=""))
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            yield Served(url, port, proc, log)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def raw_request(port: int, head: bytes, body: bytes = b"", *, timeout: float = 30.0) -> bytes:
    """Send bytes on a fresh loopback connection and read until the server closes it or
    ``timeout`` passes; the reply's raw bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(head + body)
        return _read_all(sock)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def error_code(reply: bytes) -> str:
    body = reply.split(b"\r\n\r\n", 1)[1]
    return str(json.loads(body)["error"]["code"])


def post_head(path: str, length: int, content_type: str = "application/json",
              extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n{extra}\r\n").encode()


def annotate_ok(url: str, n_cells: int = 40) -> bool:
    m = synthetic_cells(n_cells, seed=7)
    response = httpx.post(url + ANNOTATE, content=matrix_arrow_body(m), timeout=60,
                          params={"model": "reference"},
                          headers={"Content-Type": ARROW_MEDIA_TYPE, **AUTH})
    return response.status_code == 200


# -- bodies -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_limits_server(tmp_path_factory: pytest.TempPathFactory,
                        reference_file: Path) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("abuse")
    # Default body limits (1,024 MiB Arrow, 256 MiB JSON), short timeouts, a small queue.
    with serve(folder, "--reference", f"synthetic={reference_file}",
               "--body-timeout", "2", "--body-deadline", "6", "--max-pending", "2",
               "--max-header-kb", "16", "--header-timeout", "3") as server:
        yield server


def test_stalled_uploads_declaring_a_gigabyte_hold_no_memory_and_block_nobody(
        small_limits_server: Served) -> None:
    """More stalled uploads than compute slots, each sending 30 bytes of a declared 1,000 MiB
    (within the limit): other clients are answered, the server allocates nothing for them
    (it used to allocate the declared size), and each stalled one gets 408."""
    server = small_limits_server
    before = server.rss_mb()
    sockets = []
    for _ in range(6):  # three times --max-pending
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(post_head(ANNOTATE, 1000 * 1024 * 1024, ARROW_MEDIA_TYPE) + b"x" * 30)
        sockets.append(sock)
    try:
        time.sleep(0.5)  # let the server start reading them
        assert annotate_ok(server.url)
        assert server.rss_mb() < before + 100  # nothing allocated from Content-Length
        replies = [_read_all(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert {status_of(r) for r in replies} == {408}


def test_a_stalled_body_within_the_limit_gets_408(small_limits_server: Served) -> None:
    server = small_limits_server
    sockets = []
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(post_head(ANNOTATE, 3 * 1024 * 1024) + b'{"genes": [')
        sockets.append(sock)
    try:
        assert annotate_ok(server.url)  # while all four hold their connections
        replies = [_read_all(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert {status_of(r) for r in replies} == {408}
    assert error_code(replies[0]) == "body_timeout"
    assert b"no data arrived for 2 s" in replies[0]


def test_a_trickling_body_meets_the_deadline(small_limits_server: Served) -> None:
    """One byte a second never trips the progress timeout; the total deadline ends it."""
    server = small_limits_server
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(post_head(ANNOTATE, 1000))
        reply = b""
        for _ in range(30):
            try:
                sock.sendall(b" ")
            except OSError:
                break
            sock.settimeout(1.0)
            try:
                reply = sock.recv(65536)
            except TimeoutError:
                continue
            if reply:
                break
        reply += _read_all(sock)
    assert status_of(reply) == 408
    assert b"not complete within 6 s" in reply


def test_content_length_above_the_limit_is_refused_before_reading(
        small_limits_server: Served) -> None:
    for length, kind in ((257 << 20, "application/json"), (1025 << 20, ARROW_MEDIA_TYPE)):
        reply = raw_request(small_limits_server.port, post_head(ANNOTATE, length, kind))
        assert status_of(reply) == 413 and error_code(reply) == "body_too_large"


def test_a_client_disconnect_is_one_info_line(small_limits_server: Served) -> None:
    server = small_limits_server
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(post_head(ANNOTATE, 10_000, extra="X-Request-ID: gone-client-1\r\n")
                     + b'{"genes"')
        time.sleep(0.3)
    for _ in range(100):
        lines = [ln for ln in server.log.read_text().splitlines() if "gone-client-1" in ln]
        if any("-> 499" in ln for ln in lines):
            break
        time.sleep(0.05)
    assert any("client disconnected" in ln for ln in lines)
    assert any("-> 499" in ln for ln in lines)
    text = server.log.read_text()
    assert "Traceback" not in text and "ClientDisconnect" not in text
    assert "-> 500" not in text


# -- headers ----------------------------------------------------------------------------------
def test_oversized_headers_get_431_before_authentication(small_limits_server: Served) -> None:
    big = "X-Padding: " + "a" * (64 * 1024) + "\r\n"
    head = f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{big}\r\n".encode()  # no key at all
    reply = raw_request(small_limits_server.port, head)
    assert status_of(reply) == 431
    assert error_code(reply) == "headers_too_large"
    assert b"16,384 bytes" in reply
    # Headers within the limit still reach the application (401: no key).
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 8000 + b"\r\n\r\n"
    assert status_of(raw_request(small_limits_server.port, head, timeout=5)) == 401


def test_many_unfinished_huge_headers_use_no_memory(small_limits_server: Served) -> None:
    server = small_limits_server
    before = server.rss_mb()
    replies: list[bytes] = []

    def flood() -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(b"GET / HTTP/1.1\r\nX-Flood: ")
                for _ in range(64):  # up to 16 MiB each; the server stops it at 16 KiB
                    sock.sendall(b"b" * 256 * 1024)
            replies.append(_read_all(sock))

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [status_of(r) for r in replies] == [431] * 4
    assert server.rss_mb() < before + 50
    assert annotate_ok(server.url)


def test_headers_that_never_finish_are_closed_with_408(small_limits_server: Served) -> None:
    with socket.create_connection(("127.0.0.1", small_limits_server.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        reply = _read_all(sock)
    assert status_of(reply) == 408 and error_code(reply) == "header_timeout"


def test_worker_processes_limit_headers_too(tmp_path: Path, reference_file: Path) -> None:
    with serve(tmp_path, "--workers", "2", "--max-header-kb", "8",
               "--reference", f"synthetic={reference_file}") as server:
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-P: " + b"a" * 20_000 + b"\r\n\r\n"
        reply = raw_request(server.port, head)
        assert status_of(reply) == 431 and b"8,192 bytes" in reply
        assert annotate_ok(server.url)


# -- logs ---------------------------------------------------------------------------------------
def test_a_path_cannot_forge_a_log_line(small_limits_server: Served) -> None:
    server = small_limits_server
    forged = ("/x%0A2099-01-01 00:00:00,000 INFO [admin] bridge.server: user root logged in"
              .replace(" ", "%20"))
    reply = raw_request(server.port, f"GET {forged} HTTP/1.1\r\nHost: x\r\n"
                                     "Connection: close\r\n\r\n".encode(), timeout=10)
    assert status_of(reply) == 404
    for _ in range(100):
        if "user root logged in" in server.log.read_text():
            break
        time.sleep(0.05)
    lines = server.log.read_text().splitlines()
    assert not any(ln.startswith("2099-01-01") for ln in lines)
    assert any("/x\\n2099-01-01" in ln for ln in lines)


def test_json_log_lines(tmp_path: Path, reference_file: Path) -> None:
    with serve(tmp_path, "--log-format", "json",
               "--reference", f"synthetic={reference_file}") as server:
        raw_request(server.port, b"GET /a%0Ab HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    timeout=10)
        assert annotate_ok(server.url)
        time.sleep(0.3)
        lines = [ln for ln in server.log.read_text().splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # every line is one JSON object
    assert any("GET /a\\nb -> 404" in r["message"] for r in records)
    assert {"time", "level", "logger", "request_id", "message"} <= set(records[-1])


# -- bodies the service refuses -----------------------------------------------------------------
def _arrow_variant(table: pa.Table, meta: dict[bytes, bytes]) -> bytes:
    table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _forbidden_arrow_bodies() -> dict[str, bytes]:
    m = synthetic_cells(20, n_genes=30, seed=3)
    good = pa.ipc.open_stream(matrix_arrow_body(m)).read_all()
    meta = dict(good.schema.metadata)
    offsets = good.column("values").chunk(0).offsets
    values = good.column("values").chunk(0).values
    big_offsets = pa.array(offsets.to_numpy().astype(np.int64))
    return {
        "nested genes": _arrow_variant(good, {**meta, b"scbridge.genes": b"[" * 100_000
                                              + b"]" * 100_000}),
        "float16 values": _arrow_variant(good.set_column(2, "values", pa.ListArray.from_arrays(
            offsets, pa.array(values.to_numpy().astype(np.float16)))), meta),
        "string values": _arrow_variant(good.set_column(2, "values", pa.ListArray.from_arrays(
            offsets, pa.array([str(v) for v in values.to_pylist()]))), meta),
        "int64 values": _arrow_variant(good.set_column(2, "values", pa.ListArray.from_arrays(
            offsets, pa.array(values.to_numpy().astype(np.int64)))), meta),
        "int64 cell": _arrow_variant(good.set_column(0, "cell", pa.array(range(20))), meta),
        "mixed lists": _arrow_variant(good.set_column(2, "values", pa.LargeListArray.from_arrays(
            big_offsets, values)), meta),
    }


@pytest.mark.parametrize("name", list(_forbidden_arrow_bodies()))
def test_arrow_bodies_docs_forbid_are_400(small_limits_server: Served, name: str) -> None:
    body = _forbidden_arrow_bodies()[name]
    response = httpx.post(small_limits_server.url + ANNOTATE, content=body, timeout=60,
                          headers={"Content-Type": ARROW_MEDIA_TYPE, **AUTH})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_arrow"


def test_a_gzip_body_is_415_naming_content_encoding(small_limits_server: Served) -> None:
    m = synthetic_cells(10, seed=1)
    body = gzip.compress(json.dumps(sparse_to_payload(m.X, m.genes.tolist())).encode())
    response = httpx.post(small_limits_server.url + ANNOTATE, content=body,
                          headers={"Content-Type": "application/json",
                                   "Content-Encoding": "gzip", **AUTH})
    assert response.status_code == 415
    error = response.json()["error"]
    assert error["code"] == "unsupported_encoding" and "Content-Encoding" in error["message"]


def test_deeply_nested_json_is_400(small_limits_server: Served) -> None:
    response = httpx.post(small_limits_server.url + ANNOTATE, content=b"[" * 200_000,
                          headers={"Content-Type": "application/json", **AUTH})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_json_calls_name_their_cell(small_limits_server: Served) -> None:
    m = synthetic_cells(12, seed=2)
    payload = {**sparse_to_payload(m.X, m.genes.tolist()), "model": "reference"}
    calls = httpx.post(small_limits_server.url + ANNOTATE, json=payload, headers=AUTH,
                       timeout=60).json()["calls"]
    assert [c["cell"] for c in calls] == [str(i) for i in range(12)]


# -- markers ------------------------------------------------------------------------------------
def test_markers_memory_bomb_is_refused_in_bounded_memory(small_limits_server: Served) -> None:
    """2,000 cells x 20,000 genes, one label per cell: refused before any labels x genes
    array (it used to peak at 4.6 GB and answer an empty table)."""
    server = small_limits_server
    rng = np.random.default_rng(0)
    X = sp.random(2000, 20_000, density=0.001, format="csr", random_state=rng)
    X.data = np.ceil(X.data * 5)
    payload = {**sparse_to_payload(X, [f"G{j}" for j in range(20_000)]),
               "labels": [f"cell type {i}" for i in range(2000)]}
    response = httpx.post(server.url + MARKERS, json=payload, headers=AUTH, timeout=60)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_labels" and "0 of them" in error["message"]
    assert server.peak_mb() < 1536


def test_markers_label_cap_and_all_null_labels(small_limits_server: Served) -> None:
    server = small_limits_server
    m = synthetic_cells(800, n_genes=50, seed=5)
    payload = {**sparse_to_payload(m.X, m.genes.tolist()),
               "labels": [f"t{i % 201}" for i in range(800)], "min_cells": 2}
    error = httpx.post(server.url + MARKERS, json=payload, headers=AUTH,
                       timeout=60).json()["error"]
    assert error["code"] == "too_many_labels" and "at most 200" in error["message"]
    payload["labels"] = [None] * 800
    error = httpx.post(server.url + MARKERS, json=payload, headers=AUTH,
                       timeout=60).json()["error"]
    assert error["code"] == "invalid_labels" and "null" in error["message"]
    assert "is in the request" not in error["message"]


def test_small_labels_are_pooled_not_dropped_from_the_rest() -> None:
    """Cells of labels below min_cells still count as 'rest' for the others: the t statistic
    of a kept label equals Welch's test against every other labelled cell."""
    from scipy import stats

    import bridge
    from bridge.numerics import log_normalize

    m = synthetic_cells(300, n_genes=60, seed=8)
    labels = m.obs.column("label").to_pylist()
    labels[:5] = [f"single {i}" for i in range(5)]  # five labels of one cell each
    table = bridge.rank_marker_genes(m, {"cell": m.cells.tolist(), "label": labels},
                                     top_n=60, only_up=False, min_cells=3).to_pandas()
    assert not any(table.label.str.startswith("single"))
    dense = log_normalize(m.X, m.value_kind).toarray().astype(np.float64)
    truth = np.asarray(labels)
    row = table[(table.label == "B cell") & (table.gene == "GENE3")].iloc[0]
    expected = stats.ttest_ind(dense[truth == "B cell", 3], dense[truth != "B cell", 3],
                               equal_var=False)
    assert row.score == pytest.approx(expected.statistic, rel=1e-4)


# -- references ---------------------------------------------------------------------------------
def _reference_with_labels(folder: Path, names: tuple[str, ...], seed: int) -> Path:
    import bridge

    m = synthetic_cells(600, seed=seed)
    mapping = dict(zip(LABELS, names, strict=True))
    labels = [mapping[v] for v in m.obs.column("label").to_pylist()]
    m = CellMatrix(m.X, m.cells, m.genes, obs=pa.table({"label": labels}), source="synthetic")
    out = folder / f"ref-{seed}.parquet"
    bridge.build_reference(m, label_column="label", out=out, genes_per_label=20,
                           calibrate=False)
    return out


def test_connections_beyond_the_limit_get_503(tmp_path: Path) -> None:
    # Idle keep-alive connections count: a client holding many sockets open cannot make the
    # server run out of file descriptors; everyone else is answered 503 (retryable) meanwhile.
    with serve(tmp_path, "--max-connections", "4") as server:
        assert httpx.get(server.url + "/healthz").status_code == 200
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
        try:
            time.sleep(0.3)
            assert httpx.get(server.url + "/healthz").status_code == 503
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 10
        while httpx.get(server.url + "/healthz").status_code != 200:
            assert time.monotonic() < deadline, "the slots were not given back"
            time.sleep(0.1)
    done = subprocess.run([sys.executable, "-m", "bridge", "serve", "--no-auth",
                           "--max-connections", "0"], capture_output=True, text=True,
                          env=subprocess_env(), timeout=120)
    assert done.returncode == 2 and "error[invalid_parameter]" in done.stderr


def test_a_broken_reference_stops_the_start(tmp_path: Path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1" + b"\x00" * 100 + b"PAR1")
    env = {k: v for k, v in subprocess_env().items() if k != "SCBRIDGE_API_KEYS"}
    done = subprocess.run([sys.executable, "-m", "bridge", "serve", "--no-auth", "--port", "9",
                           "--reference", f"pbmc={broken}"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 2
    assert "error[invalid_reference]" in done.stderr
    assert "atlas 'pbmc' cannot be loaded" in done.stderr


def test_references_reload_on_change_and_never_leak_a_path(tmp_path: Path) -> None:
    from bridge.server import Settings, create_app

    first = _reference_with_labels(tmp_path, ("B", "T", "Mono"), seed=1)
    second = _reference_with_labels(tmp_path, ("B2", "T2", "Mono2"), seed=2)
    live = tmp_path / "serving" / "live.parquet"
    live.parent.mkdir()
    shutil.copyfile(first, live)
    app = create_app(Settings(api_keys=(API_KEY,), atlases={"reference": {"pbmc": str(live)}}))
    m = synthetic_cells(30, seed=4)

    def labels() -> set[str]:
        response = httpx.post(server.url + ANNOTATE, content=matrix_arrow_body(m), timeout=60,
                              params={"model": "reference"},
                              headers={"Content-Type": ARROW_MEDIA_TYPE,
                                       "Accept": "application/json", **AUTH})
        assert response.status_code == 200, response.text
        assert str(tmp_path) not in response.text  # no server path, not even the folder
        return {c["label"] for c in response.json()["calls"]}

    with ThreadServer(app) as server:
        assert labels() <= {"B", "T", "Mono"}
        shutil.copyfile(second, live.with_suffix(".tmp"))
        live.with_suffix(".tmp").replace(live)  # a new version of the file
        assert labels() <= {"B2", "T2", "Mono2"}
        live.write_bytes(b"not a reference any more")  # broken: the loaded version serves on
        assert labels() <= {"B2", "T2", "Mono2"}
        live.unlink()  # gone: the loaded version serves on
        assert labels() <= {"B2", "T2", "Mono2"}
        models = httpx.get(server.url + "/v1/models", headers=AUTH).text
        assert str(tmp_path) not in models

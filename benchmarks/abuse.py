"""Abuse of one annotation server while a well-behaved client works (issue 12).

One real ``python -m bridge serve`` on loopback (default limits; a reference built here from
synthetic labelled cells).  A good client annotates requests of 5,000 cells (Arrow transport),
one after another, first on an idle server, then during each attack of issue 12:

1. stalled uploads: 24 connections (more than ``--max-pending``) each declaring a 1,000 MiB
   body, sending 30 bytes and stalling; reopened as soon as the server drops them;
2. the markers memory bomb: 2,000 cells x 20,000 genes, one label per cell, sent over and
   over by two clients;
5. huge headers: one client sending a 64 MiB header, four sending unfinished 128 MiB headers,
   over and over;
9. malformed inputs of every kind the issue lists, over and over.

Printed, side by side with the idle run: the server's peak resident memory (from /proc), the
good client's p50 / p99 latency and their ratio to idle, 5xx replies (to anyone), the good
client's failures; then the status and error code each malformed input got.  Targets: peak
RSS <= 1.5 GB, p99 <= 3x idle, zero 5xx, every malformed input a 4xx with a specific code.

Usage::

    python benchmarks/abuse.py              # 5,000-cell requests, 30 per phase, full attacks
    python benchmarks/abuse.py --small      # 1,000 cells, 8 per phase, smaller attacks, short
                                            # server timeouts (what tests/ runs)
    python benchmarks/abuse.py --check      # exit 1 when a memory / 5xx / code target is
                                            # missed (--check-latency: the p99 target too)
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from load import free_port, synthetic  # benchmarks/load.py: the same cells and ports

KEY = "abuse-benchmark-key-0123456789"
ANNOTATE = "/v1/singlecell/annotate"
MARKERS = "/v1/singlecell/markers"
ARROW = "application/vnd.apache.arrow.stream"
RSS_TARGET_MB = 1536
SPECIFIC_CODES_EXCLUDED = {"internal_error", "http_error", "error", None}


# -- data and server ------------------------------------------------------------------------
@contextlib.contextmanager
def server(folder: Path, reference: Path, extra: list[str]) -> Iterator[tuple[int, int]]:
    """``(port, pid)`` of a server on loopback for the duration of the block."""
    import httpx

    keys = folder / "keys.txt"
    keys.write_text(KEY + "\n")
    port = free_port()
    cmd = [sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--api-keys", str(keys), "--reference", f"synthetic={reference}",
           "--log-level", "warning", *extra]
    with open(folder / "server.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {(folder / 'server.log').read_text()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- measuring ----------------------------------------------------------------------------------
def _status_kb(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


class PeakRss:
    """The server's peak resident size during a block: /proc's VmHWM (reset at the start
    where the kernel allows) and a 20 ms sampler of VmRSS, whichever is higher."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, _status_kb(self.pid, "VmRSS"))
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, _status_kb(self.pid, "VmHWM"))

    @property
    def mb(self) -> float:
        return self.peak_kb / 1024


@dataclass
class Tally:
    """Replies seen by the attackers (status -> count) and transport errors."""

    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: int) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)


# -- raw HTTP -------------------------------------------------------------------------------------
def post_head(path: str, length: int, content_type: str, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n{extra}\r\n").encode()


def read_reply(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(reply: bytes) -> int:
    try:
        return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0
    except ValueError:
        return 0


def code_of(reply: bytes) -> str | None:
    try:
        return str(json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def raw(port: int, data: bytes, *, timeout: float = 60.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        return read_reply(sock)


# -- the attacks ----------------------------------------------------------------------------------
Attack = Callable[[int, threading.Event, Tally], None]


def stalled_uploads(connections: int) -> Attack:
    def one(port: int, stop: threading.Event, tally: Tally) -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
                    sock.sendall(post_head(ANNOTATE, 1000 * 1024 * 1024, ARROW) + b"x" * 30)
                    tally.add(status_of(read_reply(sock)))  # held until the server gives up
            except OSError:
                tally.errors += 1
                time.sleep(0.1)

    def attack(port: int, stop: threading.Event, tally: Tally) -> None:
        threads = [threading.Thread(target=one, args=(port, stop, tally), daemon=True)
                   for _ in range(connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    return attack


def markers_bomb(clients: int) -> Attack:
    rng = np.random.default_rng(0)
    X = sp.random(2000, 20_000, density=0.0007, format="csr", random_state=rng)
    X.data = np.ceil(X.data * 5)
    body = json.dumps({"genes": [f"G{j}" for j in range(20_000)],
                       "matrix": {"indptr": X.indptr.tolist(), "indices": X.indices.tolist(),
                                  "data": X.data.tolist(), "shape": list(X.shape)},
                       "labels": [f"cell type {i}" for i in range(2000)]}).encode()

    def one(port: int, stop: threading.Event, tally: Tally) -> None:
        import httpx

        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                try:
                    reply = client.post(f"http://127.0.0.1:{port}{MARKERS}", content=body,
                                        headers={"Content-Type": "application/json",
                                                 "Authorization": f"Bearer {KEY}"})
                    tally.add(reply.status_code)
                except httpx.TransportError:
                    tally.errors += 1

    def attack(port: int, stop: threading.Event, tally: Tally) -> None:
        threads = [threading.Thread(target=one, args=(port, stop, tally), daemon=True)
                   for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    print(f"  (markers bomb body: {len(body) / 1024:.0f} KiB)")
    return attack


def huge_headers(full_mb: int, unfinished_mb: int) -> Attack:
    piece = b"a" * (1 << 20)

    def complete(port: int, stop: threading.Event, tally: Tally) -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: ")
                        for _ in range(full_mb):
                            sock.sendall(piece)
                        sock.sendall(b"\r\n\r\n")
                    tally.add(status_of(read_reply(sock)))
            except OSError:
                tally.errors += 1

    def unfinished(port: int, stop: threading.Event, tally: Tally) -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"POST /v1/singlecell/annotate HTTP/1.1\r\nX-Big: ")
                        for _ in range(unfinished_mb):
                            sock.sendall(piece)
                    tally.add(status_of(read_reply(sock)))  # never finished by this side
            except OSError:
                tally.errors += 1

    def attack(port: int, stop: threading.Event, tally: Tally) -> None:
        threads = [threading.Thread(target=complete, args=(port, stop, tally), daemon=True)]
        threads += [threading.Thread(target=unfinished, args=(port, stop, tally), daemon=True)
                    for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    return attack


def malformed_inputs() -> list[tuple[str, Callable[[int], tuple[int, str | None]]]]:
    """(name, send(port) -> (status, code)) for every malformed input of issue 12."""
    import httpx
    import pyarrow as pa

    from bridge._contract.wire import matrix_arrow_body

    m = synthetic(30, 60, seed=3)
    good = pa.ipc.open_stream(matrix_arrow_body(m)).read_all().combine_chunks()
    meta = dict(good.schema.metadata)
    offsets = good.column("values").chunk(0).offsets
    values = good.column("values").chunk(0).values

    def stream(table: pa.Table, metadata: dict[bytes, bytes] = meta,
               compression: str | None = None) -> bytes:
        table = table.replace_schema_metadata(metadata)
        sink = pa.BufferOutputStream()
        options = pa.ipc.IpcWriteOptions(compression=compression)
        with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()

    def values_as(array: pa.Array) -> pa.Table:
        return good.set_column(2, "values", pa.ListArray.from_arrays(offsets, array))

    good_body = stream(good)
    payload = {"genes": [str(g) for g in m.genes],
               "matrix": {"indptr": m.X.indptr.tolist(), "indices": m.X.indices.tolist(),
                          "data": m.X.data.tolist(), "shape": list(m.X.shape)},
               "model": "reference"}
    arrow_bodies = {
        "Arrow genes metadata nested 100k deep": stream(
            good, {**meta, b"scbridge.genes": b"[" * 100_000 + b"]" * 100_000}),
        "Arrow values list<float16>": stream(values_as(pa.array(
            values.to_numpy().astype(np.float16)))),
        "Arrow values list<string>": stream(values_as(pa.array(
            [str(v) for v in values.to_pylist()]))),
        "Arrow values list<int64>": stream(values_as(pa.array(
            values.to_numpy().astype(np.int64)))),
        "Arrow cell int64": stream(good.set_column(0, "cell", pa.array(range(30)))),
        "Arrow mixed list types": stream(good.set_column(2, "values", pa.LargeListArray
                                                         .from_arrays(pa.array(offsets.to_numpy()
                                                                               .astype(np.int64)),
                                                                      values))),
        "Arrow zstd-compressed": stream(good, compression="zstd"),
        "Arrow truncated": good_body[: len(good_body) // 2],
        "Arrow random bytes": os.urandom(4096),
    }
    json_bodies = {
        "JSON nested 100k deep": b"[" * 100_000 + b"]" * 100_000,
        "JSON 1e999999": b"1e999999",
        "JSON NaN values": json.dumps({**payload, "matrix": {**payload["matrix"], "data": [
            float("nan")] * len(payload["matrix"]["data"])}}).encode(),
        "JSON shape 1e12 x 1e12": json.dumps({**payload, "matrix": {
            **payload["matrix"], "shape": [10**12, 10**12]}}).encode(),
        "JSON indptr of text": json.dumps({**payload, "matrix": {
            **payload["matrix"], "indptr": ["a"] * 31}}).encode(),
        "JSON reference_atlas /etc/passwd": json.dumps(
            {**payload, "reference_atlas": "/etc/passwd"}).encode(),
    }
    cases: list[tuple[str, Callable[[int], tuple[int, str | None]]]] = []

    def via_httpx(path: str, body: bytes, headers: dict[str, str]
                  ) -> Callable[[int], tuple[int, str | None]]:
        def send(port: int) -> tuple[int, str | None]:
            reply = httpx.post(f"http://127.0.0.1:{port}{path}", content=body, timeout=120,
                               headers={"Authorization": f"Bearer {KEY}", **headers})
            try:
                code = reply.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = None
            return reply.status_code, code
        return send

    for name, body in arrow_bodies.items():
        cases.append((name, via_httpx(ANNOTATE, body, {"Content-Type": ARROW})))
    for name, body in json_bodies.items():
        cases.append((name, via_httpx(ANNOTATE, body, {"Content-Type": "application/json"})))
    cases.append(("gzip JSON body", via_httpx(
        ANNOTATE, gzip.compress(json.dumps(payload).encode()),
        {"Content-Type": "application/json", "Content-Encoding": "gzip"})))
    cases.append(("no Content-Type", via_httpx(ANNOTATE, b"{}", {})))
    cases.append(("markers labels all null", via_httpx(
        MARKERS, json.dumps({**payload, "labels": [None] * 30}).encode(),
        {"Content-Type": "application/json"})))
    cases.append(("markers one label per cell", via_httpx(
        MARKERS, json.dumps({**payload, "labels": [f"t{i}" for i in range(30)]}).encode(),
        {"Content-Type": "application/json"})))

    def raw_case(data: bytes) -> Callable[[int], tuple[int, str | None]]:
        def send(port: int) -> tuple[int, str | None]:
            reply = raw(port, data)
            return status_of(reply), code_of(reply)
        return send

    cases.append(("Content-Length 2,000 MiB", raw_case(post_head(ANNOTATE, 2000 << 20, ARROW))))
    cases.append(("1 MiB header", raw_case(
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")))
    cases.append(("path with %0A (log forging)", raw_case(
        b"GET /x%0A2099-01-01%20INFO%20forged HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")))
    return cases


def malformed_attack(cases: list[tuple[str, Callable[[int], tuple[int, str | None]]]],
                     seen: dict[str, tuple[int, str | None]]) -> Attack:
    def attack(port: int, stop: threading.Event, tally: Tally) -> None:
        first = True
        while first or not stop.is_set():  # every input at least once, then over and over
            first = False
            for name, send in cases:
                if stop.is_set() and name in seen:
                    break
                try:
                    status, code = send(port)
                except Exception as exc:
                    status, code = 0, type(exc).__name__
                tally.add(status)
                seen[name] = (status, code)

    return attack


# -- the good client ------------------------------------------------------------------------------
def good_client(port: int, body: bytes, n_requests: int) -> tuple[list[float], list[int]]:
    import httpx

    latencies, statuses = [], []
    with httpx.Client(timeout=300) as client:
        for _ in range(n_requests):
            started = time.perf_counter()
            reply = client.post(f"http://127.0.0.1:{port}{ANNOTATE}", content=body,
                                params={"model": "reference"},
                                headers={"Content-Type": ARROW, "Accept": ARROW,
                                         "Authorization": f"Bearer {KEY}"})
            latencies.append(time.perf_counter() - started)
            statuses.append(reply.status_code)
    return latencies, statuses


@dataclass
class Phase:
    name: str
    peak_mb: float
    p50: float
    p99: float
    good_failures: int
    server_errors: int
    attack_replies: dict[int, int]


def run_phase(name: str, port: int, pid: int, body: bytes, n_requests: int,
              attack: Attack | None) -> Phase:
    stop = threading.Event()
    tally = Tally()
    thread = None
    with PeakRss(pid) as rss:
        if attack is not None:
            thread = threading.Thread(target=attack, args=(port, stop, tally), daemon=True)
            thread.start()
            time.sleep(1.0)  # the attack is under way before the good client starts
        latencies, statuses = good_client(port, body, n_requests)
        stop.set()
    if thread is not None:
        thread.join(timeout=600)
    lat = np.asarray(latencies)
    return Phase(name, rss.mb, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)),
                 sum(s != 200 for s in statuses),
                 tally.server_errors + sum(s >= 500 for s in statuses), dict(tally.statuses))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a bounded run (the test suite's)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a memory, 5xx or error-code target is missed")
    parser.add_argument("--check-latency", action="store_true",
                        help="with --check: the p99 <= 3x idle target too")
    args = parser.parse_args(argv)

    from bridge import build_reference
    from bridge._contract.wire import matrix_arrow_body

    cells, requests = (1000, 8) if args.small else (5000, 30)
    header_mb, unfinished_mb = (4, 8) if args.small else (64, 128)
    server_args = (["--body-timeout", "3", "--body-deadline", "20", "--header-timeout", "5"]
                   if args.small else [])
    with tempfile.TemporaryDirectory(prefix="scbridge-abuse-") as tmp:
        folder = Path(tmp)
        reference = folder / "reference.parquet"
        build_reference(synthetic(3000, 2000, seed=1), label_column="label", out=reference,
                        genes_per_label=40)
        body = matrix_arrow_body(synthetic(cells, 2000, seed=2))
        cases = malformed_inputs()
        seen: dict[str, tuple[int, str | None]] = {}
        attacks: list[tuple[str, Attack | None]] = [
            ("idle", None),
            ("1 stalled uploads", stalled_uploads(24)),
            ("2 markers bomb", markers_bomb(2)),
            ("5 huge headers", huge_headers(header_mb, unfinished_mb)),
            ("9 malformed inputs", malformed_attack(cases, seen)),
        ]
        print(f"good client: {requests} requests of {cells:,} cells (Arrow, "
              f"{len(body) / 1e6:.1f} MB) per phase; server: defaults {' '.join(server_args)}")
        phases = []
        with server(folder, reference, server_args) as (port, pid):
            good_client(port, body, 2)  # warm-up: the first call lays out the model's genes
            for name, attack in attacks:
                phases.append(run_phase(name, port, pid, body, requests, attack))
                print(f"  {name}: done", flush=True)
    idle = phases[0]
    print()
    print(f"{'phase':<22} {'peak RSS MB':>11} {'p50 s':>7} {'p99 s':>7} {'p99/idle':>8} "
          f"{'good fails':>10} {'5xx':>5}  attack replies (status: count)")
    for p in phases:
        print(f"{p.name:<22} {p.peak_mb:>11.0f} {p.p50:>7.3f} {p.p99:>7.3f} "
              f"{p.p99 / idle.p99:>8.2f} {p.good_failures:>10} {p.server_errors:>5}  "
              f"{dict(sorted(p.attack_replies.items()))}")
    print()
    print(f"{'malformed input':<38} {'status':>6}  code")
    for name, _ in cases:
        status, code = seen.get(name, (0, "not sent"))
        print(f"{name:<38} {status:>6}  {code}")
    missed = []
    if max(p.peak_mb for p in phases) > RSS_TARGET_MB:
        missed.append(f"peak RSS above {RSS_TARGET_MB} MB")
    if any(p.server_errors for p in phases):
        missed.append("5xx replies")
    if any(p.good_failures for p in phases):
        missed.append("the good client failed")
    bad = [n for n, _ in cases if not (400 <= seen.get(n, (0, None))[0] < 500
                                       and seen.get(n, (0, None))[1] not in
                                       SPECIFIC_CODES_EXCLUDED)]
    if bad:
        missed.append(f"malformed inputs without a specific 4xx: {', '.join(bad)}")
    slow = [p.name for p in phases[1:] if p.p99 > 3 * idle.p99]
    print()
    print("targets: peak RSS <= 1,536 MB; p99 <= 3x idle; zero 5xx; every malformed input a "
          "4xx with a specific code")
    print("missed: " + ("; ".join(missed) if missed else "none")
          + (f"; p99 above 3x idle during: {', '.join(slow)}" if slow else ""))
    if args.check and (missed or (args.check_latency and slow)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

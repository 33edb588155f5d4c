"""Load on one annotation server: concurrent clients, each sending its own cells.

One real ``python -m bridge serve`` on loopback (reference model built here from synthetic
labelled cells); 8 client threads each send 50 requests of 5,000 cells (Arrow transport, the
real ``RemoteClient``, no retries so every error counts).  Every request carries its own cell
ids and one of 8 different matrices whose calls were computed locally beforehand, so a reply
that belongs to another request (wrong cells, or wrong labels) is counted as mixed up.

Printed: errors, mixed-up replies, p50 / p99 latency, throughput in cells/s.

Usage::

    python benchmarks/load.py                 # 8 clients x 50 requests x 5,000 cells
    python benchmarks/load.py --small         # 8 clients x 5 requests x 1,000 cells
    python benchmarks/load.py --transport json --workers 2 --threads 1
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

LABELS = ("B cell", "CD4 T cell", "CD8 T cell", "NK cell", "Monocyte")
KEY = "load-benchmark-key-0123456789"


def synthetic(n_cells: int, n_genes: int, seed: int) -> Any:
    """Counts where each label over-expresses its own block of 40 genes (~10% non-zero)."""
    import pyarrow as pa

    from bridge.matrix import CellMatrix

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(LABELS), n_cells)
    rate = np.full((n_cells, n_genes), 0.08, dtype=np.float32)
    for k in range(len(LABELS)):
        rate[labels == k, 40 * k: 40 * (k + 1)] = 3.0
    X = sp.csr_matrix(rng.poisson(rate).astype(np.float32))
    obs = pa.table({"label": [LABELS[k] for k in labels]})
    return CellMatrix(X, [f"s{seed}_{i}" for i in range(n_cells)],
                      [f"GENE{j}" for j in range(n_genes)], obs=obs, source=f"synthetic {seed}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(folder: Path, reference: Path, args: argparse.Namespace
                 ) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    keys = folder / "keys.txt"
    keys.write_text(KEY + "\n")
    port = free_port()
    cmd = [sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--api-keys", str(keys), "--reference", f"synthetic={reference}",
           "--workers", str(args.workers), "--threads", str(args.threads),
           "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start; see " + str(folder / "server.log"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="5 requests of 1,000 cells each")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=None, help="per client (default 50)")
    parser.add_argument("--cells", type=int, default=None, help="per request (default 5,000)")
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--transport", choices=["arrow", "json"], default="arrow")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--threads", type=int, default=1, help="server compute threads")
    args = parser.parse_args()
    n_requests = args.requests or (5 if args.small else 50)
    n_cells = args.cells or (1_000 if args.small else 5_000)

    from bridge import build_reference, call_cells
    from bridge._contract import CALLS_SCHEMA  # noqa: F401  (imports off the clock)
    from bridge.engines.remote import RemoteClient

    folder = Path(tempfile.mkdtemp(prefix="scbridge-load-"))
    reference = folder / "reference.parquet"
    build_reference(synthetic(3_000, args.genes, seed=999), label_column="label", out=reference,
                    genes_per_label=40)
    pool = [synthetic(n_cells, args.genes, seed=s) for s in range(8)]
    expected = [call_cells(m, model="reference", atlas=str(reference), progress=False)
                .column("label").to_pylist()
                for m in pool]
    nnz = np.mean([m.nnz for m in pool])
    print(f"{args.clients} clients x {n_requests} requests x {n_cells:,} cells "
          f"({args.genes:,} genes, ~{nnz / n_cells:.0f} non-zeros per cell), transport "
          f"{args.transport}; server: {args.workers} process(es) x {args.threads} compute "
          "threads", flush=True)

    proc, url = start_server(folder, reference, args)
    latencies: list[float] = []
    errors: list[str] = []
    mixed: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        from bridge.matrix import CellMatrix

        remote = RemoteClient(url, api_key=KEY, transport=args.transport, model="reference",
                              atlas="synthetic", chunk_size=n_cells, retries=0, timeout=600)
        for r in range(n_requests):
            k = (c + r) % len(pool)
            base = pool[k]
            cells = [f"c{c}r{r}_{i}" for i in range(base.n_cells)]
            matrix = CellMatrix(base.X, cells, base.genes, validate=False)
            started = time.perf_counter()
            try:
                table = remote.annotate(matrix, progress=False)
            except Exception as exc:  # every failure counts; keep going
                with lock:
                    errors.append(f"client {c} request {r}: {type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - started
            ok = (table.column("cell").to_pylist() == cells
                  and table.column("label").to_pylist() == expected[k])
            with lock:
                latencies.append(elapsed)
                if not ok:
                    mixed.append(f"client {c} request {r}")

    try:
        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait()

    total = args.clients * n_requests
    done = len(latencies)
    lat = np.array(latencies) * 1000
    print(f"requests: {total}, answered: {done}, errors: {len(errors)}, mixed-up replies: "
          f"{len(mixed)}")
    if done:
        print(f"latency ms: p50 {np.percentile(lat, 50):.0f}, p90 {np.percentile(lat, 90):.0f}, "
              f"p99 {np.percentile(lat, 99):.0f}, max {lat.max():.0f}")
    print(f"throughput: {done * n_cells / wall:,.0f} cells/s ({done / wall:.1f} requests/s, "
          f"{wall:.1f} s wall, {os.cpu_count()} CPU cores shared by clients and server)")
    for line in (errors + mixed)[:5]:
        print("  ", line)
    return 0 if not errors and not mixed else 1


if __name__ == "__main__":
    sys.exit(main())

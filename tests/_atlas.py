"""Small synthetic atlases for the scale tests: droplet-like counts over the marker engine's
genes, so the engine does real work, built in milliseconds and without R."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

import bridge

if TYPE_CHECKING:
    import distributed

# Blood types and a few of their markers: each cell expresses one set strongly.
PROGRAMS = {
    "B": ["MS4A1", "CD79A", "CD79B", "CD19", "BANK1"],
    "T": ["CD3E", "CD3D", "CD2", "IL7R", "TRAC"],
    "NK": ["NKG7", "GNLY", "KLRD1", "PRF1", "GZMB"],
    "monocyte": ["LYZ", "CD14", "S100A8", "S100A9", "FCN1"],
}
ROOT = Path(__file__).resolve().parents[1]


def counts(n_cells: int, *, seed: int = 0, n_genes: int = 800, prefix: str = "cell"
           ) -> bridge.CellMatrix:
    """Raw counts of ``n_cells`` cells (~300 detected genes each, a few MT- genes): the marker
    engine's genes, ``n_genes`` other genes, one blood programme per cell."""
    from bridge.engines._marker_model import load_marker_model

    rng = np.random.default_rng(seed)
    markers = sorted(set(load_marker_model(None, "human").genes))
    fillers = [f"GENE{i:04d}" for i in range(n_genes)]
    genes = np.asarray([*markers, "MT-CO1", "MT-ND1", "MT-CYB", *fillers], dtype=object)
    position = {g: j for j, g in enumerate(genes)}
    popularity = 1.0 / np.arange(1, len(genes) + 1) ** 0.7
    popularity = rng.permutation(popularity / popularity.sum())
    # Background reads fall on the non-marker genes only (random reads on every marker
    # gene would vote for random tissues): blood cells, a context every partition shares.
    popularity[:len(markers)] = 0.0
    popularity /= popularity.sum()
    X = sp.lil_matrix((n_cells, len(genes)), dtype=np.float32)
    rows = []
    programs = list(PROGRAMS.values())
    for i in range(n_cells):
        picked = np.unique(rng.choice(len(genes), size=340, p=popularity))
        values = rng.poisson(1.5, size=len(picked)) + 1
        row = dict(zip(picked.tolist(), values.tolist(), strict=True))
        for gene in programs[i % len(programs)]:
            if gene in position:
                row[position[gene]] = row.get(position[gene], 0) + int(rng.integers(8, 30))
        rows.append(row)
    for i, row in enumerate(rows):
        cols = sorted(row)
        X.rows[i] = cols
        X.data[i] = [float(row[c]) for c in cols]
    cells = [f"{prefix}{i:06d}" for i in range(n_cells)]
    return bridge.CellMatrix(X.tocsr(), cells, genes, value_kind="counts")


def wait_for(condition: Callable[[], bool], timeout: float = 120.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fails the test after ``timeout`` seconds (a
    safety net, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what or condition}")
        time.sleep(0.02)


def environment() -> dict[str, str]:
    """The environment for child processes: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def end(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """End a child process (and its process group when it leads one) and reap it."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            process.kill()
    process.wait(timeout=30)


@contextmanager
def local_dask_client() -> Iterator[distributed.Client]:
    """A client of a LocalCluster of two worker processes, one thread each (closed after)."""
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client

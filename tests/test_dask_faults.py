"""Fault tolerance on real Dask clusters: a worker process killed by its pid in the middle of
a run costs only its partitions, and the calls hold every cell exactly once, in order.

Two clusters: a ``LocalCluster`` (its nanny restarts the killed worker), and what a lab's
cluster looks like, a scheduler and two worker processes started as separate processes
(``python -m distributed.cli.dask_scheduler`` / ``dask_worker``) talking TCP on 127.0.0.1,
one of which is killed for good.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _atlas import counts, end, environment, local_dask_client, wait_for

import bridge
from bridge._partitioned import annotate_partitions, write_partitions
from bridge.cli import main

distributed = pytest.importorskip("distributed")

N_PARTITIONS = 8


@pytest.fixture(scope="module")
def atlas() -> bridge.CellMatrix:
    return counts(N_PARTITIONS * 400, seed=5)


@pytest.fixture(scope="module")
def parts(atlas: bridge.CellMatrix, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("faults") / "parts"
    write_partitions(atlas, folder, cells_per_partition=400)
    return folder


class Killer(threading.Thread):
    """Kills one worker by its pid once a partition is done and the worker is computing
    another, and records what was finished at that moment."""

    def __init__(self, client: distributed.Client, calls_dir: Path | None,
                 pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.client, self.calls_dir, self.pids = client, calls_dir, pids
        self.victim_keys: list[str] = []
        self.finished: dict[str, tuple[int, int]] = {}  # calls file -> (inode, mtime)
        self.killed_at = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            wait_for(self._ready, timeout=600, what="a worker computing a partition")
            address, keys = next((a, k) for a, k in self.client.processing().items()
                                 if k and a in self.pids)
            os.kill(self.pids[address], signal.SIGKILL)
            self.killed_at = time.time()
            self.victim_keys = [str(k) for k in keys]
            if self.calls_dir is not None:
                self.finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
                                 for p in self.calls_dir.glob("part-*.parquet")}
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _ready(self) -> bool:
        busy = any(keys and address in self.pids
                   for address, keys in self.client.processing().items())
        if self.calls_dir is None:
            return busy and self._some_done()
        return busy and any(self.calls_dir.glob("part-*.parquet"))

    def _some_done(self) -> bool:
        return any(state == "memory" for state in self.client.run_on_scheduler(
            lambda dask_scheduler: [t.state for t in dask_scheduler.tasks.values()]))


def _partition_index(key: str) -> int:
    return int(key.split("-")[1])  # annotate-00003-part-00003.arrow-<run>


@pytest.fixture
def local_cluster() -> Iterator[distributed.Client]:
    with local_dask_client() as client:
        yield client


@pytest.mark.parametrize("to_files", [True, False], ids=["calls_dir", "in_memory"])
def test_a_killed_local_worker_costs_only_its_partitions(
        atlas: bridge.CellMatrix, parts: Path, local_cluster: distributed.Client,
        tmp_path: Path, to_files: bool) -> None:
    client = local_cluster
    calls_dir = tmp_path / "calls" if to_files else None
    pids = client.run(os.getpid)
    killer = Killer(client, calls_dir, pids)
    killer.start()
    table = annotate_partitions(parts, client=client, calls_dir=calls_dir, progress=False)
    killer.join(timeout=60)
    assert killer.error is None, killer.error
    assert killer.victim_keys, "no worker was killed"
    assert table.column("cell").to_pylist() == atlas.cells.tolist()  # each once, in order
    if calls_dir is None:
        return
    # Partitions finished before the kill were not computed again; the killed worker's
    # partitions were, after the kill.
    for name, (inode, mtime) in killer.finished.items():
        stat = (calls_dir / name).stat()
        assert (stat.st_ino, stat.st_mtime_ns) == (inode, mtime), name
    lost = [f"part-{_partition_index(k):05d}.parquet" for k in killer.victim_keys]
    recomputed = [name for name in lost if name not in killer.finished]
    assert recomputed, "the killed worker had nothing in flight"
    for name in recomputed:
        assert (calls_dir / name).stat().st_mtime_ns >= killer.killed_at * 1e9 - 1e6
    assert sorted(p.name for p in calls_dir.iterdir()) == \
        [f"part-{i:05d}.parquet" for i in range(N_PARTITIONS)]


def _start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as handle:
        return subprocess.Popen(command, env=environment(), stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)


def test_a_scheduler_and_two_worker_processes_lose_one(
        atlas: bridge.CellMatrix, parts: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    scheduler_file = tmp_path / "scheduler.json"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(_start([sys.executable, "-m", "distributed.cli.dask_scheduler",
                                 "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                 "--scheduler-file", str(scheduler_file)],
                                tmp_path / "scheduler.log"))
        wait_for(scheduler_file.exists, what="the scheduler's address file")
        wait_for(lambda: bool(scheduler_file.read_text().strip()), what="the address")
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for name in ("a", "b"):
            # No nanny: a killed worker stays dead, as when a machine is lost.
            processes.append(_start([sys.executable, "-m", "distributed.cli.dask_worker",
                                     address, "--host", "127.0.0.1", "--nthreads", "1",
                                     "--no-nanny", "--no-dashboard", "--name", name],
                                    tmp_path / f"worker-{name}.log"))
        with distributed.Client(address) as client:
            client.wait_for_workers(2, timeout=120)
            pids = client.run(os.getpid)
            assert set(pids.values()) == {p.pid for p in processes[1:]}
            calls_dir = tmp_path / "calls.parts"
            killer = Killer(client, calls_dir, pids)
            killer.start()
            out = tmp_path / "calls.parquet"
            assert main(["annotate", str(parts), "--scheduler", address, "--out",
                         str(out)]) == 0
            killer.join(timeout=60)
            assert killer.error is None, killer.error
            assert killer.victim_keys, "no worker was killed"
            assert len(client.scheduler_info()["workers"]) == 1
        calls = pq.read_table(out)
        assert calls.column("cell").to_pylist() == atlas.cells.tolist()
        assert f"{atlas.n_cells:,} cells" in capsys.readouterr().out
        for name, (inode, mtime) in killer.finished.items():
            stat = (calls_dir / name).stat()
            assert (stat.st_ino, stat.st_mtime_ns) == (inode, mtime), name
    finally:
        for process in reversed(processes):
            end(process)

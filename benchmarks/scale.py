"""Atlas scale: time and peak memory of annotating 100,000 / 300,000 / 1,000,000 resampled
real cells, against CellTypist on the same data as far as it fits, and a run killed half way
then resumed.

    python benchmarks/scale.py                                 # 100k, 300k and 1M cells
    python benchmarks/scale.py --sizes 100000 300000 --h5ad    # also a backed .h5ad
    python benchmarks/scale.py --sizes 20000 --workdir /tmp/scale-small   # a quick look

The cells are real: the 3,500 FACS-sorted PBMCs of ../shared/data, pooled by type (the sum of
``k`` cells of one sorted population, ``k`` chosen so that a cell holds ~2,500 values, as a
deeply sequenced atlas does; 1,000,000 such cells hold ~2.5e9 values, beyond 2**31) into a
pool of 20,000 profiles, which the atlas resamples.  Everything is built on disk by streaming,
never in memory, in ``--workdir`` (deleted at the end unless ``--keep``): the raw CSR arrays
as flat files, then in turn

* a folder of 50,000-cell Arrow CSR partitions, annotated by ``scbridge annotate DIR``
  (Dask ``LocalCluster`` of ``--workers`` processes, calls written per partition and
  streamed into ``--out``); at the largest size the same run is killed (SIGKILL to its
  process group) once half of the partitions are done and resumed with ``--resume``, in
  ``--repeats`` pairs of a full and a resumed run (the median of the pairs' ratios is the
  figure: one pair's ratio moves by +-10% with the load of a shared machine);
* one Arrow CSR file written by ``bridge.write`` in one record batch (``large_list``, 64-bit
  offsets, past 2**31 values), annotated by ``scbridge annotate FILE`` in one process,
  streamed chunk by chunk; CellTypist (1.7.1; a model trained here on the sorted PBMCs,
  ``feature_selection=True``) annotates the same file, log-normalised in memory as it
  requires, where its estimated memory fits;
* with ``--h5ad``, a backed ``.h5ad`` (int64 ``indptr``) annotated the same way.

Each run starts with its input out of the page cache (``posix_fadvise(DONTNEED)`` on our own
files: an atlas larger than memory is read from disk) and is a separate process tree; a
sampler reads ``/proc/<pid>/status`` of every process
in the tree 5 times a second and sums ``VmRSS`` (everything resident, the memory-mapped input
included) and ``RssAnon + RssShmem`` (memory beyond the memory map), and the CPU time of every
process of the tree (steadier than wall time on a shared machine).  QC is off (``--no-qc``;
``--qc`` turns it on) because CellTypist does none and the doublet step dominates otherwise.
Every output is checked: one row per cell, every cell once, in input order.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the repository (searched upwards, so worktrees find it too), unless
# SCBRIDGE_SHARED_DATA points elsewhere.
SHARED = (Path(os.environ["SCBRIDGE_SHARED_DATA"]) if os.environ.get("SCBRIDGE_SHARED_DATA")
          else next((p / "shared" / "data" for p in ROOT.parents
                     if (p / "shared" / "data").is_dir()), ROOT.parent / "shared" / "data"))
GIB = 2**30
BLOCK = 50_000


# -- memory of a process tree -----------------------------------------------------------------
def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/*/stat parent ids)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _status(pid: int) -> dict[str, int]:
    values = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssShmem", "RssFile"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TreeSampler(threading.Thread):
    """Peak resident memory summed over a process and all its descendants, and the CPU time
    they used (the last reading of each process: a shared machine stretches wall time, not
    CPU time)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_anon = 0
        self.most_processes = 0
        self.cpu: dict[int, float] = {}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            pids = [self.pid, *_children(self.pid)]
            status = [_status(p) for p in pids]
            rss = sum(s.get("VmRSS", 0) for s in status)
            anon = sum(s.get("RssAnon", 0) + s.get("RssShmem", 0) for s in status)
            self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)
            self.most_processes = max(self.most_processes, sum(1 for s in status if s))
            for pid in pids:
                used = _cpu_seconds(pid)
                if used is not None:
                    self.cpu[pid] = max(self.cpu.get(pid, 0.0), used)
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


@dataclass
class Run:
    name: str
    n_cells: int
    seconds: float
    peak_rss: int
    peak_anon: int
    processes: int
    cpu_seconds: float = float("nan")
    note: str = ""


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def evict(path: Path) -> None:
    """Drop a file's (or a folder's files') pages from the page cache: flushed, then
    ``posix_fadvise(DONTNEED)``; only our own files, no privileges needed."""
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if not file.is_file():
            continue
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(name: str, n_cells: int, command: Sequence[str], *, log: Path,
            inputs: Sequence[Path] = ()) -> Run:
    """Run ``command`` as its own process tree, its ``inputs`` read from disk (out of the page
    cache, as an atlas larger than memory is); wall time, CPU time and peak memory of the
    tree."""
    for path in inputs:
        evict(path)
    start = time.perf_counter()
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, env=environment(), stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        sampler = TreeSampler(process.pid)
        sampler.start()
        code = process.wait()
        sampler.stop()
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{name} failed ({code}); see {log}:\n{log.read_text()[-3000:]}")
    return Run(name, n_cells, seconds, sampler.peak_rss, sampler.peak_anon,
               sampler.most_processes, sum(sampler.cpu.values()))


# -- the data ---------------------------------------------------------------------------------
def sorted_pbmc() -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Counts, genes and sorted population of the 3,500 FACS-sorted PBMCs."""
    import pandas as pd

    import bridge

    matrix = bridge.read(SHARED / "sorted_pbmc_seurat.rds")
    labels = pd.read_csv(SHARED / "sorted_pbmc_labels.csv", index_col=0)
    types = labels.loc[matrix.cells.astype(str), "trueLabel"].to_numpy()
    return matrix.X.astype(np.float32).tocsr(), matrix.genes, types


def pooled_profiles(X: sp.csr_matrix, types: np.ndarray, n_profiles: int, values_per_cell: int,
                    seed: int = 0) -> tuple[sp.csr_matrix, int]:
    """``n_profiles`` cells, each the sum of ``k`` sorted cells of one population, with ``k``
    chosen to give ~``values_per_cell`` non-zeros a cell."""
    rng = np.random.default_rng(seed)
    members = {t: np.flatnonzero(types == t) for t in np.unique(types)}

    def pool(n: int, k: int) -> sp.csr_matrix:
        kinds = rng.choice(list(members), n)
        picked = np.stack([rng.choice(members[t], k) for t in kinds])
        rows = np.repeat(np.arange(n), k)
        S = sp.csr_matrix((np.ones(picked.size, np.float32), (rows, picked.ravel())),
                          shape=(n, X.shape[0]))
        out = (S @ X).tocsr()
        out.sort_indices()
        return out

    k = min(range(1, 40), key=lambda k: abs(np.diff(pool(300, k).indptr).mean()
                                            - values_per_cell))
    return pool(n_profiles, k), k


def write_raw(folder: Path, n_cells: int, profiles: sp.csr_matrix, seed: int) -> int:
    """The atlas's CSR arrays as flat files (data.f32, indices.i32, indptr.i64), streamed
    block by block; returns nnz."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    with open(folder / "data.f32", "wb") as data, open(folder / "indices.i32", "wb") as idx, \
            tqdm(total=n_cells, unit="cells", desc="raw CSR", leave=False) as bar:
        for start in range(0, n_cells, BLOCK):
            stop = min(start + BLOCK, n_cells)
            block = profiles[rng.integers(0, profiles.shape[0], stop - start)]
            data.write(memoryview(np.ascontiguousarray(block.data, np.float32)))
            idx.write(memoryview(np.ascontiguousarray(block.indices, np.int32)))
            # int64 before adding: numpy 1.x would keep int32 and wrap past 2**31 values.
            indptr[start + 1: stop + 1] = indptr[start] + block.indptr[1:].astype(np.int64)
            bar.update(stop - start)
    indptr.tofile(folder / "indptr.i64")
    return int(indptr[-1])


def cell_ids(n_cells: int) -> np.ndarray:
    return np.asarray([f"c{i:07d}" for i in range(n_cells)], dtype=object)


def raw_matrix(folder: Path, n_cells: int, genes: np.ndarray) -> Any:
    """The raw arrays, memory-mapped, as one CellMatrix (no copy)."""
    from bridge.matrix import CellMatrix, csr_view

    data = np.memmap(folder / "data.f32", dtype=np.float32, mode="r")
    indices = np.memmap(folder / "indices.i32", dtype=np.int32, mode="r")
    indptr = np.fromfile(folder / "indptr.i64", dtype=np.int64)
    X = csr_view(data, indices, indptr, (n_cells, len(genes)))
    X.has_sorted_indices = True
    return CellMatrix(X, cell_ids(n_cells), genes, value_kind="counts",
                      source=f"{n_cells} resampled sorted PBMCs", validate=False)


def write_h5ad(folder: Path, path: Path, n_cells: int, genes: np.ndarray) -> None:
    """A backed-readable .h5ad with int64 indptr, its X copied block by block."""
    import anndata
    import h5py
    import pandas as pd

    skeleton = anndata.AnnData(X=sp.csr_matrix((n_cells, len(genes)), dtype=np.float32),
                               obs=pd.DataFrame(index=cell_ids(n_cells).astype(str)),
                               var=pd.DataFrame(index=genes.astype(str)))
    skeleton.write_h5ad(path)
    data = np.memmap(folder / "data.f32", dtype=np.float32, mode="r")
    indices = np.memmap(folder / "indices.i32", dtype=np.int32, mode="r")
    step = 1 << 26
    with h5py.File(path, "r+") as handle:
        X = handle["X"]
        for name, source in (("data", data), ("indices", indices)):
            del X[name]
            target = X.create_dataset(name, shape=source.shape, dtype=source.dtype)
            for start in range(0, len(source), step):
                target[start: start + step] = source[start: start + step]
        del X["indptr"]
        X.create_dataset("indptr", data=np.fromfile(folder / "indptr.i64", dtype=np.int64))


def check_calls(path: Path, n_cells: int) -> Any:
    """Every cell once, in input order; returns the labels."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["cell", "label"])
    cells = table.column("cell").to_numpy(zero_copy_only=False)
    if len(cells) != n_cells or not np.array_equal(cells, cell_ids(n_cells)):
        raise SystemExit(f"{path}: the calls do not hold every cell once, in order")
    return table.column("label").cast(pa.string())


# -- CellTypist -------------------------------------------------------------------------------
def train_celltypist(X: sp.csr_matrix, genes: np.ndarray, types: np.ndarray, path: Path
                     ) -> int:
    import warnings

    import anndata
    import celltypist
    import pandas as pd

    from bridge.numerics import log_normalize

    adata = anndata.AnnData(log_normalize(X, "counts", dtype=np.float32),
                            obs=pd.DataFrame({"type": types},
                                             index=[f"t{i}" for i in range(X.shape[0])]),
                            var=pd.DataFrame(index=genes.astype(str)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = celltypist.train(adata, labels="type", feature_selection=True, n_jobs=1,
                                 max_iter=200, check_expression=False)
    model.write(str(path))
    return len(model.features)


def celltypist_worker(arrow: str, model: str, out: str) -> None:
    """(In its own process.) CellTypist on the Arrow file, log-normalised in memory."""
    import warnings

    import anndata
    import celltypist
    import pandas as pd

    import bridge
    from bridge.matrix import csr_view
    from bridge.numerics import log_normalize

    matrix = bridge.read(arrow, validate=False)  # memory-mapped, no copy
    lognorm = log_normalize(matrix.X, "counts", dtype=np.float32)
    X = csr_view(lognorm.data, lognorm.indices, lognorm.indptr, lognorm.shape)
    adata = anndata.AnnData(X, obs=pd.DataFrame(index=matrix.cells.astype(str)),
                            var=pd.DataFrame(index=matrix.genes.astype(str)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = celltypist.annotate(adata, model=model, majority_voting=False)
    labels = result.predicted_labels
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"cell": labels.index.astype(str).to_numpy(),
                             "label": labels["predicted_labels"].astype(str).to_numpy()}), out)


def celltypist_fits(n_cells: int, nnz: int, model_genes: int) -> tuple[bool, float]:
    """Whether CellTypist's estimated peak fits in 80% of the memory available now: a
    log-normalised CSR copy, its model-gene columns, and the dense scaled matrix (cells x
    model genes, float64) with one temporary of the same size."""
    need = nnz * 12 + nnz * 12 * min(1.0, model_genes / 8846) + 2 * n_cells * model_genes * 8
    with open("/proc/meminfo") as handle:
        available = next(int(line.split()[1]) * 1024 for line in handle
                         if line.startswith("MemAvailable"))
    return need < 0.8 * available, need


# -- the runs ---------------------------------------------------------------------------------
def scbridge(*args: str) -> list[str]:
    return [sys.executable, "-m", "bridge", "annotate", *args]


def killed_then_resumed(parts: Path, work: Path, n_cells: int, n_parts: int,
                        options: list[str]) -> tuple[float, int, Run]:
    """A run killed (SIGKILL, whole process tree) once half of the partitions are done, then
    the same command with --resume."""
    calls_dir, out = work / "resume.parts", work / "resume.parquet"
    command = scbridge(str(parts), "--calls-dir", str(calls_dir), "--out", str(out), *options)
    evict(parts)
    start = time.perf_counter()
    with open(work / "killed.log", "wb") as log:
        process = subprocess.Popen(command, env=environment(), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while (len(list(calls_dir.glob("part-*.parquet"))) if calls_dir.is_dir() else 0) \
                    < n_parts // 2:
                if process.poll() is not None:
                    raise SystemExit("the run to be killed ended first")
                time.sleep(0.1)
            os.killpg(process.pid, signal.SIGKILL)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    killed_after = time.perf_counter() - start
    done = len(list(calls_dir.glob("part-*.parquet")))
    resumed = measure("partitions, resumed", n_cells, [*command, "--resume"],
                      log=work / "resumed.log", inputs=[parts, calls_dir])
    return killed_after, done, resumed


def streamed_run(name: str, source: Path, stem: Path, n_cells: int, options: Sequence[str],
                 labels: Any) -> Run:
    """``scbridge annotate`` of one file streamed in one process (calls in ``stem``.parquet,
    its log in ``stem``.log), checked against the partitioned run's labels."""
    out = stem.with_suffix(".parquet")
    run = measure(name, n_cells, scbridge(str(source), "--out", str(out), *options),
                  log=stem.with_suffix(".log"), inputs=[source])
    same = check_calls(out, n_cells).equals(labels)
    run.note = f"calls {'==' if same else '!='} partitioned run's"
    return _report(run)


def one_size(n_cells: int, profiles: sp.csr_matrix, genes: np.ndarray, args: argparse.Namespace,
             model: Path | None, model_genes: int, resume: bool) -> list[Run]:
    import bridge
    from bridge._partitioned import write_partitions

    work = args.workdir / f"cells{n_cells}"
    raw = work / "raw"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    options = ["--workers", str(args.workers), "--quiet"] + ([] if args.qc else ["--no-qc"])
    runs: list[Run] = []
    start = time.perf_counter()
    nnz = write_raw(raw, n_cells, profiles, seed=n_cells)
    matrix = raw_matrix(raw, n_cells, genes)
    print(f"\n{n_cells:,} cells, {nnz:,} values ({nnz / n_cells:,.0f} a cell; "
          f"{'beyond' if nnz > 2**31 - 1 else 'within'} 2**31): raw CSR on disk in "
          f"{time.perf_counter() - start:.0f} s", flush=True)

    # 1. A folder of partitions on a local Dask cluster.
    start = time.perf_counter()
    parts = work / "parts"
    write_partitions(matrix, parts, cells_per_partition=args.cells_per_partition)
    n_parts = len(list(parts.iterdir()))
    print(f"  {n_parts} partitions written in {time.perf_counter() - start:.0f} s "
          f"({_size(parts) / GIB:.1f} GiB)", flush=True)
    out = work / "calls.parquet"
    run = measure("partitions (Dask)", n_cells, scbridge(str(parts), "--out", str(out),
                                                         *options), log=work / "full.log",
                  inputs=[parts])
    labels = check_calls(out, n_cells)
    runs.append(_report(run))
    for repeat in range(args.repeats if resume else 0):
        # Full and resumed runs in pairs, side by side in time: on a shared machine the
        # ratio of a pair is steadier than either time, and the summary takes the median.
        tag = f" #{repeat + 1}" if repeat else ""
        if repeat:
            run = measure(f"partitions (Dask){tag}", n_cells,
                          scbridge(str(parts), "--out", str(out), *options),
                          log=work / "full.log", inputs=[parts])
            check_calls(out, n_cells)
            runs.append(_report(run))
        shutil.rmtree(work / "resume.parts", ignore_errors=True)
        killed_after, done, resumed = killed_then_resumed(parts, work, n_cells, n_parts,
                                                          options)
        same = check_calls(work / "resume.parquet", n_cells).equals(labels)
        resumed.name += tag
        resumed.note = (f"killed after {killed_after:.0f} s with {done} of {n_parts} "
                        f"partitions done; resumed calls {'==' if same else '!='} full run's")
        runs.append(_report(resumed))
    shutil.rmtree(parts)
    shutil.rmtree(work / "resume.parts", ignore_errors=True)

    # 2. One Arrow file in one record batch (64-bit offsets past 2**31 values), streamed.
    start = time.perf_counter()
    single = work / "atlas.arrow"
    bridge.write(matrix, single)
    import pyarrow as pa

    list_type = pa.ipc.open_file(single).schema.field("indices").type
    print(f"  one Arrow file written in {time.perf_counter() - start:.0f} s "
          f"({single.stat().st_size / GIB:.1f} GiB, {list_type})", flush=True)
    runs.append(streamed_run("one .arrow file (streamed)", single, work / "file", n_cells,
                             options[2:], labels))
    if model is not None:
        fits, need = celltypist_fits(n_cells, nnz, model_genes)
        if fits:
            run = measure("CellTypist (same .arrow)", n_cells,
                          [sys.executable, __file__, "--celltypist-worker", str(single),
                           str(model), str(work / "celltypist.parquet")],
                          log=work / "celltypist.log", inputs=[single])
            check_calls(work / "celltypist.parquet", n_cells)
            runs.append(_report(run))
        else:
            print(f"  CellTypist: skipped, estimated peak {need / GIB:.1f} GiB does not fit "
                  "in 80% of the memory available now", flush=True)
            runs.append(Run("CellTypist (same .arrow)", n_cells, float("nan"), 0, 0, 0,
                            note=f"does not fit: ~{need / GIB:.0f} GiB needed"))
    single.unlink()

    # 3. A backed .h5ad with int64 indptr.
    if args.h5ad:
        start = time.perf_counter()
        h5ad = work / "atlas.h5ad"
        write_h5ad(raw, h5ad, n_cells, genes)
        print(f"  .h5ad written in {time.perf_counter() - start:.0f} s", flush=True)
        runs.append(streamed_run(".h5ad (backed, streamed)", h5ad, work / "h5ad", n_cells,
                                 options[2:], labels))
        h5ad.unlink()
    if not args.keep:
        shutil.rmtree(work)
    return runs


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def _report(run: Run) -> Run:
    print(f"  {run.name:<28} {run.seconds:8.1f} s ({run.cpu_seconds:6.1f} s CPU)  peak RSS "
          f"{run.peak_rss / GIB:6.2f} GiB, "
          f"beyond the map {run.peak_anon / GIB:5.2f} GiB ({run.processes} processes)"
          + (f"  {run.note}" if run.note else ""), flush=True)
    return run


def summary(runs: list[Run]) -> None:
    print("\n| run | cells | time (s) | CPU (s) | cells/s | peak RSS (GiB) | beyond the map (GiB) "
          "| note |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in runs:
        rate = f"{r.n_cells / r.seconds:,.0f}" if r.seconds == r.seconds else "-"
        print(f"| {r.name} | {r.n_cells:,} | {r.seconds:.1f} | {r.cpu_seconds:.1f} | {rate} | "
              f"{r.peak_rss / GIB:.2f} | {r.peak_anon / GIB:.2f} | {r.note} |")
    by = {(r.name, r.n_cells): r for r in runs}
    sizes = sorted({r.n_cells for r in runs})
    print()
    for name in ("partitions (Dask)", "one .arrow file (streamed)", ".h5ad (backed, streamed)"):
        for small, large in itertools.pairwise(sizes):
            a, b = by.get((name, small)), by.get((name, large))
            if a and b:
                print(f"{name}: {large:,} cells take {b.seconds / a.seconds:.2f}x the time "
                      f"({b.cpu_seconds / a.cpu_seconds:.2f}x the CPU time) of {small:,} "
                      f"({large / small:.2f}x the cells; target for 1M vs 300k: <= 3.5x); "
                      "peak beyond the map "
                      f"{a.peak_anon / GIB:.2f} -> {b.peak_anon / GIB:.2f} GiB (target <= 2)")
    for n in sizes:
        ours, peer = by.get(("one .arrow file (streamed)", n)), by.get(
            ("CellTypist (same .arrow)", n))
        dask = by.get(("partitions (Dask)", n))
        if ours and peer and peer.seconds == peer.seconds:
            print(f"{n:,} cells: scbridge (one file, one process) {ours.seconds:.1f} s vs "
                  f"CellTypist {peer.seconds:.1f} s = {ours.seconds / peer.seconds:.2f}x the "
                  f"time; peak RSS {ours.peak_rss / GIB:.2f} vs {peer.peak_rss / GIB:.2f} GiB = "
                  f"{ours.peak_rss / peer.peak_rss:.2f}x; beyond the map "
                  f"{ours.peak_anon / GIB:.2f} vs {peer.peak_anon / GIB:.2f} GiB")
            if dask:
                print(f"{'':>{len(f'{n:,}')}}        scbridge (Dask partitions) "
                      f"{dask.seconds:.1f} s = {dask.seconds / peer.seconds:.2f}x CellTypist's")
        pairs = [(by[(f"partitions (Dask){t}", n)], by[(f"partitions, resumed{t}", n)])
                 for t in ["", *(f" #{k}" for k in range(2, 10))]
                 if (f"partitions (Dask){t}", n) in by and (f"partitions, resumed{t}", n) in by]
        for full, resumed in pairs:
            print(f"{n:,} cells: the resumed run took {resumed.seconds:.1f} s = "
                  f"{resumed.seconds / full.seconds:.0%} of the full run's {full.seconds:.1f} s"
                  + ("" if len(pairs) > 1 else " (target < 60%)"))
        if len(pairs) > 1:
            ratio = float(np.median([r.seconds / f.seconds for f, r in pairs]))
            print(f"{n:,} cells: resumed / full, median of {len(pairs)} pairs: {ratio:.0%} "
                  "(target < 60%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--values-per-cell", type=int, default=2_500)
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    parser.add_argument("--cells-per-partition", type=int, default=50_000)
    parser.add_argument("--workdir", type=Path, default=Path("/work/scratch/scbridge-scale"))
    parser.add_argument("--resume-at", type=int, default=None,
                        help="sizes from which to run the killed-and-resumed run "
                             "(default: the largest only)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="full and killed-then-resumed runs, in pairs, at the resume sizes "
                             "(the summary gives each pair's ratio and their median)")
    parser.add_argument("--h5ad", action="store_true", help="also a backed .h5ad")
    parser.add_argument("--no-celltypist", action="store_true")
    parser.add_argument("--qc", action="store_true", help="QC columns on (slow: doublets)")
    parser.add_argument("--keep", action="store_true", help="keep the data sets")
    parser.add_argument("--results", type=Path, help="also write the runs as JSON here")
    parser.add_argument("--celltypist-worker", nargs=3, metavar=("ARROW", "MODEL", "OUT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--summarize", type=Path, metavar="JSON",
                        help="only print the summary of runs saved with --results")
    args = parser.parse_args()
    if args.celltypist_worker:
        celltypist_worker(*args.celltypist_worker)
        return
    if args.summarize:
        summary([Run(**r) for r in json.loads(args.summarize.read_text())])
        return
    sys.path.insert(0, str(ROOT))
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPU cores (shared: expect noisy times); data in {args.workdir}")
    start = time.perf_counter()
    X, genes, types = sorted_pbmc()
    profiles, k = pooled_profiles(X, types, 20_000, args.values_per_cell)
    print(f"pool: 20,000 profiles, each the sum of {k} sorted PBMCs of one population, "
          f"{np.diff(profiles.indptr).mean():,.0f} values a cell ({time.perf_counter() - start:.0f}"
          " s)")
    model, model_genes = None, 0
    if not args.no_celltypist:
        model = args.workdir / "celltypist_sorted_pbmc.pkl"
        start = time.perf_counter()
        model_genes = train_celltypist(X, genes, types, model)
        print(f"CellTypist model: trained on the 3,500 sorted PBMCs, {model_genes:,} genes "
              f"({time.perf_counter() - start:.0f} s, not counted)")
    resume_at = args.resume_at or max(args.sizes)
    runs: list[Run] = []
    try:
        for n in args.sizes:
            runs += one_size(n, profiles, genes, args, model, model_genes, n >= resume_at)
            if args.results:
                args.results.write_text(json.dumps([r.__dict__ for r in runs], indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    summary(runs)
    print(json.dumps([r.__dict__ for r in runs]))


if __name__ == "__main__":
    main()

"""Data sets larger than one machine: partitioned Arrow CSR files annotated with Dask.

A partitioned data set is a folder of Arrow CSR files (docs/format.md), each a contiguous run
of cells, in file-name order: :func:`write_partitions` writes one from anything
:func:`bridge.read` accepts.  :func:`annotate_partitions` runs one ``dask.distributed`` task
per partition (each worker memory-maps its own file, so only file names and result tables
travel) and gathers the calls in partition order, so the result is the table
:func:`bridge.annotate` gives for the whole data set.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from ._contract import with_metadata
from ._errors import (
    BridgeError,
    InputError,
    MissingDependencyError,
    RemoteError,
    UnsupportedError,
)
from ._partition_calls import (
    calls_file,
    cells_checksum,
    check_partition_calls,
    options_fingerprint,
    read_partition_calls,
    remove_calls_files,
    remove_temporaries,
    write_partition_calls,
)
from .engines import DEFAULT_CHUNK_SIZE
from .io.partitions import PARTITION_SUFFIXES, Partition, list_partitions
from .matrix import CellMatrix

if TYPE_CHECKING:
    from distributed import Client

    from .numerics import ValueKind

__all__ = ["PartitionCalls", "annotate_partitions", "partition_paths", "write_partition_calls_dir",
           "write_partitions"]

logger = logging.getLogger(__name__)

DEFAULT_CELLS_PER_PARTITION = 100_000


def write_partitions(source: Any, folder: str | os.PathLike[str], *,
                     cells_per_partition: int = DEFAULT_CELLS_PER_PARTITION,
                     overwrite: bool = False, assay: str | None = None,
                     layer: str | None = None, **write_options: Any) -> list[Path]:
    """Write ``source`` as a partitioned data set: ``folder/part-00000.arrow``, ... .

    Each partition holds at most ``cells_per_partition`` consecutive cells (fewer at the end,
    or at an Arrow source's batch boundaries) with their metadata columns; ``write_options``
    go to :func:`bridge.write`.  ``.h5ad`` and Arrow sources are streamed (backed mode), so the
    data set need not fit in memory.  A folder that already holds partitions is refused unless
    ``overwrite=True`` (mixing two data sets would give wrong calls, silently).
    """
    from .io import read_chunks, write

    if cells_per_partition < 1:
        msg = f"cells_per_partition must be >= 1, got {cells_per_partition}."
        raise InputError(msg)
    out = Path(folder)
    existing = _arrow_files(out) if out.is_dir() else []
    if existing and not overwrite:
        msg = (f"{out} already holds {len(existing)} Arrow file(s) ({existing[0].name}, ...); "
               "choose an empty folder or pass overwrite=True to replace them.")
        raise InputError(msg)
    for path in existing:
        path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(source, CellMatrix):
        parts = source.iter_chunks(cells_per_partition)
    else:
        # .h5ad (backed) and Arrow sources stream: the data set need not fit in memory.
        read_options = {k: v for k, v in (("assay", assay), ("layer", layer)) if v is not None}
        parts = read_chunks(source, cells_per_partition, **read_options)
    paths = []
    for k, part in enumerate(parts):
        paths.append(write(part, out / f"part-{k:05d}.arrow", **write_options))
    logger.info("wrote %d partitions of up to %d cells to %s", len(paths),
                cells_per_partition, out)
    return paths


def partition_paths(partitions: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
                    ) -> list[str]:
    """The partition files of ``partitions``: a folder (its ``.arrow`` / ``.arrows`` files in
    name order), a glob pattern (matches in name order) or a sequence of paths (as given);
    each a local path or an fsspec URL (``s3://bucket/atlas/``)."""
    return [p.url for p in list_partitions(partitions)]


@dataclass(frozen=True)
class PartitionCalls:
    """What a task reports for a partition whose calls went to a calls file.

    ``reused``: the file was there already, complete and valid (written by an earlier run
    that is resumed, or earlier in this run by a worker that died before its result was
    fetched), and was not computed again.
    """

    partition: str
    calls: str
    n_cells: int
    reused: bool
    seconds: float


def annotate_partitions(
    partitions: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
    client: Client | str | None = None, model: str = "markers", atlas: str | None = None,
    min_confidence: float | None = None, qc: bool = True, n_workers: int | None = None,
    calls_dir: str | os.PathLike[str] | None = None, resume: bool = False,
    chunk_size: int | None = None, value_kind: ValueKind | None = None, progress: bool = True,
    **engine_params: Any,
) -> pa.Table:
    """Annotate a partitioned data set with Dask, one task per partition, calls in order.

    Parameters
    ----------
    partitions
        A folder of Arrow CSR files, a glob pattern or a list of paths (see
        :func:`partition_paths`), local or fsspec URLs; every worker must see the same paths
        (a shared file system or an object store).
    client
        A ``distributed.Client``, or a scheduler address (``"tcp://host:8786"``).  ``None``
        starts a ``LocalCluster`` of ``n_workers`` processes for this call and closes it after.
    model, atlas, min_confidence, qc, engine_params
        As for :func:`bridge.annotate` (per-cell QC metrics; doublet scores come from
        :func:`bridge.qc`).  Each partition is planned on its own (the marker engine infers
        its tissue context from the partition's first chunk), so give ``tissue=`` for an
        atlas of mixed tissues.
    calls_dir
        Write each partition's calls to ``calls_dir/part-00000.parquet``, ... as soon as it
        is done (a Parquet data set, files written atomically); workers then return only a
        summary, and a run that dies keeps every finished partition.  It must be a folder
        every worker sees.
    resume
        With ``calls_dir``: reuse the calls files that are complete and match their
        partition's cells and this run's options; compute only the others.
    chunk_size
        Cells per chunk within a partition (default 50,000): bounds each worker's memory.
    value_kind
        What the values are, when the partitions' own ``scbridge.value_kind`` is wrong.
    progress
        A progress bar over finished partitions.

    Returns
    -------
    pyarrow.Table
        The Calls table of :func:`bridge.annotate`, rows in partition order then cell order.

    Notes
    -----
    A worker that dies (killed, out of memory, its machine lost) costs only the partitions it
    was computing: Dask runs them again on the other workers, and every cell is in the result
    once.  A partition whose worker dies three times in a row (Dask's ``allowed-failures``)
    stops the run with a :class:`~bridge.BridgeError` of code ``worker_lost``.
    """
    found = _check(partitions, engine_params, calls_dir, resume)
    options = _options(model, atlas, min_confidence, qc, chunk_size, value_kind, engine_params)
    if calls_dir is None:
        with _dask_client(client, n_workers) as dask_client:
            tables = _run(dask_client, found, options, None, False, progress)
    else:
        done = _run_to_calls_dir(found, options, calls_dir, client=client, n_workers=n_workers,
                                 resume=resume, progress=progress)
        tables = [read_partition_calls(d.calls) for d in done]
    table = _concat(tables, [p.url for p in found])
    return with_metadata(table, source=f"{len(found)} Arrow CSR partitions",
                         partitions=[p.url for p in found], n_cells=table.num_rows)


def write_partition_calls_dir(
    partitions: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    calls_dir: str | os.PathLike[str], *, client: Client | str | None = None,
    n_workers: int | None = None, model: str = "markers", atlas: str | None = None,
    min_confidence: float | None = None, qc: bool = True, resume: bool = False,
    chunk_size: int | None = None, value_kind: ValueKind | None = None, progress: bool = True,
    **engine_params: Any,
) -> list[PartitionCalls]:
    """Annotate a partitioned data set into ``calls_dir`` (one Parquet file per partition,
    see :func:`annotate_partitions`) without gathering the calls; what each task did, in
    partition order.  ``scbridge annotate DIR --out`` streams the files into its output."""
    found = _check(partitions, engine_params, calls_dir, resume)
    options = _options(model, atlas, min_confidence, qc, chunk_size, value_kind, engine_params)
    return _run_to_calls_dir(found, options, calls_dir, client=client, n_workers=n_workers,
                             resume=resume, progress=progress)


def _check(partitions: Any, engine_params: dict[str, Any],
           calls_dir: str | os.PathLike[str] | None, resume: bool) -> list[Partition]:
    if "groups" in engine_params or "smooth" in engine_params:
        msg = ("smoothing (groups= / smooth=) looks across partitions and is not done "
               "per partition; annotate the partitions, then smooth the gathered calls with "
               "bridge.smoothing.smooth_labels.")
        raise UnsupportedError(msg)
    if "endpoint" in engine_params:
        msg = ("annotate_partitions runs local engines; for a service use "
               "bridge.annotate(endpoint=).")
        raise UnsupportedError(msg)
    if resume and calls_dir is None:
        msg = ("resume=True needs calls_dir=: the folder of per-partition calls files that "
               "an earlier run wrote.")
        raise InputError(msg, code="invalid_parameter")
    return list_partitions(partitions)


def _options(model: str, atlas: str | None, min_confidence: float | None, qc: bool,
             chunk_size: int | None, value_kind: ValueKind | None,
             engine_params: dict[str, Any]) -> dict[str, Any]:
    if min_confidence is not None and not 0.0 <= float(min_confidence) <= 1.0:
        msg = f"min_confidence must lie in [0, 1], got {min_confidence}"
        raise InputError(msg, code="invalid_parameter")
    if chunk_size is not None and chunk_size < 1:
        msg = f"chunk_size must be positive, got {chunk_size}."
        raise InputError(msg, code="invalid_parameter")
    return {"model": model, "atlas": atlas, "min_confidence": min_confidence, "qc": qc,
            "chunk_size": chunk_size or DEFAULT_CHUNK_SIZE, "value_kind": value_kind,
            "engine_params": engine_params}


def _run_to_calls_dir(found: list[Partition], options: dict[str, Any],
                      calls_dir: str | os.PathLike[str], *, client: Client | str | None,
                      n_workers: int | None, resume: bool, progress: bool
                      ) -> list[PartitionCalls]:
    folder = Path(calls_dir)
    folder.mkdir(parents=True, exist_ok=True)
    remove_temporaries(folder)
    # Files of partitions this data set does not have (an earlier, larger run) would be
    # mistaken for part of it by a reader of the folder; without resume every file goes.
    stale = remove_calls_files(folder, keep=len(found) if resume else 0)
    if stale:
        logger.info("%s: removed %d calls file(s) of an earlier run", folder, stale)
    try:
        with _dask_client(client, n_workers) as dask_client:
            done = _run(dask_client, found, options, folder, resume, progress)
    finally:
        # After an interruption the workers are gone (a local cluster) or their tasks are
        # cancelled: anything half-written is removed, finished files stay for a resume.
        remove_temporaries(folder)
    logger.info("%d partitions annotated into %s (%d calls files reused)", len(done), folder,
                sum(d.reused for d in done))
    return done


def _annotate_partition(partition: Partition, options: dict[str, Any],
                        calls: str | None = None, resume: bool = False, run: str = ""
                        ) -> pa.Table | PartitionCalls:
    """One task: annotate one partition, chunk by chunk (memory-mapped when local).

    With a calls file, a complete one that matches the partition is reused: one from an
    earlier run with ``resume``, and in any case one this run wrote before (a worker that
    died after writing it, before its result reached the client, costs no recomputation).
    """
    from ._streaming import annotate_chunks
    from .engines import get_engine

    start = time.perf_counter()
    try:
        fingerprint = options_fingerprint(options)
        if calls is not None and Path(calls).is_file():
            cells = partition.cells()
            why = check_partition_calls(calls, n_cells=len(cells), checksum=cells_checksum(cells),
                                        fingerprint=fingerprint, run=None if resume else run)
            if why is None:
                return PartitionCalls(partition.url, calls, len(cells), True,
                                      time.perf_counter() - start)
            logger.info("partition %s: computing its calls (%s)", partition.url, why)
        engine = get_engine(options["model"], atlas=options["atlas"], **options["engine_params"])
        size = options["chunk_size"]
        chunks = partition.chunks(size, value_kind=options["value_kind"], balanced=True)
        table = annotate_chunks(chunks, engine=engine, model=options["model"],
                                qc=options["qc"], min_confidence=options["min_confidence"],
                                chunk_size=size, progress=False, where=partition.url)
        if calls is None:
            return table
        write_partition_calls(table, calls, partition=partition.url,
                              checksum=cells_checksum(table.column("cell")),
                              fingerprint=fingerprint, run=run)
        return PartitionCalls(partition.url, calls, table.num_rows, False,
                              time.perf_counter() - start)
    except BridgeError as exc:
        # Name the partition; the exception keeps its class and code for the caller.
        exc.args = (f"partition {partition.url}: {exc}",)
        raise


def _run(client: Client, found: list[Partition], options: dict[str, Any],
         calls_dir: Path | None, resume: bool, progress: bool) -> list[Any]:
    from distributed import KilledWorker, as_completed
    from tqdm.auto import tqdm

    calls = [None if calls_dir is None else str(calls_file(calls_dir, i))
             for i in range(len(found))]
    # Keys name their partition (dashboards, logs); the run token keeps two runs apart.
    run = uuid.uuid4().hex[:8]
    keys = [f"annotate-{i:05d}-{p.name}-{run}" for i, p in enumerate(found)]
    futures = client.map(_annotate_partition, found, [options] * len(found), calls,
                         [resume] * len(found), [run] * len(found), key=keys, pure=False)
    position = {future.key: i for i, future in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    try:
        with tqdm(total=len(futures), unit="partition", desc="annotate",
                  disable=not progress) as bar:
            for future in as_completed(futures):
                # An error is raised here, as soon as its partition fails.
                done = results[position[future.key]] = future.result()
                # Released once fetched: a worker that dies later holding this result
                # must not make Dask compute (and write) the partition again.
                future.release()
                bar.update(1)
                if isinstance(done, PartitionCalls):
                    logger.info("partition %s: %d cells %s in %.1f s", done.partition,
                                done.n_cells, "reused" if done.reused else "annotated",
                                done.seconds)
        return results
    except KilledWorker as exc:
        client.cancel([f for f in futures if f.status != "finished"])
        msg = (f"a Dask worker died each time it ran {_task_partition(exc, futures, found)} "
               f"({exc}); it may need more memory than a worker has: use smaller partitions "
               "(bridge.write_partitions(cells_per_partition=...)), a smaller chunk_size, or "
               "workers with more memory." + (f" Finished partitions are kept in {calls_dir}: "
                                              "rerun with resume to skip them."
                                              if calls_dir else ""))
        raise BridgeError(msg, code="worker_lost") from None
    except BaseException:
        # Interrupted or failed: stop the partitions still queued on the cluster.
        client.cancel([f for f in futures if f.status != "finished"])
        raise


def _task_partition(exc: BaseException, futures: list[Any], found: list[Partition]) -> str:
    key = getattr(exc, "task", None) or (exc.args[0] if exc.args else None)
    for future, partition in zip(futures, found, strict=True):
        if future.key == key:
            return f"partition {partition.url}"
    return "a partition"


def _concat(tables: list[pa.Table], paths: list[str]) -> pa.Table:
    first_meta = tables[0].schema.metadata
    try:
        table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables],
                                 promote_options="none")
    except pa.ArrowInvalid as exc:
        msg = f"the partitions' calls do not share one schema ({exc}); annotate them alike."
        raise InputError(msg) from None
    table = table.unify_dictionaries().combine_chunks()
    cells = table.column("cell")
    if pc.count_distinct(cells).as_py() != len(cells):
        counts = pc.value_counts(cells)
        duplicate = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
        owners = [p for p, t in zip(paths, tables, strict=True)
                  if pc.any(pc.equal(t.column("cell"), duplicate)).as_py()]
        msg = (f"cell id {duplicate!r} appears in more than one partition ({', '.join(owners)}); "
               "cell ids must be unique across the data set (prefix them per sample).")
        raise InputError(msg, code="invalid_cells")
    return table.replace_schema_metadata(first_meta)


@contextmanager
def _dask_client(client: Client | str | None, n_workers: int | None) -> Iterator[Client]:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        msg = ("annotate_partitions needs dask.distributed: "
               "pip install 'scbridge[distributed]'.")
        raise MissingDependencyError(msg) from None
    if isinstance(client, Client):
        yield client
        return
    if isinstance(client, str):
        try:
            remote = Client(client)  # waits distributed.comm.timeouts.connect (Dask config)
        except OSError as exc:
            msg = (f"could not reach a Dask scheduler at {client} ({exc}); start one "
                   "(`dask scheduler`, then `dask worker ADDRESS` on each machine) or leave "
                   "the scheduler out for a local cluster.")
            raise RemoteError(msg, code="remote_unreachable") from None
        with remote:
            yield remote
        return
    from .engines._blocks import ENV_THREADS, worker_count

    workers = n_workers or max(1, min(4, os.cpu_count() or 1))
    # Each worker process scores its blocks on the cores left to it, not on every core: two
    # workers of two threads each on two cores only add switching (a setting of the user's
    # own is kept).
    env = {ENV_THREADS: os.environ.get(ENV_THREADS) or str(max(1, worker_count() // workers))}
    with _dask_logs_follow_ours(), LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True,
            dashboard_address=None, env=env) as cluster, Client(cluster) as local:
        logger.info("started a local Dask cluster of %d workers", workers)
        yield local


@contextmanager
def _dask_logs_follow_ours() -> Iterator[None]:
    """Dask's own INFO lines (scheduler, nannies, connections) only when ours are shown
    (``scbridge -v``); its warnings always."""
    dask_logger = logging.getLogger("distributed")
    level = dask_logger.level
    if not logger.isEnabledFor(logging.INFO):
        dask_logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        dask_logger.setLevel(level)


def _arrow_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in PARTITION_SUFFIXES and p.is_file())

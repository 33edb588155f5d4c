"""Data sets larger than one machine: partitioned Arrow CSR files annotated with Dask.

A partitioned data set is a folder of Arrow CSR files (docs/format.md), each a contiguous run
of cells, in file-name order: :func:`write_partitions` writes one from anything
:func:`bridge.read` accepts.  :func:`annotate_partitions` runs one ``dask.distributed`` task
per partition (each worker memory-maps its own file, so only file names and result tables
travel) and gathers the calls in partition order, so the result is the table
:func:`bridge.annotate` gives for the whole data set.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from ._contract import with_metadata
from ._errors import BridgeError, InputError, MissingDependencyError, UnsupportedError
from .matrix import CellMatrix

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["annotate_partitions", "partition_paths", "write_partitions"]

logger = logging.getLogger(__name__)

PARTITION_SUFFIXES = (".arrow", ".arrows")
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
                    ) -> list[Path]:
    """The partition files of ``partitions``: a folder (its ``.arrow`` / ``.arrows`` files in
    name order), a glob pattern (matches in name order) or a sequence of paths (as given)."""
    if isinstance(partitions, str | os.PathLike):
        text = os.fspath(partitions)
        path = Path(text)
        if path.is_dir():
            paths = _arrow_files(path)
            where = f"folder {path}"
        elif glob.has_magic(text):
            paths = sorted(Path(p) for p in glob.glob(text))
            where = f"pattern {text!r}"
        else:
            paths = [path]
            where = str(path)
    else:
        paths = [Path(p) for p in partitions]
        where = "the partition list"
    if not paths:
        msg = (f"no Arrow CSR partitions in {where}; write them with "
               "bridge.write_partitions(source, folder).")
        raise InputError(msg)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        msg = f"{len(missing)} partition file(s) do not exist: {', '.join(missing[:5])}."
        raise InputError(msg)
    if len(set(paths)) != len(paths):
        msg = f"{where} names the same partition file twice."
        raise InputError(msg)
    return paths


def annotate_partitions(
    partitions: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
    client: Client | str | None = None, model: str = "markers", atlas: str | None = None,
    min_confidence: float | None = None, qc: bool = True, n_workers: int | None = None,
    progress: bool = True, **engine_params: Any,
) -> pa.Table:
    """Annotate a partitioned data set with Dask, one task per partition, calls in order.

    Parameters
    ----------
    partitions
        A folder of Arrow CSR files, a glob pattern or a list of paths (see
        :func:`partition_paths`); every worker must see the same paths (a shared file system).
    client
        A ``distributed.Client``, or a scheduler address (``"tcp://host:8786"``).  ``None``
        starts a ``LocalCluster`` of ``n_workers`` processes for this call and closes it after.
    model, atlas, min_confidence, qc, engine_params
        As for :func:`bridge.annotate`.  QC doublet scores are computed within each
        partition (Scrublet's own advice is per sample); per-cell calls do not depend on the
        partitioning.
    progress
        A progress bar over finished partitions.

    Returns
    -------
    pyarrow.Table
        The Calls table of :func:`bridge.annotate`, rows in partition order then cell order.
    """
    if "groups" in engine_params or "smooth" in engine_params:
        msg = ("smoothing (groups= / smooth=) looks across partitions and is not done "
               "per partition; annotate the partitions, then smooth the gathered calls with "
               "bridge.smoothing.smooth_labels.")
        raise UnsupportedError(msg)
    if "endpoint" in engine_params:
        msg = ("annotate_partitions runs local engines; for a service use "
               "bridge.annotate(endpoint=).")
        raise UnsupportedError(msg)
    paths = partition_paths(partitions)
    options = {"model": model, "atlas": atlas, "min_confidence": min_confidence, "qc": qc,
               **engine_params}
    with _dask_client(client, n_workers) as dask_client:
        tables = _run(dask_client, paths, options, progress)
    table = _concat(tables, paths)
    return with_metadata(table, source=f"{len(paths)} Arrow CSR partitions",
                         partitions=[str(p) for p in paths], n_cells=table.num_rows)


def _annotate_one(path: str, options: dict[str, Any]) -> pa.Table:
    """One task: annotate one partition (memory-mapped on the worker)."""
    from ._annotate import annotate

    try:
        return annotate(path, progress=False, **options)
    except BridgeError as exc:
        # Name the partition; the exception keeps its class for the caller.
        exc.args = (f"partition {path}: {exc}",)
        raise


def _run(client: Client, paths: list[Path], options: dict[str, Any],
         progress: bool) -> list[pa.Table]:
    from distributed import as_completed
    from tqdm.auto import tqdm

    futures = client.map(_annotate_one, [str(p) for p in paths], options=options, pure=False)
    try:
        with tqdm(total=len(futures), unit="partition", desc="annotate",
                  disable=not progress) as bar:
            for _ in as_completed(futures):
                bar.update(1)
        return list(client.gather(futures))
    except BaseException:
        # Interrupted or failed: stop the partitions still queued on the cluster.
        client.cancel(futures)
        raise


def _concat(tables: list[pa.Table], paths: list[Path]) -> pa.Table:
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
        owners = [str(p) for p, t in zip(paths, tables, strict=True)
                  if pc.any(pc.equal(t.column("cell"), duplicate)).as_py()]
        msg = (f"cell id {duplicate!r} appears in more than one partition ({', '.join(owners)}); "
               "cell ids must be unique across the data set (prefix them per sample).")
        raise InputError(msg)
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
        with Client(client) as remote:
            yield remote
        return
    workers = n_workers or max(1, min(4, os.cpu_count() or 1))
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as local:
        logger.info("started a local Dask cluster of %d workers", workers)
        yield local


def _arrow_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in PARTITION_SUFFIXES and p.is_file())

"""Per-partition calls files: the state that makes a partitioned run resumable.

A run over a partitioned data set writes ``calls_dir/part-00000.parquet``, ... one Parquet file
per partition (in partition order) as soon as that partition's calls are done: together they
are a Parquet data set any Parquet reader opens (``pyarrow.dataset``, polars, DuckDB, Spark).
Each file is written atomically (:func:`bridge.io._files.atomic_output`: a hidden temporary
file in the same folder, then a rename),
so a run that is interrupted or loses a machine leaves only complete files.  Each file records
in its schema metadata the partition it came from, the partition's cell count, a checksum of
its cell ids and a fingerprint of the run's options; ``resume`` reuses a file only when all of
them still match the partition and the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._version import __version__
from .io._files import TEMP_MARK, atomic_output

__all__ = [
    "calls_file",
    "cells_checksum",
    "check_partition_calls",
    "options_fingerprint",
    "read_partition_calls",
    "remove_calls_files",
    "remove_temporaries",
    "write_partition_calls",
]

logger = logging.getLogger(__name__)

_PREFIX = "part-"
_SUFFIX = ".parquet"
KEY_PARTITION = b"scbridge.partition"
KEY_CELLS = b"scbridge.partition_cells"
KEY_CHECKSUM = b"scbridge.partition_checksum"
KEY_OPTIONS = b"scbridge.run_options"
KEY_RUN = b"scbridge.run_id"


def calls_file(calls_dir: str | os.PathLike[str], index: int) -> Path:
    """The calls file of the ``index``-th partition."""
    return Path(calls_dir) / f"{_PREFIX}{index:05d}{_SUFFIX}"


def cells_checksum(cells: pa.Array | pa.ChunkedArray) -> str:
    """A checksum of cell ids in order (BLAKE2b of their lengths and bytes).

    Taken from Arrow's own buffers, so 100,000 ids cost milliseconds; it does not depend on
    how the column is chunked.
    """
    digest = hashlib.blake2b(digest_size=16)
    column = cells.combine_chunks() if isinstance(cells, pa.ChunkedArray) else cells
    column = column.cast(pa.large_string())
    if len(column):
        _, offsets_buffer, data_buffer = column.buffers()
        offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[
            column.offset: column.offset + len(column) + 1]
        lengths = np.diff(offsets)
        digest.update(lengths.astype("<i8").tobytes())
        digest.update(memoryview(data_buffer)[int(offsets[0]): int(offsets[-1])])
    digest.update(str(len(column)).encode())
    return digest.hexdigest()


def options_fingerprint(options: Mapping[str, Any]) -> str:
    """A fingerprint of what decides the calls: engine options, the package version, and the
    size and modification time of an atlas file (a rebuilt reference changes it)."""
    described = dict(options)
    atlas = options.get("atlas")
    if isinstance(atlas, str) and os.path.isfile(atlas):
        stat = os.stat(atlas)
        described["atlas_file"] = [stat.st_size, stat.st_mtime_ns]
    described["package_version"] = __version__
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def write_partition_calls(table: pa.Table, path: str | os.PathLike[str], *, partition: str,
                          checksum: str, fingerprint: str, run: str = "") -> Path:
    """Write one partition's calls atomically, with what :func:`check_partition_calls` reads
    (``run``: the run that wrote it)."""
    meta = dict(table.schema.metadata or {})
    meta.update({KEY_PARTITION: partition.encode(), KEY_CELLS: str(table.num_rows).encode(),
                 KEY_CHECKSUM: checksum.encode(), KEY_OPTIONS: fingerprint.encode(),
                 KEY_RUN: run.encode()})
    stamped = table.replace_schema_metadata(meta)
    with atomic_output(path, what="the calls file") as temporary:
        pq.write_table(stamped, temporary)
    return Path(path)


def check_partition_calls(path: str | os.PathLike[str], *, n_cells: int, checksum: str,
                          fingerprint: str, run: str | None = None) -> str | None:
    """Why the calls file ``path`` cannot be reused for a partition, or ``None`` if it can.

    Reused only when it is a complete Parquet file, made with the same options (and by the
    run ``run``, when given), and holds exactly the partition's cells in order (count and
    checksum of its own ``cell`` column).
    """
    file = Path(path)
    if not file.is_file():
        return "no calls file yet"
    try:
        reader = pq.ParquetFile(file)
        meta = reader.schema_arrow.metadata or {}
        if meta.get(KEY_OPTIONS, b"").decode() != fingerprint:
            return "made with other options"
        if run is not None and meta.get(KEY_RUN, b"").decode() != run:
            return "made by an earlier run"
        if meta.get(KEY_CELLS) != str(n_cells).encode() or reader.metadata.num_rows != n_cells:
            return "another number of cells"
        cells = reader.read(columns=["cell"]).column("cell")
    except (pa.ArrowException, OSError) as exc:
        return f"unreadable ({exc})"
    if meta.get(KEY_CHECKSUM, b"").decode() != checksum or cells_checksum(cells) != checksum:
        return "other cell ids"
    return None


def read_partition_calls(path: str | os.PathLike[str]) -> pa.Table:
    """One calls file, without the per-partition metadata keys."""
    table = pq.read_table(path)
    meta = {k: v for k, v in (table.schema.metadata or {}).items()
            if k not in (KEY_PARTITION, KEY_CELLS, KEY_CHECKSUM, KEY_OPTIONS, KEY_RUN)}
    return table.replace_schema_metadata(meta)


def remove_temporaries(calls_dir: str | os.PathLike[str]) -> int:
    """Delete temporary files left by writers that were killed mid-write; returns how many."""
    folder = Path(calls_dir)
    if not folder.is_dir():
        return 0
    removed = 0
    # atomic_output's temporary files are hidden (".part-00000.scbridge-tmp-..."): Parquet
    # data set readers skip names starting with ".".
    for path in folder.glob(f".{_PREFIX}*{TEMP_MARK}*{_SUFFIX}"):
        path.unlink(missing_ok=True)
        removed += 1
    if removed:
        logger.info("%s: removed %d incomplete calls file(s)", folder, removed)
    return removed


def remove_calls_files(calls_dir: str | os.PathLike[str], *, keep: int = 0) -> int:
    """Delete the calls files of partitions ``keep`` and beyond (all by default)."""
    folder = Path(calls_dir)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.glob(f"{_PREFIX}[0-9]*{_SUFFIX}"):
        index = path.name[len(_PREFIX):-len(_SUFFIX)]
        if index.isdigit() and int(index) >= keep:
            path.unlink()
            removed += 1
    return removed

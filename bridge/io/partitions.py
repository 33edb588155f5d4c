"""Partitioned data sets: a folder, glob or list of Arrow CSR files, local or behind fsspec.

A partition is one Arrow CSR file (docs/format.md) holding a contiguous run of cells; a data
set is its partitions in name order.  Local files are memory-mapped and streamed batch by
batch; URLs (``s3://bucket/atlas/``, ``gs://...``, ``zip://parts::atlas.zip``) go through
fsspec where the filesystem's package is installed, and are read one partition at a time.

The reader registered for folders and globs (:mod:`bridge.io`) lets ``read``,
``read_chunks`` and ``describe`` take a partitioned data set like any other input.
"""

from __future__ import annotations

import glob
import logging
import os
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from .._errors import FormatError, InputError, MissingDependencyError
from ..matrix import CellMatrix

if TYPE_CHECKING:
    from ..numerics import ValueKind

__all__ = [
    "PARTITION_SUFFIXES",
    "Partition",
    "describe_partitions",
    "is_partition_folder",
    "is_url_or_pattern",
    "iter_partitions_chunks",
    "list_partitions",
    "read_partitions",
]

logger = logging.getLogger(__name__)

PARTITION_SUFFIXES = (".arrow", ".arrows")


@dataclass(frozen=True)
class Partition:
    """One partition file.

    Attributes
    ----------
    url
        Where it is, as shown to users: a local path or a URL.
    path
        Its path within its filesystem.
    fs
        The fsspec filesystem holding it; ``None`` for a local file (memory-mapped).
    """

    url: str
    path: str
    fs: Any = None

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        """The file name (``part-00003.arrow``)."""
        return posixpath.basename(self.path.rstrip("/"))

    def _source(self) -> pa.NativeFile | pa.Buffer:
        if self.fs is None:
            return pa.memory_map(self.path, "r")
        # A remote file cannot be memory-mapped: one partition is fetched at a time.
        try:
            return pa.py_buffer(self.fs.cat_file(self.path))
        except OSError as exc:
            msg = f"partition {self.url} could not be read ({exc})."
            raise InputError(msg, code="not_found") from None

    def chunks(self, chunk_size: int | None = None, *, value_kind: ValueKind | None = None,
               balanced: bool = False, validate: bool = True) -> Iterator[CellMatrix]:
        """The partition's cells in chunks of at most ``chunk_size`` (views on its batches;
        near-equal ones with ``balanced``), each validated on its own."""
        from .arrow import iter_arrow_chunks

        yield from iter_arrow_chunks(self._source(), chunk_size, where=self.url,
                                     value_kind=value_kind, balanced=balanced,
                                     validate=validate)

    def cells(self) -> pa.ChunkedArray:
        """The partition's cell ids alone (for a memory-mapped file only their pages are read)."""
        from .._arrow_csr import check_schema, open_reader

        reader = open_reader(self._source(), self.url)
        check_schema(reader.schema, self.url)
        try:
            columns = [batch.column("cell") for batch in reader]
        except (pa.ArrowInvalid, OSError) as exc:
            msg = (f"{self.url}: the Arrow data ends early or is corrupt ({exc}). "
                   "Re-create the file.")
            raise FormatError(msg, code="invalid_arrow") from None
        return pa.chunked_array(columns, type=pa.string())


# -- finding the partitions -----------------------------------------------------------------
def is_url_or_pattern(source: Any) -> bool:
    """Whether ``source`` is a URL (``s3://...``, ``zip://...::file``) or a glob pattern."""
    if not isinstance(source, str | os.PathLike):
        return False
    text = os.fspath(source)
    return isinstance(text, str) and (_is_url(text) or (glob.has_magic(text)
                                                        and not Path(text).exists()))


def _is_url(text: str) -> bool:
    # "://" and not just "::": ``SeuratObject::pbmc_small`` names an R package's data set.
    return "://" in text


def is_partition_folder(path: Path) -> bool:
    """A folder holding Arrow CSR files (``.arrow`` / ``.arrows``)."""
    return path.is_dir() and any(p.suffix.lower() in PARTITION_SUFFIXES and p.is_file()
                                 for p in path.iterdir())


def list_partitions(partitions: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
                    ) -> list[Partition]:
    """The partition files of a folder (its ``.arrow`` / ``.arrows`` files in name order), a
    glob pattern (matches in name order), one file, or a sequence of files (as given); each
    may be a local path or an fsspec URL."""
    if isinstance(partitions, str | os.PathLike):
        found, where = _expand(os.fspath(partitions))
    else:
        found = [one for p in partitions for one in _expand(os.fspath(p), single=True)[0]]
        where = "the partition list"
    if not found:
        msg = (f"no Arrow CSR partitions in {where}; write them with "
               "bridge.write_partitions(source, folder).")
        raise InputError(msg)
    missing = [p.url for p in found if not _is_file(p)]
    if missing:
        msg = f"{len(missing)} partition file(s) do not exist: {', '.join(missing[:5])}."
        raise InputError(msg, code="not_found")
    if len({p.url for p in found}) != len(found):
        msg = f"{where} names the same partition file twice."
        raise InputError(msg)
    return found


def _expand(text: str, *, single: bool = False) -> tuple[list[Partition], str]:
    if _is_url(text):
        return _expand_url(text, single=single)
    path = Path(text).expanduser()
    if single:
        return [Partition(str(path), str(path))], str(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.suffix.lower() in PARTITION_SUFFIXES and p.is_file())
        return [Partition(str(p), str(p)) for p in files], f"folder {path}"
    if glob.has_magic(text) and not path.exists():
        return ([Partition(p, p) for p in sorted(glob.glob(os.fspath(path)))],
                f"pattern {text!r}")
    return [Partition(str(path), str(path))], str(path)


def _expand_url(url: str, *, single: bool) -> tuple[list[Partition], str]:
    fs, root = _filesystem(url)
    # A chained URL (zip://parts::archive.zip) keeps its tail for display.
    tail = "::" + url.split("::", 1)[1] if "::" in url else ""

    def partition(path: str) -> Partition:
        shown = fs.unstrip_protocol(path) + tail
        local = _is_local(fs)
        return Partition(path if local else shown, path, None if local else fs)

    if single:
        return [partition(root)], url
    if glob.has_magic(root):
        return [partition(p) for p in sorted(fs.glob(root))], f"pattern {url!r}"
    if fs.isdir(root):
        files = sorted(p for p in fs.ls(root, detail=False)
                       if posixpath.splitext(p)[1].lower() in PARTITION_SUFFIXES)
        return [partition(p) for p in files], f"folder {url}"
    return [partition(root)], url


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError:
        msg = (f"{url} is a URL: reading partitions from object stores needs fsspec "
               "(pip install fsspec, plus the store's package, e.g. s3fs or gcsfs).")
        raise MissingDependencyError(msg) from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        msg = f"{url}: the filesystem package for this URL is not installed ({exc})."
        raise MissingDependencyError(msg) from None
    except (ValueError, OSError) as exc:
        msg = f"{url} is not a URL fsspec can open ({exc})."
        raise InputError(msg) from None


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _is_file(partition: Partition) -> bool:
    if partition.fs is None:
        return Path(partition.path).is_file()
    return bool(partition.fs.isfile(partition.path))


# -- reading a whole data set ---------------------------------------------------------------
def iter_partitions_chunks(partitions: str | os.PathLike[str] | Sequence[Any],
                           chunk_size: int | None = None, *, assay: str | None = None,
                           layer: str | None = None, value_kind: ValueKind | None = None,
                           balanced: bool = False, validate: bool = True
                           ) -> Iterator[CellMatrix]:
    """Stream a partitioned data set chunk by chunk (chunks never cross partitions)."""
    _no_assay_or_layer(assay, layer)
    for partition in list_partitions(partitions):
        yield from partition.chunks(chunk_size, value_kind=value_kind, balanced=balanced,
                                    validate=validate)


def read_partitions(partitions: str | os.PathLike[str] | Sequence[Any], *,
                    assay: str | None = None, layer: str | None = None,
                    value_kind: ValueKind | None = None, validate: bool = True) -> CellMatrix:
    """The whole data set as one matrix (a copy: prefer streaming for large data sets)."""
    _no_assay_or_layer(assay, layer)
    found = list_partitions(partitions)
    parts: list[CellMatrix] = []
    for partition in found:
        for chunk in partition.chunks(value_kind=value_kind):
            if parts and not np.array_equal(chunk.genes, parts[0].genes):
                msg = (f"partition {partition.url} has other genes than {found[0].url}; the "
                       "partitions of one data set must share their gene list.")
                raise InputError(msg, code="genes_mismatch")
            parts.append(chunk)
    first = parts[0]
    if len(parts) > 1:
        logger.info("joining %d partitions (%d chunks) into one matrix (a copy)", len(found),
                    len(parts))
    X = sp.vstack([p.X for p in parts], format="csr") if len(parts) > 1 else parts[0].X
    obs = (pa.concat_tables([p.obs for p in parts], promote_options="default")
           if first.obs.num_columns else None)
    return CellMatrix(X, np.concatenate([p.cells for p in parts]), first.genes, obs=obs,
                      value_kind=first.value_kind,
                      source=f"{len(found)} Arrow CSR partitions", validate=validate)


def describe_partitions(partitions: str | os.PathLike[str] | Sequence[Any]) -> dict[str, Any]:
    """Partitions, cells, genes and non-zeros of a data set, from each file's schema and
    batch lengths (for local files nothing but those is read)."""
    from .._arrow_csr import check_schema, open_reader

    found = list_partitions(partitions)
    n_cells = nnz = 0
    genes: list[str] | None = None
    value_kinds: set[str] = set()
    value_types: set[str] = set()
    for partition in found:
        reader = open_reader(partition._source(), partition.url)
        part_genes, kind, _ = check_schema(reader.schema, partition.url)
        if genes is None:
            genes = part_genes
        elif part_genes != genes:
            msg = (f"partition {partition.url} has other genes than {found[0].url}; the "
                   "partitions of one data set must share their gene list.")
            raise InputError(msg, code="genes_mismatch")
        value_kinds.add(kind)
        value_types.add(str(reader.schema.field("values").type))
        for batch in reader:
            n_cells += batch.num_rows
            nnz += len(batch.column("indices").values)
    layer = {"class": ", ".join(sorted(value_types)), "cells": n_cells,
             "genes": len(genes or []), "nnz": nnz}
    return {
        "class": f"Arrow CSR partitions ({len(found)} files)",
        "kind": "partitions",
        "partitions": [p.url for p in found],
        "cells": n_cells,
        "nnz": nnz,
        "assays": {"arrow": {"layers": {"/".join(sorted(value_kinds)): layer}}},
    }


def _no_assay_or_layer(assay: str | None, layer: str | None) -> None:
    if assay or layer:
        msg = "Arrow CSR partitions hold one matrix each; assay= and layer= do not apply."
        raise InputError(msg)

"""Arrow CSR files: memory-mapped reading, streaming by batch, and writing (docs/format.md).

The format itself (schema, batches, decoding) lives in :mod:`bridge._arrow_csr`; this module
adds files: a memory-mapped file with one batch gives numpy arrays on the map itself, several
batches are joined into one CSR (a copy, logged) or streamed one by one with
:func:`iter_arrow_chunks`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .._arrow_csr import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Offsets,
    arrow_schema,
    batches_from_matrix,
    check_schema,
    matrix_from_batches,
    needs_large,
    open_reader,
)
from .._errors import FormatError
from ..matrix import CellMatrix
from ._files import atomic_output

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "arrow_schema",
    "batches_from_matrix",
    "check_schema",
    "is_arrow_file",
    "iter_arrow_chunks",
    "matrix_from_batches",
    "open_arrow_file",
    "read_arrow",
    "write_arrow",
    "write_batches",
]

logger = logging.getLogger(__name__)
_ARROW_MAGIC = b"ARROW1"


def write_arrow(
    matrix: CellMatrix,
    path: str | os.PathLike[str] | pa.NativeFile,
    *,
    stream: bool | None = None,
    chunk_size: int | None = None,
    offsets: Offsets = "auto",
    values_dtype: np.dtype[Any] | str | None = None,
) -> None:
    """Write ``matrix`` as an Arrow CSR IPC file (``.arrow``) or stream (``.arrows``).

    ``stream=None`` picks the stream format for ``.arrows`` paths.  ``offsets="auto"``
    switches to 64-bit list offsets when nnz exceeds 2**31 - 1.
    """
    if stream is None:
        stream = isinstance(path, str | os.PathLike) and str(path).endswith(".arrows")
    dtype = np.dtype(values_dtype) if values_dtype is not None else None
    schema = arrow_schema(matrix, large=needs_large(matrix.nnz, offsets), values_dtype=dtype)
    write_batches(schema, batches_from_matrix(matrix, chunk_size=chunk_size, schema=schema),
                  path, stream=stream)


def write_batches(
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    path: str | os.PathLike[str] | pa.NativeFile,
    *,
    stream: bool,
) -> None:
    """Write record batches to an IPC file or stream (used by streaming conversion).

    A path is written through a temporary file renamed over it at the end
    (:func:`bridge.io._files.atomic_output`): an interrupted write leaves the old file.
    """
    new = pa.ipc.new_stream if stream else pa.ipc.new_file
    if isinstance(path, pa.NativeFile):
        with new(path, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
        return
    with atomic_output(path) as temp, pa.OSFile(os.fspath(temp), "wb") as sink, \
            new(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


# -- reading --------------------------------------------------------------------------------
def is_arrow_file(path: Path) -> bool:
    """Whether ``path`` is an Arrow IPC file or stream (by suffix or magic bytes)."""
    if path.suffix in {".arrow", ".arrows", ".feather", ".ipc"}:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return head.startswith(_ARROW_MAGIC) or head[:4] == b"\xff\xff\xff\xff"


def read_arrow(
    path: str | os.PathLike[str] | pa.Buffer | bytes, *, validate: bool = True
) -> CellMatrix:
    """Read an Arrow CSR file or stream, memory-mapped: one batch gives views on the map.

    ``validate=False`` skips the checks on ids and values (the format itself is always
    checked), e.g. to round-trip an empty matrix.
    """
    if isinstance(path, bytes | pa.Buffer):
        source = pa.BufferReader(path)
        where = "the Arrow CSR payload"
    else:
        where = os.fspath(path)
        source = open_arrow_file(where)
    reader = open_reader(source, where)
    try:
        batches = list(reader)
    except (pa.ArrowException, OSError) as exc:
        msg = f"{where}: the Arrow data ends early or is corrupt ({exc}). Re-create the file."
        raise FormatError(msg, code="invalid_arrow") from None
    return matrix_from_batches(
        batches, reader.schema, where=where, keepalive=source, validate=validate
    )


def iter_arrow_chunks(path: str | os.PathLike[str]) -> Iterator[CellMatrix]:
    """One :class:`CellMatrix` per record batch, streamed from a memory-mapped file."""
    where = os.fspath(path)
    source = open_arrow_file(where)
    reader = open_reader(source, where)
    batches = iter(reader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            msg = f"{where}: the Arrow data ends early or is corrupt ({exc}). Re-create the file."
            raise FormatError(msg, code="invalid_arrow") from None
        yield matrix_from_batches([batch], reader.schema, where=where, keepalive=source)


def open_arrow_file(path: str | os.PathLike[str]) -> pa.NativeFile:
    """The file memory-mapped for reading; an empty or unreadable file is a FormatError."""
    where = os.fspath(path)
    if os.path.getsize(where) == 0:
        msg = f"{where} is empty (0 bytes), not an Arrow CSR file; write it again."
        raise FormatError(msg, code="invalid_arrow")
    try:
        return pa.memory_map(where, "r")
    except OSError as exc:
        msg = f"{where} cannot be opened ({exc})."
        raise FormatError(msg, code="invalid_arrow") from None

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
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .._arrow_csr import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Offsets,
    arrow_schema,
    batches_from_matrix,
    check_schema,
    compact_offsets,
    matrix_from_batches,
    needs_large,
    open_reader,
)
from .._errors import FormatError
from ..matrix import CellMatrix, csr_view
from ..numerics import spread_runs
from ._chunks import chunk_bounds
from ._files import atomic_output

if TYPE_CHECKING:
    from ..numerics import ValueKind

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
    # A large_list batch past 2**31 values has a values array longer than 2**31 - 1, which
    # Arrow's IPC writer refuses unless told that 64-bit lengths are wanted.
    options = pa.ipc.IpcWriteOptions(allow_64bit=True)
    if isinstance(path, pa.NativeFile):
        with new(path, schema, options=options) as writer:
            for batch in batches:
                writer.write_batch(batch)
        return
    with atomic_output(path) as temp, pa.OSFile(os.fspath(temp), "wb") as sink, \
            new(sink, schema, options=options) as writer:
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


def iter_arrow_chunks(
    source: str | os.PathLike[str] | pa.Buffer | pa.NativeFile,
    chunk_size: int | None = None,
    *,
    where: str | None = None,
    validate: bool = True,
    value_kind: ValueKind | None = None,
    balanced: bool = False,
    sample: int | None = None,
) -> Iterator[CellMatrix]:
    """Stream an Arrow CSR file batch by batch, in chunks of at most ``chunk_size`` cells.

    Each batch is cut into chunks (of near-equal sizes with ``balanced``, see
    :func:`~bridge.io._chunks.chunk_bounds`).  A path is memory-mapped; chunks are views on
    the map (only their offsets are new, and 32-bit again where a chunk of a ``large_list``
    batch fits), and each chunk is validated on its own, so memory stays bounded by one
    chunk however large the file is.  ``sample``: only about that many cells, in the evenly
    spread runs of :func:`bridge.numerics.spread_runs` over the whole file (the cells an
    engine samples from a matrix in memory); on a memory map no other cell is touched.
    """
    if isinstance(source, pa.Buffer | pa.NativeFile):
        where = where or "the Arrow CSR data"
    else:
        where = where or os.fspath(source)
        source = open_arrow_file(source)
    runs = None if sample is None else _sample_runs(source, where, sample)
    reader = open_reader(source, where)
    check_schema(reader.schema, where)
    offset = 0
    try:
        for batch in reader:
            whole = matrix_from_batches([batch], reader.schema, where=where, keepalive=source,
                                        validate=False)
            if value_kind:
                whole.value_kind = value_kind
            if runs is None:
                bounds = chunk_bounds(whole.n_cells, chunk_size, balanced=balanced,
                                      n_values=whole.nnz)
            else:  # the runs' parts inside this batch
                bounds = [(max(a, offset) - offset, min(b, offset + whole.n_cells) - offset)
                          for a, b in runs if a < offset + whole.n_cells and b > offset]
            offset += whole.n_cells
            for start, stop in bounds:
                chunk = _chunk(whole, start, stop)
                if validate:
                    chunk.validate()
                yield chunk
    except (pa.ArrowException, OSError) as exc:
        msg = f"{where}: the Arrow data ends early or is corrupt ({exc}). Re-create the file."
        raise FormatError(msg, code="invalid_arrow") from None


def _sample_runs(source: pa.NativeFile | pa.Buffer, where: str, n: int
                 ) -> list[tuple[int, int]]:
    """The row runs of about ``n`` cells spread over every batch (batch sizes are read from
    the batches' headers; no values are touched)."""
    reader = open_reader(source, where)
    try:
        total = sum(batch.num_rows for batch in reader)
    except (pa.ArrowException, OSError) as exc:
        msg = f"{where}: the Arrow data ends early or is corrupt ({exc}). Re-create the file."
        raise FormatError(msg, code="invalid_arrow") from None
    if isinstance(source, pa.NativeFile):
        source.seek(0)
    return spread_runs(total, n)


def _chunk(whole: CellMatrix, start: int, stop: int) -> CellMatrix:
    """Cells ``start:stop`` of a batch as views, with their own offsets (32-bit where they fit).

    Not ``whole.slice_cells``: that asks scipy whether the *whole* batch has sorted indices,
    a pass over all of it, which for 64-bit offsets first copies every index to 64 bits
    (20 GB for a 2.5e9-value batch).  Each chunk is checked on its own instead.
    """
    X = whole.X
    lo, hi = int(X.indptr[start]), int(X.indptr[stop])
    indptr = compact_offsets(X.indptr[start: stop + 1] - X.indptr[start])
    part = csr_view(X.data[lo:hi], X.indices[lo:hi], indptr, (stop - start, whole.n_genes))
    obs = whole.obs.slice(start, stop - start) if whole.obs.num_columns else None
    return CellMatrix(part, whole.cells[start:stop], whole.genes, obs=obs,
                      value_kind=whole.value_kind, source=whole.source, validate=False,
                      keepalive=whole.keepalive)


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

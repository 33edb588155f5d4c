"""Readers and writers, each dispatched through a registry.

Adding a container is one module and one :func:`register_reader` / :func:`register_writer`
call below; nothing else branches on file types.  Heavy dependencies (rpy2, anndata, h5py)
load only when their reader runs, so reading an Arrow file never starts R.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from .._errors import FormatError, InputError, UnsupportedError
from ..matrix import CellMatrix

if TYPE_CHECKING:
    from ..numerics import ValueKind

__all__ = ["Reader", "Writer", "can_stream", "describe", "read", "read_chunks", "read_sample",
           "register_reader", "register_writer", "write"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reader:
    """How to recognise, read, describe and (optionally) stream one kind of file."""

    name: str
    matches: Callable[[Path], bool]
    read: Callable[..., CellMatrix]
    describe: Callable[[Path], dict[str, Any]]
    iter_chunks: Callable[..., Iterator[CellMatrix]] | None = None
    #: ``iter_chunks`` takes ``sample=n``: only cells spread over the whole input.
    samples: bool = False


_READERS: list[Reader] = []


def register_reader(reader: Reader) -> None:
    """Add a reader; the first whose ``matches`` accepts a path reads it."""
    _READERS.append(reader)


def _reader_for(path: Path | str) -> Reader:
    if isinstance(path, str):  # a URL or glob pattern (see _as_path): partitions
        return _PARTITIONS
    if not path.exists():
        msg = f"{path} does not exist."
        raise InputError(msg)
    for reader in _READERS:
        if reader.matches(path):
            return reader
    names = ", ".join(r.name for r in _READERS)
    msg = f"{path}: unrecognised input. scbridge reads: {names}."
    raise UnsupportedError(msg)


# -- the built-in readers -------------------------------------------------------------------
def _rds_read(path: Path, **kw: Any) -> CellMatrix:
    from .rds import read_r

    return read_r(path, **kw)


def _rds_describe(path: Path) -> dict[str, Any]:
    from .rds import describe_r

    return describe_r(path)


def _h5ad_read(path: Path, **kw: Any) -> CellMatrix:
    from .h5ad import read_h5ad

    return read_h5ad(path, **kw)


def _h5ad_describe(path: Path) -> dict[str, Any]:
    from .h5ad import describe_h5ad

    return describe_h5ad(path)


def _h5ad_chunks(path: Path, chunk_size: int, **kw: Any) -> Iterator[CellMatrix]:
    from .h5ad import iter_h5ad_chunks

    return iter_h5ad_chunks(path, chunk_size, **kw)


def _arrow_matches(path: Path) -> bool:
    from .arrow import is_arrow_file

    return path.is_file() and is_arrow_file(path)


def _arrow_read(path: Path, *, assay: str | None = None, layer: str | None = None,
                validate: bool = True, value_kind: str | None = None) -> CellMatrix:
    from .arrow import read_arrow

    if assay or layer:
        msg = f"{path}: an Arrow CSR file holds one matrix; assay= and layer= do not apply."
        raise InputError(msg)
    matrix = read_arrow(path, validate=False)
    if value_kind:
        matrix.value_kind = value_kind  # type: ignore[assignment]
    if validate:
        matrix.validate(where=f"{path} ({matrix.source})")
    return matrix


def _arrow_describe(path: Path) -> dict[str, Any]:
    import pyarrow as pa

    from .._arrow_csr import check_schema, open_reader
    from .arrow import open_arrow_file

    source = open_arrow_file(path)
    reader = open_reader(source, str(path))
    genes, value_kind, origin = check_schema(reader.schema, str(path))
    n_cells = nnz = 0
    try:
        for batch in reader:
            n_cells += batch.num_rows
            nnz += len(batch.column("indices").values)
    except (pa.ArrowException, OSError) as exc:
        msg = f"{path}: the Arrow data ends early or is corrupt ({exc}). Re-create the file."
        raise FormatError(msg, code="invalid_arrow") from None
    version = (reader.schema.metadata or {}).get(b"scbridge.format_version", b"").decode()
    return {
        "class": f"Arrow CSR v{version}",
        "kind": "arrow",
        "source": origin,
        "assays": {"arrow": {"layers": {value_kind: {
            "class": str(reader.schema.field("values").type),
            "cells": n_cells, "genes": len(genes), "nnz": nnz}}}},
    }


def _arrow_chunks(path: Path, chunk_size: int, **kw: Any) -> Iterator[CellMatrix]:
    from .arrow import iter_arrow_chunks

    if kw.get("assay") or kw.get("layer"):
        msg = f"{path}: an Arrow CSR file holds one matrix; assay= and layer= do not apply."
        raise InputError(msg)
    yield from iter_arrow_chunks(path, chunk_size, value_kind=kw.get("value_kind"),
                                 balanced=kw.get("balanced", False),
                                 validate=kw.get("validate", True), sample=kw.get("sample"))


def _tenx_matches(path: Path) -> bool:
    from .tenx import is_10x

    return is_10x(path)


def _tenx_read(path: Path, **kw: Any) -> CellMatrix:
    from .tenx import read_10x

    return read_10x(path, **kw)


def _tenx_describe(path: Path) -> dict[str, Any]:
    from .tenx import describe_10x

    return describe_10x(path)


register_reader(Reader(
    "R objects (.rds, .RData: Seurat, SingleCellExperiment, dgCMatrix, ...)",
    lambda p: p.suffix.lower() in (".rds", ".rdata", ".rda"), _rds_read, _rds_describe,
))
register_reader(Reader(
    "AnnData (.h5ad)", lambda p: p.suffix.lower() == ".h5ad", _h5ad_read, _h5ad_describe,
    _h5ad_chunks, samples=True,
))
register_reader(Reader(
    "10x Genomics (matrix.mtx folder, filtered_feature_bc_matrix.h5)",
    _tenx_matches, _tenx_read, _tenx_describe,
))
register_reader(Reader(
    "Arrow CSR (.arrow file, .arrows stream)", _arrow_matches, _arrow_read, _arrow_describe,
    _arrow_chunks, samples=True,
))


def _partitions_matches(path: Path) -> bool:
    from .partitions import is_partition_folder

    return is_partition_folder(path)


def _partitions_read(path: Path | str, **kw: Any) -> CellMatrix:
    from .partitions import read_partitions

    return read_partitions(path, **kw)


def _partitions_describe(path: Path | str) -> dict[str, Any]:
    from .partitions import describe_partitions

    return describe_partitions(path)


def _partitions_chunks(path: Path | str, chunk_size: int, **kw: Any) -> Iterator[CellMatrix]:
    from .partitions import iter_partitions_chunks

    return iter_partitions_chunks(path, chunk_size, **kw)


_PARTITIONS = Reader(
    "Arrow CSR partitions (a folder or glob of .arrow files; URLs through fsspec)",
    _partitions_matches, _partitions_read, _partitions_describe, _partitions_chunks,
)
register_reader(_PARTITIONS)


# -- public entry points --------------------------------------------------------------------
def read(
    source: Any,
    *,
    assay: str | None = None,
    layer: str | None = None,
    genes: Sequence[str] | None = None,
    value_kind: ValueKind | None = None,
    validate: bool = True,
    **options: Any,
) -> CellMatrix:
    """Read any supported container into a cells x genes :class:`~bridge.CellMatrix`.

    Parameters
    ----------
    source
        A path (``.rds`` / ``.rda`` / ``.RData`` with a Seurat, SingleCellExperiment or
        matrix, alone, beside objects of other kinds, or as the one such element of a list;
        ``.h5ad``; Arrow CSR ``.arrow`` / ``.arrows``; a 10x ``matrix.mtx`` folder or
        ``.h5``), a data set shipped in an installed R package written as in R
        (``"SeuratObject::pbmc_small"``), a live rpy2 R object, an :class:`anndata.AnnData`,
        or a ``CellMatrix``.
    assay
        Seurat assay (default: the active assay), SingleCellExperiment assay (default
        ``counts``, falling back to ``logcounts``; ``"altexp:HTO"`` for the altExp ``HTO``,
        whose assay ``layer=`` then names), or 10x feature type.
    layer
        Seurat layer (``counts``, ``data``, a split v5 layer such as ``counts.A``; ``counts``
        joins all ``counts.*`` layers in the object's cell order) or AnnData ``X`` / ``raw`` /
        a named layer.
    genes
        Reorder / restrict the columns to these gene ids (an error names any not present).
    value_kind
        Override the detected kind of values (``counts`` or ``lognorm``).
    validate
        Check ids, structure and values (on by default; ``False`` trusts the source).
    **options
        Reader-specific options: ``backed=True`` for ``.h5ad``; ``var_names="gene_ids"``
        for 10x outputs.

    Returns
    -------
    CellMatrix
        For a ``dgCMatrix`` and for a single-batch Arrow file, ``X``'s arrays are views on
        the R object / the memory map (no copy).
    """
    matrix = _read_any(source, assay=assay, layer=layer, value_kind=value_kind,
                       validate=validate, **options)
    if genes is not None:
        matrix = matrix.select_genes(genes)
    return matrix


def _as_path(source: str | os.PathLike[str]) -> Any:
    """A local path, or the text of a URL / glob pattern (which ``Path`` would mangle)."""
    from .partitions import is_url_or_pattern

    return os.fspath(source) if is_url_or_pattern(source) else Path(source).expanduser()


def _is_package_object(source: Any) -> bool:
    """``"SeuratObject::pbmc_small"``: a data set shipped in an installed R package."""
    if not isinstance(source, str) or "::" not in source:
        return False
    from .rds import parse_package_object

    return parse_package_object(source) is not None


def _read_any(source: Any, **kw: Any) -> CellMatrix:
    if isinstance(source, CellMatrix):
        return source
    if _is_package_object(source):
        from .rds import read_r

        return read_r(source, **kw)
    if isinstance(source, str | os.PathLike):
        path = _as_path(source)
        return _reader_for(path).read(path, **kw)
    if type(source).__name__ == "AnnData":
        from .h5ad import read_anndata

        kw.pop("backed", None)
        return read_anndata(source, **kw)
    from . import _r

    if _r.is_r_object(source):
        from .rds import read_r

        return read_r(source, **kw)
    msg = (
        f"cannot read a {type(source).__module__}.{type(source).__name__}. Pass a file path, "
        "an rpy2 R object (Seurat, SingleCellExperiment, dgCMatrix), an AnnData, or a CellMatrix."
    )
    raise UnsupportedError(msg)


def read_chunks(source: Any, chunk_size: int, **kw: Any) -> Iterator[CellMatrix]:
    """Stream ``source`` in chunks of cells.

    ``.h5ad`` files are streamed in backed mode, Arrow files batch by batch and partitioned
    data sets partition by partition, so inputs larger than memory can be converted or
    annotated (those readers also take ``balanced=True``: near-equal chunks instead of full
    ones and a remainder, and ``validate=False``); other sources are read, then sliced into
    views.
    """
    if isinstance(source, str | os.PathLike) and not _is_package_object(source):
        path = _as_path(source)
        reader = _reader_for(path)
        if reader.iter_chunks is not None:
            yield from reader.iter_chunks(path, chunk_size, **kw)
            return
    kw.pop("balanced", None)  # a matrix read whole is cut into full chunks
    yield from read(source, **kw).iter_chunks(chunk_size)


def read_sample(source: Any, n: int, **kw: Any) -> CellMatrix | None:
    """About ``n`` cells spread evenly over a file that streams (the runs of
    :func:`bridge.numerics.spread_runs`, the cells an engine samples from a matrix in
    memory), read without the rest of the file; ``None`` for inputs whose reader cannot
    (partitioned data sets, inputs read whole).  ``kw``: as for :func:`read_chunks`."""
    if not isinstance(source, str | os.PathLike) or _is_package_object(source):
        return None
    path = _as_path(source)
    reader = _reader_for(path)
    if reader.iter_chunks is None or not reader.samples:
        return None
    kw = {k: v for k, v in kw.items() if k not in ("balanced", "sample")}
    parts = list(reader.iter_chunks(path, n, sample=n, **kw))
    if not parts:
        return None
    first = parts[0]
    X = first.X if len(parts) == 1 else sp.vstack([p.X for p in parts], format="csr")
    return CellMatrix(X, np.concatenate([p.cells for p in parts]), first.genes,
                      value_kind=first.value_kind, source=first.source, validate=False)


def can_stream(source: str | os.PathLike[str]) -> bool:
    """Whether :func:`read_chunks` streams ``source`` (``.h5ad``, Arrow CSR, partitions)
    rather than reading it whole first."""
    if _is_package_object(source):
        return False
    try:
        return _reader_for(_as_path(source)).iter_chunks is not None
    except UnsupportedError:
        return False


def describe(source: Any) -> dict[str, Any]:
    """What a file holds: class, assays, layers, dims, nnz (no matrix is converted)."""
    if isinstance(source, str | os.PathLike) and not _is_package_object(source):
        path = _as_path(source)
        return _reader_for(path).describe(path)
    from .rds import describe_r

    return describe_r(source)


@dataclass(frozen=True)
class Writer:
    """How to write a :class:`CellMatrix` to files of some suffixes."""

    name: str
    suffixes: tuple[str, ...]
    write: Callable[..., None]


_WRITERS: list[Writer] = []


def register_writer(writer: Writer) -> None:
    """Add a writer for the file suffixes it names (later registrations win)."""
    _WRITERS.insert(0, writer)


def _write_arrow(matrix: CellMatrix, path: Path, *, chunk_size: int | None = None,
                 **options: Any) -> None:
    from .arrow import write_arrow

    write_arrow(matrix, path, chunk_size=chunk_size, **options)


def _write_h5ad(matrix: CellMatrix, path: Path, *, chunk_size: int | None = None,
                **options: Any) -> None:
    from .h5ad import write_h5ad

    write_h5ad(matrix, path, **options)


def _write_rds(matrix: CellMatrix, path: Path, *, chunk_size: int | None = None,
               **options: Any) -> None:
    from .rds_write import write_rds

    write_rds(matrix, path, **options)


register_writer(Writer("Arrow CSR", (".arrow", ".arrows", ".ipc"), _write_arrow))
register_writer(Writer("AnnData", (".h5ad",), _write_h5ad))
register_writer(Writer("R object", (".rds",), _write_rds))


def write(
    matrix: CellMatrix, path: str | os.PathLike[str], *, chunk_size: int | None = None,
    **options: Any,
) -> Path:
    """Write ``matrix`` as Arrow CSR (``.arrow`` file, ``.arrows`` stream), ``.h5ad`` or ``.rds``.

    ``.rds`` takes ``container="dgCMatrix"`` (default), ``"SingleCellExperiment"`` or ``"Seurat"``.
    Arrow takes ``offsets="auto" | "int32" | "int64"`` and ``values_dtype``.
    """
    out = Path(path)
    suffix = out.suffix.lower()
    for writer in _WRITERS:
        if suffix in writer.suffixes:
            writer.write(matrix, out, chunk_size=chunk_size, **options)
            return out
    known = ", ".join(s for w in reversed(_WRITERS) for s in w.suffixes)
    msg = f"cannot write {suffix!r}: bridge.write() writes {known}."
    raise UnsupportedError(msg)

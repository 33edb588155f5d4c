"""``scbridge convert IN OUT``: any supported input to Arrow CSR or .h5ad."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

NAME = "convert"
HELP = ("convert an input to Arrow CSR (.arrow file, .arrows stream, a folder of partitions), "
        ".h5ad or .rds")
logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help=".rds, .RData, .h5ad, .arrow/.arrows, 10x folder or .h5, "
                                      "or a folder / glob / URL of Arrow CSR partitions")
    parser.add_argument("output", help="output .arrow, .arrows, .h5ad or .rds (dgCMatrix), or a "
                                       "folder (FOLDER/) of Arrow CSR partitions")
    parser.add_argument("--assay", help="Seurat / SCE assay (default: active assay / counts)")
    parser.add_argument("--layer", help="layer: counts, data, counts.A, an AnnData layer, raw")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="cells per Arrow record batch (default: one batch; streaming "
                             "inputs such as .h5ad are converted chunk by chunk)")
    parser.add_argument("--cells-per-partition", type=int, default=None, metavar="N",
                        help="with a folder as output: cells per partition (default 100,000)")


def _is_folder(output: str) -> bool:
    """An output named as a folder (``parts/``, an existing folder, or no suffix)."""
    return output.endswith(("/", os.sep)) or Path(output).is_dir() or not Path(output).suffix


def convert(input: str, output: str, *, assay: str | None = None, layer: str | None = None,
            chunk_size: int | None = None, cells_per_partition: int | None = None) -> Path:
    """Convert ``input`` to ``output``.

    .h5ad, Arrow and partitioned inputs -> Arrow stream chunk by chunk (a partitioned input
    always; the others with ``chunk_size``), never holding the whole matrix; 64-bit offsets
    (``large_list``) when the input holds more than 2**31 - 1 values.  A folder as
    ``output`` gets a partitioned data set (:func:`bridge.write_partitions`, streamed too).
    """
    from .. import io
    from .._arrow_csr import needs_large
    from .._partitioned import DEFAULT_CELLS_PER_PARTITION, write_partitions
    from ..engines import DEFAULT_CHUNK_SIZE
    from ..io._files import refuse_same_file
    from ..io.arrow import arrow_schema, batches_from_matrix, write_batches

    out = Path(output)
    refuse_same_file(out, [input], what="the output")  # before anything is read
    if _is_folder(output):
        write_partitions(input, out, assay=assay, layer=layer,
                         cells_per_partition=cells_per_partition or DEFAULT_CELLS_PER_PARTITION)
        return out
    info = io.describe(input) if io.can_stream(input) else {}
    partitioned = info.get("kind") == "partitions"
    streaming = out.suffix in (".arrow", ".arrows") and bool(info)
    if not streaming or not (chunk_size or partitioned):
        matrix = io.read(input, assay=assay, layer=layer)
        return io.write(matrix, out, chunk_size=chunk_size)
    options = {k: v for k, v in (("assay", assay), ("layer", layer)) if v is not None}
    chunks = io.read_chunks(input, chunk_size or DEFAULT_CHUNK_SIZE, **options)
    first = next(chunks)
    schema = arrow_schema(first, large=needs_large(_total_nnz(info), "auto"))

    def batches() -> Iterator[pa.RecordBatch]:
        progress = tqdm(desc="converting", unit="cells")
        for chunk in (first, *chunks):
            yield from batches_from_matrix(chunk, schema=schema)
            progress.update(chunk.n_cells)
        progress.close()

    write_batches(schema, batches(), out, stream=out.suffix == ".arrows")
    return out


def _total_nnz(info: dict[str, Any]) -> int:
    """The values of the input (the largest matrix's, when it holds several)."""
    if "nnz" in info:
        return int(info["nnz"])
    layers = [layer for assay in info.get("assays", {}).values()
              for layer in assay.get("layers", {}).values()]
    return max((int(layer.get("nnz") or 0) for layer in layers), default=0)


def run(args: argparse.Namespace) -> int:
    out = convert(args.input, args.output, assay=args.assay, layer=args.layer,
                  chunk_size=args.chunk_size, cells_per_partition=args.cells_per_partition)
    logger.info("wrote %s", out)
    return 0

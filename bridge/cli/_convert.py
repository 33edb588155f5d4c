"""``scbridge convert IN OUT``: any supported input to Arrow CSR or .h5ad."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

NAME = "convert"
HELP = "convert an input to Arrow CSR (.arrow file, .arrows stream), .h5ad or .rds"
logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help=".rds, .RData, .h5ad, .arrow/.arrows, 10x folder or .h5")
    parser.add_argument("output", help="output .arrow, .arrows, .h5ad or .rds (dgCMatrix)")
    parser.add_argument("--assay", help="Seurat / SCE assay (default: active assay / counts)")
    parser.add_argument("--layer", help="layer: counts, data, counts.A, an AnnData layer, raw")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="cells per Arrow record batch (default: one batch; streaming "
                             "inputs such as .h5ad are converted chunk by chunk)")


def convert(input: str, output: str, *, assay: str | None = None, layer: str | None = None,
            chunk_size: int | None = None) -> Path:
    """Convert ``input`` to ``output``.

    .h5ad -> Arrow with ``chunk_size`` streams in backed mode (never the whole matrix).
    """
    from .. import io
    from ..io._files import refuse_same_file
    from ..io.arrow import arrow_schema, batches_from_matrix, write_batches

    out = Path(output)
    refuse_same_file(out, [input], what="the output")  # before anything is read
    streaming = (out.suffix in (".arrow", ".arrows")
                 and Path(input).suffix.lower() in (".h5ad", ".arrow", ".arrows"))
    if not chunk_size or not streaming:
        matrix = io.read(input, assay=assay, layer=layer)
        return io.write(matrix, out, chunk_size=chunk_size)
    chunks = io.read_chunks(input, chunk_size, layer=layer)
    first = next(chunks)
    schema = arrow_schema(first)

    def batches() -> Iterator[pa.RecordBatch]:
        progress = tqdm(desc="converting", unit="cells")
        for chunk in (first, *chunks):
            yield from batches_from_matrix(chunk, schema=schema)
            progress.update(chunk.n_cells)
        progress.close()

    write_batches(schema, batches(), out, stream=out.suffix == ".arrows")
    return out


def run(args: argparse.Namespace) -> int:
    out = convert(args.input, args.output, assay=args.assay, layer=args.layer,
                  chunk_size=args.chunk_size)
    logger.info("wrote %s", out)
    return 0

"""``scbridge annotate IN --out OUT``: cell-type calls to Parquet, Arrow, CSV or JSON."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .._contract import metadata_dict
from .._errors import InputError, MissingDependencyError
from ..io._files import refuse_clashes, refuse_same_file
from ._calls_out import SUFFIXES, write_calls

NAME = "annotate"
HELP = "cell-type calls for every cell (embedded marker engine by default)"
logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help=".rds, .RData, .h5ad, .arrow/.arrows, 10x folder or .h5, "
                                      "or a folder / glob / URL of Arrow CSR partitions")
    parser.add_argument("--out", required=True,
                        help="calls file: .parquet, .arrow (IPC file), .csv or .json")
    parser.add_argument("--model", default="markers", help="engine (default: markers)")
    parser.add_argument("--atlas", help="the engine's knowledge base (a folder or marker file in "
                                        "its format) or reference file")
    parser.add_argument("--tissue", help="tissue context of the markers engine: a tissue name, "
                                         "synonym or UBERON id (e.g. pancreas, "
                                         "UBERON:0001264; ';' between several), 'auto' "
                                         "(default: inferred from the data), 'all' (every "
                                         "type on equal terms) or 'unknown' (only the types "
                                         "found in every tissue expected)")
    parser.add_argument("--min-gene-fraction", type=float, default=None, metavar="F",
                        help="refuse inputs holding fewer of the model's genes than this "
                             "fraction (default: the model's own)")
    parser.add_argument("--assay", help="Seurat / SCE assay (default: active assay / counts); "
                                        "altexp:NAME for an SCE's altExp")
    parser.add_argument("--layer", help="layer: counts, data, an AnnData layer, raw")
    parser.add_argument("--value-kind", choices=("counts", "lognorm", "normalized"),
                        help="what the values are, when the guess from the layer is wrong "
                             "(normalized: TPM / CPM / FPKM, not logged)")
    parser.add_argument("--min-confidence", type=float, default=None,
                        help="label cells below this confidence 'Unknown' (raw call kept)")
    parser.add_argument("--groups", help="cell metadata column to smooth labels over "
                                         "(e.g. seurat_clusters)")
    parser.add_argument("--no-qc", action="store_true", help="skip the QC columns")
    parser.add_argument("--qc-table", metavar="QC",
                        help="attach this table from `scbridge qc` instead of computing QC")
    parser.add_argument("--chunk-size", type=int, default=None, help="cells per chunk")
    parser.add_argument("--endpoint", help="annotate through this service URL instead")
    parser.add_argument("--api-key-env", default="SCBRIDGE_API_KEY",
                        help="environment variable holding the service's API key")
    parser.add_argument("--transport", choices=("arrow", "json"), default="arrow")
    parser.add_argument("--write-back", metavar="OUT_OBJECT",
                        help="also write the input with cell_type, cell_type_confidence and "
                             "cell_type_ontology added: .rds (from .rds or .rda), .rda / "
                             ".RData (from .rda: the file's other objects kept) or .h5ad; "
                             "checked before the annotation starts")
    parser.add_argument("--report", metavar="HTML", help="write an HTML report")
    parser.add_argument("--no-layout", action="store_true",
                        help="with --write-back: leave out the 2-D layout (by default it is "
                             "written as a Seurat DimReduc 'scbridge_umap', SCE reducedDim "
                             "'SCBRIDGE_UMAP' or AnnData obsm 'X_scbridge_umap'; the report "
                             "draws the same layout, computed once)")
    parser.add_argument("--partitions", action="store_true",
                        help="input is a folder, glob or URL of Arrow CSR partitions "
                             "(bridge.write_partitions): one Dask task per partition "
                             "(a folder of .arrow files is recognised without this flag)")
    parser.add_argument("--calls-dir", metavar="DIR",
                        help="partitions: per-partition calls files (a Parquet data set), "
                             "written as partitions finish (default: OUT's name + .parts)")
    parser.add_argument("--resume", action="store_true",
                        help="partitions: reuse the complete, matching per-partition calls "
                             "of an earlier run that stopped; compute only the rest")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="with --partitions: a Dask scheduler (default: a local cluster)")
    parser.add_argument("--workers", type=int, default=None,
                        help="with --partitions and no --scheduler: local worker processes")
    parser.add_argument("--quiet", action="store_true", help="no summary, no progress bar")


def summary(table: pa.Table) -> str:
    """Counts per label, mean confidence, genes matched."""
    labels = pc.cast(table.column("label"), pa.string())
    counts = pc.value_counts(labels).to_pylist()
    counts.sort(key=lambda d: -d["counts"])
    meta = metadata_dict(table)
    n = table.num_rows
    confidence = pc.mean(table.column("confidence")).as_py() if n else float("nan")
    lines = [f"{n:,} cells, mean confidence {confidence:.3f}, engine {meta.get('model', '?')}"]
    matched = meta.get("genes_matched")
    if matched is not None:
        mapped = meta.get("genes_mapped", 0)
        kind = meta.get("gene_id_kind", "?")
        extra = f", {mapped:,} ids mapped to symbols" if mapped else ""
        lines.append(f"genes matched: {float(matched):.1%} of the engine's genes "
                     f"(ids: {kind}{extra})")
    context = meta.get("tissue")
    if isinstance(context, dict):
        expects = context.get("expects", "every type")
        tissues = ", ".join(context.get("tissues") or []) or f"none ({expects} expected)"
        lines.append(f"tissue context: {tissues} ({context.get('source', '?')})")
    width = max((len(str(c["values"])) for c in counts), default=5)
    for c in counts:
        share = c["counts"] / n if n else 0
        lines.append(f"  {c['values']!s:<{width}}  {c['counts']:>8,}  {share:6.1%}")
    if "qc_pass" in table.column_names and n:
        failed = n - int(pc.sum(table.column("qc_pass")).as_py() or 0)
        lines.append(f"QC: {failed:,} cells flagged (column qc_reason); none removed")
    return "\n".join(lines)


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """Engine parameters given on the command line (only those set)."""
    options = {"tissue": args.tissue, "min_gene_fraction": args.min_gene_fraction}
    return {k: v for k, v in options.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in SUFFIXES:
        msg = f"--out {out}: unsupported suffix {out.suffix!r}; use one of {', '.join(SUFFIXES)}."
        raise InputError(msg)
    if args.report:
        import importlib.util

        if importlib.util.find_spec("bridge._report") is None:
            msg = ("--report needs the bridge.report module, which this installation lacks; "
                   "run without --report or install the full scbridge package.")
            raise MissingDependencyError(msg)
    inputs = [args.input, args.atlas, args.qc_table]
    refuse_clashes({"--out": out, "--write-back": args.write_back, "--report": args.report},
                   inputs)
    if args.partitions or _is_partitioned(args.input):
        return _run_partitions(args, out)
    if args.scheduler or args.workers or args.resume or args.calls_dir:
        msg = ("--scheduler, --workers, --resume and --calls-dir go with a partitioned data "
               "set (a folder of Arrow CSR partitions); split a large file into one with "
               "`scbridge convert IN FOLDER/ --cells-per-partition N`.")
        raise InputError(msg)
    from ..io.rds import reuse_loaded

    with reuse_loaded():  # an R input is loaded once: write-back check, reading, writing back
        return _run_one(args, out, inputs)


def _run_one(args: argparse.Namespace, out: Path, inputs: list[Any]) -> int:
    from .._annotate import annotate
    from ..io import read

    if args.write_back:
        from ..io.write_back import check_write_back

        check_write_back(args.input, args.write_back)  # before any computation
    # Only the report and the write-back's layout need the matrix itself; otherwise a path
    # lets annotate stream a large file chunk by chunk.
    needs_matrix = bool(args.report) or bool(args.write_back and not args.no_layout)
    matrix = (read(args.input, assay=args.assay, layer=args.layer, value_kind=args.value_kind)
              if needs_matrix else None)
    api_key = os.environ.get(args.api_key_env) if args.endpoint else None
    qc: bool | pa.Table = not args.no_qc
    if args.qc_table:
        from ._table_io import read_table

        qc = read_table(args.qc_table)
    options = ({} if matrix is not None else
               {"assay": args.assay, "layer": args.layer, "value_kind": args.value_kind})
    table = annotate(args.input if matrix is None else matrix, model=args.model, atlas=args.atlas,
                     min_confidence=args.min_confidence, groups=args.groups,
                     qc=qc, endpoint=args.endpoint, api_key=api_key,
                     transport=args.transport, chunk_size=args.chunk_size,
                     progress=not args.quiet, **options, **engine_options(args))
    write_calls(table, out, inputs=inputs)
    if args.write_back:
        from .._cellmap import layout_table
        from ..io.write_back import write_back

        columns = pa.table({
            "cell": table.column("cell"),
            "cell_type": pc.cast(table.column("label"), pa.string()),
            "cell_type_confidence": table.column("confidence"),
            "cell_type_ontology": table.column("ontology_id"),
        })
        # The layout is computed once here; the report below reuses it (bridge._cellmap).
        layout = (None if args.no_layout or matrix is None
                  else layout_table(matrix, progress=not args.quiet))
        write_back(args.input, columns, args.write_back, overwrite=True, layout=layout,
                   assay=args.assay)
    report = None
    if args.report and matrix is not None:
        from .._report import write_report

        report = write_report(args.report, matrix, table, inputs=inputs)
    if not args.quiet:
        print(summary(table))
        print(f"wrote {out}" + (f", {args.write_back}" if args.write_back else "")
              + (f", {report}" if report else ""), file=sys.stderr)
    return 0


def _is_partitioned(source: str) -> bool:
    """A folder of Arrow CSR files, a glob pattern or a URL: a partitioned data set."""
    from ..io.partitions import is_partition_folder, is_url_or_pattern

    return is_url_or_pattern(source) or is_partition_folder(Path(source))


def default_calls_dir(out: Path) -> Path:
    """Where the per-partition calls of ``--out calls.parquet`` go: ``calls.parts/``."""
    return out.with_name(out.stem + ".parts")


def _run_partitions(args: argparse.Namespace, out: Path) -> int:
    """A partitioned data set on a Dask cluster: per-partition calls files as partitions
    finish (``--resume`` reuses those of a run that stopped), then streamed into ``--out``."""
    from .._partitioned import write_partition_calls_dir
    from ._assemble import assemble_calls

    refused = [flag for flag, value in (("--endpoint", args.endpoint), ("--groups", args.groups),
                                        ("--write-back", args.write_back),
                                        ("--report", args.report), ("--assay", args.assay),
                                        ("--layer", args.layer), ("--qc-table", args.qc_table))
               if value]
    if refused:
        msg = (f"{', '.join(refused)} cannot be used with --partitions: annotate the "
               "partitions, then work on the gathered calls.")
        raise InputError(msg)
    calls_dir = Path(args.calls_dir) if args.calls_dir else default_calls_dir(out)
    refuse_same_file(calls_dir, [args.input], what="--calls-dir")  # its calls files are replaced
    done = write_partition_calls_dir(
        args.input, calls_dir, client=args.scheduler, n_workers=args.workers,
        model=args.model, atlas=args.atlas, min_confidence=args.min_confidence,
        qc=not args.no_qc, resume=args.resume, chunk_size=args.chunk_size,
        value_kind=args.value_kind, progress=not args.quiet, **engine_options(args))
    partitions = [d.partition for d in done]
    summary_table = assemble_calls([d.calls for d in done], partitions, out,
                                   inputs=[args.input, args.atlas], provenance={
        "source": f"{len(done)} Arrow CSR partitions", "partitions": partitions})
    if not args.quiet:
        print(summary(summary_table))
        resumed = sum(d.reused for d in done)
        if args.resume:
            print(f"resumed: {resumed} of {len(done)} partitions reused from {calls_dir}")
        print(f"wrote {out} (per-partition calls in {calls_dir})", file=sys.stderr)
    return 0

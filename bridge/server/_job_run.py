"""The workspace's job process: ``python -m bridge.server._job_run run JOB_DIR`` (read,
annotate, lay out, summarise) and ``... export JOB_DIR KIND OUT`` (the exports that need R or
a long computation: ``rds``, ``h5ad``, ``report``).

Layer: server (a child of it; uses the public API).  It writes ``progress.json`` as it goes
and, at the end, ``results/result.json`` or ``results/error.json`` (the service's error shape:
code, message, hint).  The server reads nothing else from it: the exit status only tells a
crash from a clean end.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from .._errors import BridgeError, InputError, UnsupportedError
from ._jobs import read_json, write_json
from ._problems import ApiError, from_bridge_error
from ._results import (
    CURATED,
    OBS_PREFIX,
    JobResults,
    as_text,
    category_codes,
    grouping_columns,
    is_label_column,
)

__all__ = ["build_view", "layout_cells", "main", "run_export", "run_job"]

logger = logging.getLogger("bridge.server.job")

NUMERIC_CALL_COLUMNS = ("confidence", "smoothed_confidence", "total_counts", "n_genes",
                        "mito_fraction", "doublet_score")
MAX_META_COLUMNS = 30


class Progress:
    """Writes ``progress.json`` (stage, fraction, message) for the server to relay."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "progress.json"
        self.extra: dict[str, Any] = {}
        self.stages: list[str] = []  # every stage so far: a brief one is never lost to polling

    def __call__(self, stage: str, fraction: float, message: str, **extra: Any) -> None:
        self.extra.update(extra)
        if not self.stages or self.stages[-1] != stage:
            self.stages.append(stage)
        write_json(self.path, {"stage": stage, "stages": self.stages, "fraction": fraction,
                               "message": message, "updated": time.time(), **self.extra})
        logger.info("%s (%.0f%%): %s", stage, 100 * fraction, message)


def layout_cells(matrix: Any, method: str = "auto", seed: int = 0) -> tuple[NDArray[Any], str]:
    """The workspace's 2-D layout of the cells: the shared layout of :mod:`bridge._cellmap`
    (PCA, kNN graph and a UMAP-style layout computed once per matrix, the same the report and
    write-back use)."""
    from .._cellmap import DISPLAY_NAMES
    from .._cellmap import layout as cell_layout

    laid_out = cell_layout(matrix, method=method, seed=seed)
    if laid_out is not None:
        coords, used = laid_out
        return np.asarray(coords, dtype=np.float32), DISPLAY_NAMES[used]
    logger.warning("too few cells or expressed genes for an embedding; cells are placed on a "
                   "circle")
    angle = np.linspace(0, 2 * np.pi, matrix.n_cells, endpoint=False)
    return np.column_stack([np.cos(angle), np.sin(angle)]).astype(np.float32), "none"


def _numbers(column: pa.ChunkedArray) -> list[float | None]:
    values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
    rounded = np.round(values, 4)
    return [None if not np.isfinite(v) else float(v) for v in rounded.tolist()]


def build_view(calls: pa.Table, obs: pa.Table, coords: NDArray[Any], method: str
               ) -> dict[str, Any]:
    """The page's columnar JSON: ids, layout and every column it can colour or group by."""
    columns: list[dict[str, Any]] = []
    for field in calls.schema:
        if is_label_column(field.name, field.type):
            levels, codes = category_codes(as_text(calls.column(field.name)))
            columns.append({"name": field.name, "kind": "label", "levels": levels,
                            "codes": codes})
    for name in NUMERIC_CALL_COLUMNS:
        if name in calls.column_names:
            columns.append({"name": name, "kind": "numeric",
                            "values": _numbers(calls.column(name))})
    for name in grouping_columns(calls):
        if not is_label_column(name, calls.schema.field(name).type):
            levels, codes = category_codes(as_text(calls.column(name)))
            columns.append({"name": name, "kind": "category", "levels": levels, "codes": codes})
    shown = 0
    for field in obs.schema:
        if field.name == "cell" or shown >= MAX_META_COLUMNS:
            continue
        name = f"{OBS_PREFIX}{field.name}"
        kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            columns.append({"name": name, "kind": "numeric",
                            "values": _numbers(obs.column(field.name))})
            shown += 1
        elif name in grouping_columns(obs.select([field.name]), prefix=OBS_PREFIX):
            levels, codes = category_codes(as_text(obs.column(field.name)))
            columns.append({"name": name, "kind": "category", "levels": levels, "codes": codes})
            shown += 1
    return {
        "n_cells": calls.num_rows, "layout": method,
        "cells": [str(c) for c in calls.column("cell").to_pylist()],
        "x": np.round(coords[:, 0].astype(np.float64), 4).tolist(),
        "y": np.round(coords[:, 1].astype(np.float64), 4).tolist(),
        "columns": columns, "provenance": provenance(calls),
    }


def provenance(table: pa.Table) -> dict[str, Any]:
    """The ``scbridge.*`` schema metadata as a dict (JSON values decoded)."""
    from .._contract import metadata_dict

    return metadata_dict(table)


def _obs_table(matrix: Any) -> pa.Table:
    cells = pa.array(matrix.cells.astype(str).tolist(), pa.string())
    obs = getattr(matrix, "obs", None)
    if obs is None or obs.num_columns == 0 or obs.num_rows != matrix.n_cells:
        return pa.table({"cell": cells})
    keep = [f.name for f in obs.schema if f.name != "cell"
            and not pa.types.is_nested(f.type)]
    return obs.select(keep).add_column(0, "cell", cells)


def _pipeline(folder: Path, job: dict[str, Any], progress: Progress) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from .._annotate import annotate
    from ..io import read, write

    results = folder / "results"
    engine = job["engine"]
    progress("reading", 0.02, f"reading {job['name']}")
    try:
        matrix = read(job["input"])
    except BridgeError as exc:
        raise _read_error(exc, job["name"]) from exc
    n = matrix.n_cells
    if n > job["max_cells"]:
        raise ApiError(413, "too_many_cells",
                       f"{job['name']} has {n:,} cells; this server takes at most "
                       f"{job['max_cells']:,} per job.",
                       "subset the data, or start the server with a larger --max-cells")
    if n == 0:
        msg = f"{job['name']} holds no cells."
        raise InputError(msg)
    progress("annotating", 0.15, f"annotating {n:,} cells x {matrix.n_genes:,} genes "
             f"({engine['model']})", n_cells=n)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calls = annotate(matrix, model=engine["model"], atlas=engine["atlas"],
                         min_confidence=engine["min_confidence"], progress=False,
                         **engine["params"])
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    pq.write_table(calls, results / "calls.parquet")
    pq.write_table(_obs_table(matrix), results / "obs.parquet")
    progress("saving", 0.35, "keeping the matrix as Arrow CSR for dot plots and exports")
    write(matrix, results / "matrix.arrow")
    progress("embedding", 0.4, "PCA embedding and 2-D layout")
    coords, method = layout_cells(matrix, engine.get("layout", "auto"))
    layout = pa.table({"cell": calls.column("cell"), "x": pa.array(coords[:, 0]),
                       "y": pa.array(coords[:, 1])}).replace_schema_metadata(
        {b"scbridge.layout": method.encode()})
    pq.write_table(layout, results / "layout.parquet")
    progress("markers", 0.85, "marker genes per label")
    view = build_view(calls, pq.read_table(results / "obs.parquet"), coords, method)
    write_json(results / "view.json", view)
    dotplot = JobResults(folder, check=False).dotplot("label")
    write_json(results / "dotplot-label-0.json", dotplot)
    label_columns = [c["name"] for c in view["columns"] if c["kind"] == "label"]
    return {"n_cells": n, "n_genes": matrix.n_genes, "layout": method,
            "label_columns": label_columns, "source": matrix.source, "warnings": notes,
            "finished": time.time()}


def _read_error(exc: BridgeError, name: str) -> ApiError:
    """A reading error that names the file as the user knows it, with a hint for files."""
    from .._errors import RError

    api = from_bridge_error(exc)
    message = api.message if name in api.message else f"{name}: {api.message}"
    if isinstance(exc, RError):
        return ApiError(422, "unreadable_file", message,
                        "check that the file opens in R (readRDS() for .rds, load() for .RData) "
                        "and holds a Seurat, SingleCellExperiment or sparse matrix object")
    hint = api.hint if not api.hint.startswith(("see /openapi", "GET /v1")) else \
        "check the file: scbridge inspect FILE shows what scbridge finds in it"
    return ApiError(api.status, api.code, message, hint)


def _error(exc: BaseException, folder: Path | None = None) -> dict[str, Any]:
    """The service's error shape; the server's own folders are cut out of the message."""
    if isinstance(exc, ApiError):
        error = {"code": exc.code, "message": exc.message, "hint": exc.hint}
    elif isinstance(exc, BridgeError):
        api = from_bridge_error(exc)
        error = {"code": api.code, "message": api.message, "hint": api.hint}
    else:
        error = _unexpected(exc)
    if folder is not None:
        for prefix in (f"{folder / 'input'}/", f"{folder}/"):
            error["message"] = error["message"].replace(prefix, "")
    return error


def _unexpected(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, MemoryError):
        return {"code": "out_of_memory", "message": "the job ran out of memory.",
                "hint": "use a smaller data set or a server with more memory"}
    return {"code": "internal_error", "message": "the job failed with an unexpected error.",
            "hint": "the server log has the details; please report it"}


def run_job(folder: Path) -> int:
    """Run the job in ``folder``; 0 when ``results/result.json`` was written."""
    job = read_json(folder / "job.json")
    progress = Progress(folder)
    try:
        outcome = _pipeline(folder, job, progress)
    except Exception as exc:
        if not isinstance(exc, ApiError | BridgeError):
            logger.exception("job failed")
        write_json(folder / "results" / "error.json", _error(exc, folder))
        return 1
    write_json(folder / "results" / "result.json", outcome)
    progress("finished", 1.0, f"{outcome['n_cells']:,} cells annotated")
    return 0


def _write_back_columns(table: pa.Table) -> pa.Table:
    """The columns an exported object gains (named as ``scbridge annotate --write-back``
    names them), plus other depths and the curated label."""
    import pyarrow.compute as pc

    columns: dict[str, Any] = {
        "cell": table.column("cell"),
        "cell_type": pc.cast(table.column("label"), pa.string()),
        "cell_type_confidence": table.column("confidence"),
        "cell_type_ontology": table.column("ontology_id"),
    }
    for field in table.schema:
        if field.name not in ("label", CURATED) and is_label_column(field.name, field.type):
            suffix = field.name.removeprefix("label").lstrip("_") or "other"
            columns[f"cell_type_{suffix}"] = as_text(table.column(field.name)).tolist()
    if CURATED in table.column_names:
        columns["cell_type_curated"] = table.column(CURATED)
    return pa.table({k: pa.array(v, pa.string()) if isinstance(v, list) else v
                     for k, v in columns.items()})


def _add_layout_to_h5ad(path: Path, cells: list[str], coords: NDArray[Any], method: str) -> None:
    import h5py

    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem

    name = {"UMAP": "X_umap", "t-SNE": "X_tsne"}.get(method, "X_scbridge_layout")
    with h5py.File(path, "r+") as f:
        index_key = f["obs"].attrs.get("_index", "_index")
        index = [v.decode() if isinstance(v, bytes) else str(v) for v in f["obs"][index_key][:]]
        row = {c: i for i, c in enumerate(cells)}
        aligned = np.full((len(index), 2), np.nan, dtype=np.float32)
        for i, cell in enumerate(index):
            if cell in row:
                aligned[i] = coords[row[cell]]
        if "obsm" not in f:
            f.create_group("obsm")
        if name in f["obsm"]:
            del f["obsm"][name]
        write_elem(f["obsm"], name, aligned)


def run_export(folder: Path, kind: str, out: Path) -> int:
    """Write the annotated object (``rds``, ``h5ad``) or the HTML report to ``out``."""
    from ..io import write
    from ..io.write_back import write_back

    job = read_json(folder / "job.json")
    results = JobResults(folder)
    table = results.calls_with_curation()
    try:
        if kind == "report":
            from .._report import write_report

            label = CURATED if CURATED in table.column_names else "label"
            write_report(out, results.matrix(), table, label_column=label,
                         title=f"scbridge workspace: {job['name']}")
            return 0
        columns = _write_back_columns(table)
        source = Path(job["input"])
        suffix = ".rds" if kind == "rds" else ".h5ad"
        written = False
        if source.suffix.lower() == suffix:
            try:
                write_back(source, columns, out, overwrite=True)
                written = True
            except UnsupportedError as exc:  # e.g. an .rds holding a bare dgCMatrix
                logger.info("no write-back into the input (%s); making a new object", exc)
        if not written:
            # Not a Seurat / SCE .rds or an .h5ad: a new object from the matrix, then the
            # columns (a Seurat object for .rds, as scbridge convert makes it).
            base = out.with_name(f"base-{out.name}")
            if kind == "rds":
                write(results.matrix(), base, container="Seurat")
            else:
                write(results.matrix(), base)
            write_back(base, columns, out, overwrite=True)
            base.unlink(missing_ok=True)
        if kind == "h5ad":
            layout = results.layout()
            method = (layout.schema.metadata or {}).get(b"scbridge.layout", b"").decode()
            coords = np.column_stack([layout.column("x").to_numpy(),
                                      layout.column("y").to_numpy()])
            _add_layout_to_h5ad(out, [str(c) for c in layout.column("cell").to_pylist()],
                                coords, method)
    except Exception as exc:
        if not isinstance(exc, ApiError | BridgeError):
            logger.exception("export %s failed", kind)
        write_json(out.with_name(out.name + ".error.json"), _error(exc, folder))
        return 1
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(argv) == 2 and argv[0] == "run":
        return run_job(Path(argv[1]))
    if len(argv) == 4 and argv[0] == "export":
        return run_export(Path(argv[1]), argv[2], Path(argv[3]))
    print("usage: python -m bridge.server._job_run run JOB_DIR | export JOB_DIR KIND OUT",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

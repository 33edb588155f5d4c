"""A finished job's results as the workspace serves them: calls, curation, groupings, dot plots.

Layer: server (reads what :mod:`._job_run` wrote into ``jobs/<id>/results``):

    calls.parquet    the Calls table exactly as ``bridge.annotate`` returned it (never changed)
    obs.parquet      the input's own per-cell metadata (clusters, sample, ...), by cell
    matrix.arrow     the expression matrix as Arrow CSR (dot plots and exports without R)
    layout.parquet   cell, x, y: the 2-D layout (method in its metadata)
    view.json        the page's columnar copy of all of the above (one request, one parse)
    result.json      written last: the job succeeded
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from ._curation import apply_edits, edits_table, empty_doc
from ._jobs import locked, read_json
from ._problems import ApiError

if TYPE_CHECKING:
    from ..matrix import CellMatrix

__all__ = [
    "CURATED",
    "JobResults",
    "category_codes",
    "grouping_columns",
    "is_label_column",
]

logger = logging.getLogger("bridge.server.results")

CURATED = "label_curated"
OBS_PREFIX = "meta:"
MAX_LEVELS = 500  # a metadata column with more distinct values is not a grouping
DOTPLOT_MAX_LABELS = 60


def is_label_column(name: str, kind: pa.DataType) -> bool:
    """``label`` and its variants at other depths or stages (``label_l1``, ``label_raw``,
    ``label_smoothed``, ...): text columns whose name starts with ``label``."""
    value_type = kind.value_type if pa.types.is_dictionary(kind) else kind
    return name.startswith("label") and (pa.types.is_string(value_type)
                                         or pa.types.is_large_string(value_type))


def as_text(column: pa.ChunkedArray | pa.Array) -> NDArray[Any]:
    """A text / dictionary / bool / number column as an object array of str (None kept)."""
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    return np.asarray([None if v is None else str(v) for v in column.to_pylist()], dtype=object)


def grouping_columns(table: pa.Table, *, prefix: str = "") -> list[str]:
    """Columns of ``table`` that group cells: text / dictionary / bool with few levels."""
    out = []
    for field in table.schema:
        kind = field.type
        value_type = kind.value_type if pa.types.is_dictionary(kind) else kind
        if field.name == "cell" or not (pa.types.is_string(value_type)
                                        or pa.types.is_large_string(value_type)
                                        or pa.types.is_boolean(value_type)):
            continue
        column = table.column(field.name)
        if pa.types.is_dictionary(kind):
            column = pc.cast(column, value_type)
        if pc.count_distinct(column).as_py() <= MAX_LEVELS:
            out.append(prefix + field.name)
    return out


class JobResults:
    """Read access to one finished job's results and its curation edits."""

    def __init__(self, folder: Path, *, check: bool = True) -> None:
        self.folder = folder
        self.results = folder / "results"
        if check and read_json(self.results / "result.json") is None:
            raise ApiError(409, "job_not_done", "this job has no results (yet).",
                           "wait until its state is 'done' (GET /v1/workspace/jobs/{id})")
        self.info: dict[str, Any] = read_json(self.results / "result.json", {}) or {}

    # -- tables ---------------------------------------------------------------------------
    def calls(self) -> pa.Table:
        import pyarrow.parquet as pq

        return pq.read_table(self.results / "calls.parquet")

    def obs(self) -> pa.Table:
        import pyarrow.parquet as pq

        return pq.read_table(self.results / "obs.parquet")

    def layout(self) -> pa.Table:
        import pyarrow.parquet as pq

        return pq.read_table(self.results / "layout.parquet")

    def matrix(self) -> CellMatrix:
        from ..io.arrow import read_arrow

        return read_arrow(self.results / "matrix.arrow", validate=False)

    def cells(self) -> list[str]:
        return [str(c) for c in self.calls().column("cell").to_pylist()]

    # -- curation -------------------------------------------------------------------------
    @property
    def edits_path(self) -> Path:
        return self.folder / "edits.json"

    def edits_doc(self) -> dict[str, Any]:
        return read_json(self.edits_path) or empty_doc()

    def label_columns(self) -> list[str]:
        calls = self.calls()
        return [f.name for f in calls.schema if is_label_column(f.name, f.type)]

    def curated(self, doc: dict[str, Any] | None = None
                ) -> tuple[NDArray[Any], list[dict[str, Any]], dict[str, int]]:
        """``label_curated`` per cell, each edit's effect, and the cell -> row map."""
        doc = doc or self.edits_doc()
        calls = self.calls()
        cells = [str(c) for c in calls.column("cell").to_pylist()]
        cell_rows = {c: i for i, c in enumerate(cells)}
        base = as_text(calls.column(doc["base"]))
        curated, effects = apply_edits(base, cell_rows, doc["edits"])
        return curated, effects, cell_rows

    def curation_reply(self, doc: dict[str, Any] | None = None) -> dict[str, Any]:
        """The edits table and the curated column (as codes into levels) for the page."""
        doc = doc or self.edits_doc()
        curated, effects, _ = self.curated(doc)
        table = edits_table(doc, effects)
        levels, codes = category_codes(curated)
        return {"base": doc["base"], "revision": doc["revision"],
                "edits": table.drop_columns(["cells"]).to_pylist(),
                "curated": {"levels": levels, "codes": codes}}

    def update_edits(self, change: Any) -> dict[str, Any]:
        """Apply ``change(doc, current_labels, cell_rows) -> doc`` under a lock."""
        with locked(self.folder / "edits.lock"):
            doc = self.edits_doc()
            current, _, cell_rows = self.curated(doc)
            doc = change(doc, current, cell_rows)
            doc["revision"] = int(doc.get("revision", 0)) + 1
            from ._jobs import write_json

            write_json(self.edits_path, doc)
        return self.curation_reply(doc)

    def calls_with_curation(self) -> pa.Table:
        """The calls, plus ``label_curated`` when there are edits (the edits table goes in
        the schema metadata as ``scbridge.curation``)."""
        calls = self.calls()
        doc = self.edits_doc()
        if not doc["edits"]:
            return calls
        curated, effects, _ = self.curated(doc)
        table = calls.append_column(CURATED, pa.array(curated.tolist(), pa.string()))
        meta = dict(table.schema.metadata or {})
        meta[b"scbridge.curation"] = json.dumps(
            {"base": doc["base"], "edits": edits_table(doc, effects).to_pylist()}).encode()
        return table.replace_schema_metadata(meta)

    def edits_export(self) -> pa.Table:
        doc = self.edits_doc()
        _, effects, _ = self.curated(doc)
        return edits_table(doc, effects)

    # -- groupings ------------------------------------------------------------------------
    def grouping(self, column: str) -> NDArray[Any]:
        """Every cell's group in ``column``: a label column, ``label_curated`` or ``meta:X``."""
        if column == CURATED:
            return self.curated()[0]
        if column.startswith(OBS_PREFIX):
            obs = self.obs()
            name = column.removeprefix(OBS_PREFIX)
            if name in obs.column_names and f"{OBS_PREFIX}{name}" in grouping_columns(
                    obs, prefix=OBS_PREFIX):
                return as_text(obs.column(name))
        else:
            calls = self.calls()
            if column in grouping_columns(calls):
                return as_text(calls.column(column))
        choices = [*self.label_columns(), CURATED,
                   *grouping_columns(self.obs(), prefix=OBS_PREFIX)]
        raise ApiError(422, "unknown_column", f"{column[:80]!r} does not group the cells of "
                       "this job.", f"use one of: {', '.join(choices)}")

    def dotplot(self, column: str, *, genes_per_label: int = 3, top_n: int = 10
                ) -> dict[str, Any]:
        """Marker genes of every group of ``column`` and the dot plot of the top ones."""
        from .._rank_markers import rank_marker_genes
        from ..numerics import group_moments, log_normalize

        groups = self.grouping(column)
        keep = np.array([g is not None for g in groups])
        names, counts = np.unique(groups[keep].astype(str), return_counts=True)
        order = np.argsort(-counts, kind="stable")[:DOTPLOT_MAX_LABELS]
        label_order = [str(names[k]) for k in order]
        matrix = self.matrix()
        cells = matrix.cells.astype(str).tolist()
        shown = np.isin(groups, np.array(label_order, dtype=object)) & keep
        table = pa.table({"cell": [c for c, s in zip(cells, shown, strict=True) if s],
                          "label": groups[shown].astype(str).tolist()})
        reply: dict[str, Any] = {"column": column, "labels": label_order,
                                 "counts": [int(counts[k]) for k in order], "genes": [],
                                 "fraction": [], "mean": [], "scaled": [], "markers": {}}
        if len(label_order) < 2:
            return reply
        found = rank_marker_genes(matrix, table, top_n=top_n, min_cells=1).to_pylist()
        genes: list[str] = []
        for label in label_order:  # genes grouped by the label they mark, as scanpy draws them
            rows = [r for r in found if r["label"] == label]
            reply["markers"][label] = [
                {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                 for k, v in r.items() if k != "label"} for r in rows]
            # At least 2-fold higher where possible: a high t alone also picks ubiquitous genes.
            specific = [r["gene"] for r in rows if (r["log2_fold_change"] or 0) >= 1.0]
            specific = specific or [r["gene"] for r in rows]
            genes += [g for g in specific if g not in genes][:genes_per_label]
        if not genes:
            return reply
        position = {g: j for j, g in enumerate(matrix.genes.astype(str).tolist())}
        Xn = log_normalize(matrix.X, matrix.value_kind,
                           columns=np.array([position[g] for g in genes]))
        code_of = {label: k for k, label in enumerate(label_order)}
        codes = np.array([code_of.get(g, len(label_order)) if s else len(label_order)
                          for g, s in zip(groups.tolist(), shown, strict=True)])
        _, mean, _ = group_moments(Xn, codes, len(label_order) + 1)
        binary = Xn.copy()
        binary.data = (binary.data > 0).astype(np.float64)
        _, fraction, _ = group_moments(binary, codes, len(label_order) + 1)
        mean, fraction = mean[:-1], fraction[:-1]
        lo, hi = mean.min(axis=0), mean.max(axis=0)
        scaled = (mean - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
        reply.update(genes=genes, fraction=np.round(fraction, 4).tolist(),
                     mean=np.round(mean, 4).tolist(), scaled=np.round(scaled, 4).tolist())
        return reply


def category_codes(values: NDArray[Any]) -> tuple[list[str], list[int]]:
    """Levels (most frequent first) and per-cell codes (-1 for no label)."""
    present = np.array([v is not None for v in values.tolist()])
    text = np.where(present, values, "").astype(str)
    names, inverse, counts = np.unique(text[present], return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    codes = np.full(len(values), -1, dtype=np.int64)
    codes[present] = rank[inverse]
    return [str(names[k]) for k in order], codes.tolist()

"""The Calls table: one row per cell, in input order (DESIGN §3).

=============  ===========================================  =====================================
column         type                                         meaning
=============  ===========================================  =====================================
cell           utf8                                         cell id
label          dictionary<int32, utf8>                      the call (raw unless a threshold is set)
ontology_id    utf8                                         Cell Ontology id (``CL:0000236``)
confidence     float32 in [0, 1]                            calibrated confidence of ``label``
alternates     list<struct<label: utf8, score: float32>>    runners-up, best first
markers        list<utf8>                                   genes that drove this cell's call
=============  ===========================================  =====================================

Engines may add columns after these.  The embedded marker engine adds
:data:`ENGINE_COLUMNS` (``label_l1``: the call's compartment, ``label_l2``: its lineage, both
from the Cell Ontology; ``unknown_reason``: why a cell is ``Unknown``, null for called cells),
all dictionary<utf8>; ``annotate`` may add QC columns, smoothed labels and ``label_raw``
(when a confidence threshold turned calls into ``Unknown``, whose ``unknown_reason`` is then
``low_confidence``).  Provenance lives in the schema metadata under
``scbridge.*`` keys.  Every engine, local or remote, produces chunks with :func:`chunk_table`
and joins them with :func:`concat_calls`, so all paths give identical tables.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

__all__ = [
    "ALTERNATE_TYPE",
    "CALLS_SCHEMA",
    "ENGINE_COLUMNS",
    "UNKNOWN",
    "ChunkCalls",
    "apply_min_confidence",
    "calls_for_csv",
    "calls_from_records",
    "calls_to_records",
    "chunk_table",
    "concat_calls",
    "metadata_dict",
    "with_metadata",
]

UNKNOWN = "Unknown"
ALTERNATE_TYPE = pa.struct([("label", pa.string()), ("score", pa.float32())])
CALLS_SCHEMA = pa.schema(
    [
        pa.field("cell", pa.string(), nullable=False),
        pa.field("label", pa.dictionary(pa.int32(), pa.string())),
        pa.field("ontology_id", pa.string()),
        pa.field("confidence", pa.float32()),
        pa.field("alternates", pa.list_(ALTERNATE_TYPE)),
        pa.field("markers", pa.list_(pa.string())),
    ]
)
_CORE = tuple(CALLS_SCHEMA.names)
#: Optional engine columns with a fixed type (dictionary<utf8>), kept as such through JSON.
ENGINE_COLUMNS = ("label_l1", "label_l2", "unknown_reason")
_DICTIONARY = pa.dictionary(pa.int32(), pa.string())


@dataclass
class ChunkCalls:
    """What an engine returns for one chunk of cells (rows in the chunk's cell order)."""

    labels: Sequence[str] | pa.Array
    confidence: NDArray[Any]
    ontology_ids: Sequence[str | None] | pa.Array | None = None
    alternates: Sequence[Sequence[tuple[str, float]]] | pa.Array | None = None
    markers: Sequence[Sequence[str]] | pa.Array | None = None
    extra: dict[str, pa.Array] = field(default_factory=dict)


def chunk_table(cells: Sequence[str] | NDArray[Any], calls: ChunkCalls) -> pa.Table:
    """A Calls table for one chunk.  ``labels``, ``ontology_ids``, ``alternates`` and
    ``markers`` may be Python sequences or Arrow arrays of the column's type (engines that
    build them in Arrow skip a pass through Python objects)."""
    n = len(cells)
    # Always finite in [0, 1], whatever an engine computed (NaN means no confidence at all).
    confidence = np.clip(np.nan_to_num(np.asarray(calls.confidence, dtype=np.float32),
                                       nan=0.0), 0.0, 1.0)
    if len(calls.labels) != n or len(confidence) != n:
        msg = f"engine returned {len(calls.labels)} labels for {n} cells"
        raise RuntimeError(msg)  # a bug in an engine, not a user error
    alternates = calls.alternates if calls.alternates is not None else [[] for _ in range(n)]
    markers = calls.markers if calls.markers is not None else [[] for _ in range(n)]
    ontology = calls.ontology_ids if calls.ontology_ids is not None else [None] * n
    label_type = CALLS_SCHEMA.field("label").type
    columns: dict[str, pa.Array] = {
        "cell": pa.array([str(c) for c in cells], pa.string()),
        "label": (calls.labels.cast(label_type) if isinstance(calls.labels, pa.Array)
                  else pa.array(list(calls.labels), pa.string()).dictionary_encode()),
        "ontology_id": (ontology if isinstance(ontology, pa.Array)
                        else pa.array(list(ontology), pa.string())),
        "confidence": pa.array(confidence, pa.float32()),
        "alternates": (alternates if isinstance(alternates, pa.Array)
                       else _alternates_array(alternates)),
        "markers": (markers if isinstance(markers, pa.Array)
                    else _list_array([list(m) for m in markers], pa.string())),
    }
    table = pa.Table.from_arrays(list(columns.values()), schema=CALLS_SCHEMA)
    for name, array in calls.extra.items():
        table = table.append_column(name, array)
    return table


def _offsets(rows: Sequence[Sequence[Any]]) -> pa.Array:
    return pa.array(np.concatenate([[0], np.cumsum([len(r) for r in rows], dtype=np.int64)])
                    .astype(np.int32), pa.int32())


def _list_array(rows: Sequence[Sequence[Any]], item: pa.DataType) -> pa.Array:
    """list<item> from Python rows, built from one flat array and offsets."""
    flat = pa.array([x for row in rows for x in row], item)
    return pa.ListArray.from_arrays(_offsets(rows), flat)


def _alternates_array(rows: Sequence[Sequence[tuple[str, float]]]) -> pa.Array:
    """list<struct<label, score>> from rows of (label, score), without a dict per entry."""
    labels = pa.array([a for row in rows for a, _ in row], pa.string())
    scores = pa.array([float(s) for row in rows for _, s in row], pa.float32())
    struct = pa.StructArray.from_arrays([labels, scores], fields=list(ALTERNATE_TYPE))
    return pa.ListArray.from_arrays(_offsets(rows), struct)


def concat_calls(tables: Sequence[pa.Table]) -> pa.Table:
    """Join chunk tables in order, with one label dictionary for the whole result."""
    if not tables:
        return CALLS_SCHEMA.empty_table()
    metadata = tables[0].schema.metadata
    joined = pa.concat_tables(tables, promote_options="default").unify_dictionaries()
    joined = joined.combine_chunks()
    label = joined.column("label")
    if label.num_chunks > 1 or isinstance(label.chunk(0), pa.DictionaryArray):
        decoded = pc.cast(label, pa.string()).combine_chunks()
        joined = joined.set_column(1, CALLS_SCHEMA.field("label"),
                                   decoded.dictionary_encode().cast(CALLS_SCHEMA.field("label").type))
    return joined.replace_schema_metadata(metadata)


def with_metadata(table: pa.Table, **provenance: Any) -> pa.Table:
    """Attach provenance (engine, model, atlas, version, parameters) as ``scbridge.*`` keys."""
    from .._version import __version__

    meta = dict(table.schema.metadata or {})
    provenance.setdefault("package_version", __version__)
    for key, value in provenance.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        meta[f"scbridge.{key}".encode()] = text.encode()
    return table.replace_schema_metadata(meta)


def apply_min_confidence(table: pa.Table, threshold: float) -> pa.Table:
    """Cells below ``threshold`` get label ``Unknown``; the raw call is kept in ``label_raw``."""
    if not 0.0 <= threshold <= 1.0:
        from .._errors import InputError

        msg = f"min_confidence must lie in [0, 1], got {threshold}"
        raise InputError(msg, code="invalid_parameter")
    raw = pc.cast(table.column("label"), pa.string())
    low = pc.less(table.column("confidence"), pa.scalar(threshold, pa.float32()))
    thresholded = pc.if_else(low, pa.scalar(UNKNOWN), raw)
    label = thresholded.combine_chunks().dictionary_encode().cast(CALLS_SCHEMA.field("label").type)
    out = table.set_column(1, CALLS_SCHEMA.field("label"), label)
    if "unknown_reason" in out.column_names:
        index = out.column_names.index("unknown_reason")
        reason = pc.cast(out.column(index), pa.string())
        filled = pc.if_else(pc.and_(low, pc.is_null(reason)), pa.scalar("low_confidence"),
                            reason)
        out = out.set_column(index, "unknown_reason",
                             filled.combine_chunks().dictionary_encode().cast(_DICTIONARY))
    return out.append_column("label_raw", raw)


def calls_for_csv(table: pa.Table) -> pa.Table:
    """The calls as CSV can hold them (the text of ``scbridge annotate --out calls.csv`` and of
    the workspace's download): dictionaries decoded, ``alternates`` as ``label:score;...``,
    ``markers`` (and any other list column) as ``A;B``."""
    out = table
    for i, column_field in enumerate(table.schema):
        kind, name = column_field.type, column_field.name
        if pa.types.is_dictionary(kind):
            out = out.set_column(i, name, pc.cast(table.column(i), kind.value_type))
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            rows = table.column(i).to_pylist()
            text = [";".join(f"{v['label']}:{v['score']:.4g}" if isinstance(v, dict) else str(v)
                             for v in row or []) for row in rows]
            out = out.set_column(i, name, pa.array(text, pa.string()))
    return out


def calls_to_records(table: pa.Table) -> list[dict[str, Any]]:
    """The ``calls`` array of the JSON contract: one dict per cell, input order."""
    table = table.drop_columns(["cell"]) if "cell" in table.column_names else table
    label = pc.cast(table.column("label"), pa.string())
    return table.set_column(table.column_names.index("label"), "label", label).to_pylist()


def calls_from_records(records: Sequence[Mapping[str, Any]], cells: Sequence[str]) -> pa.Table:
    """A Calls table from the JSON contract's ``calls`` array (extra fields kept as columns)."""
    if len(records) != len(cells):
        from .._errors import RemoteError

        msg = f"the service returned {len(records)} calls for {len(cells)} cells"
        raise RemoteError(msg, code="remote_reply")
    core = ChunkCalls(
        labels=[r["label"] for r in records],
        confidence=np.array([r.get("confidence", np.nan) for r in records], dtype=np.float32),
        ontology_ids=[r.get("ontology_id") for r in records],
        alternates=[
            [(a["label"], a["score"]) if isinstance(a, Mapping) else (a[0], a[1])
             for a in r.get("alternates") or []]
            for r in records
        ],
        markers=[list(r.get("markers") or []) for r in records],
    )
    extra_names = [k for k in (records[0] if records else {}) if k not in _CORE]
    core.extra = {k: _extra_array(k, [r.get(k) for r in records]) for k in extra_names}
    return chunk_table(cells, core)


def _extra_array(name: str, values: list[Any]) -> pa.Array:
    """An extra column from JSON values; the engine columns get their dictionary type back."""
    if name in ENGINE_COLUMNS and all(v is None or isinstance(v, str) for v in values):
        return pa.array(values, pa.string()).dictionary_encode().cast(_DICTIONARY)
    return pa.array(values)


def metadata_dict(table: pa.Table) -> dict[str, Any]:
    """The ``scbridge.*`` provenance keys as a plain dict (JSON values decoded)."""
    out: dict[str, Any] = {}
    for key, value in (table.schema.metadata or {}).items():
        name = key.decode(errors="replace")
        if not name.startswith("scbridge."):
            continue
        text = value.decode(errors="replace")
        try:
            out[name.removeprefix("scbridge.")] = json.loads(text)
        except ValueError:
            out[name.removeprefix("scbridge.")] = text
    return out

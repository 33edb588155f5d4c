"""Curation: the user's label edits, kept as an explicit table beside the calls.

Layer: server.  The calls are never changed.  Edits are a list applied in order to one *base*
label column of the calls (``label`` unless the user starts from another depth), giving
``label_curated``::

    rename   from: [A]        to: B   every cell labelled A is now B
    merge    from: [A, B, C]  to: D   every cell labelled A, B or C is now D
    relabel  cells: [ids]     to: E   these cells (a lasso, a cluster, a selection) are now E

The server is the only place edits are applied (the page shows what it returns), so the
exported ``label_curated`` is exactly what the page showed.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from ._problems import ApiError

__all__ = ["EDIT_OPS", "apply_edits", "check_edit", "edits_table", "empty_doc"]

EDIT_OPS = ("rename", "merge", "relabel")
MAX_LABEL_LENGTH = 200
MAX_FROM = 1000


def empty_doc(base: str = "label") -> dict[str, Any]:
    return {"base": base, "revision": 0, "edits": []}


def _label(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, "invalid_edit", f"{what} must be a non-empty text, got "
                       f"{str(value)[:60]!r}.", "give the label as text")
    text = value.strip()
    if len(text) > MAX_LABEL_LENGTH or not text.isprintable():
        raise ApiError(422, "invalid_edit", f"{what} must be at most {MAX_LABEL_LENGTH} "
                       "printable characters.", "use a shorter label without control characters")
    return text


def check_edit(edit: Any, current: NDArray[Any], cell_rows: dict[str, int]) -> dict[str, Any]:
    """A validated, normalised edit, or a 422 saying what is wrong with it.

    ``current`` is every cell's curated label before this edit; ``cell_rows`` maps cell ids
    to rows.
    """
    if not isinstance(edit, dict):
        raise ApiError(422, "invalid_edit", "an edit is a JSON object with 'op' and 'to'.",
                       "send {\"op\": \"rename\", \"from\": \"A\", \"to\": \"B\"}")
    op = edit.get("op")
    if op not in EDIT_OPS:
        raise ApiError(422, "invalid_edit", f"op must be one of {', '.join(EDIT_OPS)}, got "
                       f"{str(op)[:40]!r}.", "rename or merge labels, or relabel cells")
    to = _label(edit.get("to"), "'to'")
    out: dict[str, Any] = {"op": op, "to": to, "from": [], "cells": [], "note": ""}
    note = edit.get("note", "")
    if isinstance(note, str):
        out["note"] = note.strip()[:500]
    if op in ("rename", "merge"):
        sources = edit.get("from")
        sources = [sources] if isinstance(sources, str) else sources
        if not isinstance(sources, list) or not 1 <= len(sources) <= MAX_FROM:
            raise ApiError(422, "invalid_edit", f"{op}: 'from' must name 1 to {MAX_FROM} "
                           "labels.", "give the label(s) to change in 'from'")
        names = list(dict.fromkeys(_label(s, "'from'") for s in sources))
        present = set(current[current != None].tolist())  # noqa: E711 (element-wise)
        unknown = [n for n in names if n not in present]
        if unknown:
            raise ApiError(422, "unknown_label", f"{op}: no cell is labelled "
                           f"{', '.join(map(repr, unknown[:5]))} now.",
                           "name labels as the curated column shows them")
        if op == "rename" and len(names) != 1:
            raise ApiError(422, "invalid_edit", "rename changes one label; use merge for "
                           "several.", "send op 'merge'")
        out["from"] = names
    else:
        cells = edit.get("cells")
        if not isinstance(cells, list) or not cells or len(cells) > len(cell_rows):
            raise ApiError(422, "invalid_edit", "relabel: 'cells' must list 1 to "
                           f"{len(cell_rows):,} cell ids.", "select cells first")
        ids = list(dict.fromkeys(str(c) for c in cells))
        missing = [c for c in ids if c not in cell_rows]
        if missing:
            raise ApiError(422, "unknown_cells", f"relabel: {len(missing):,} cell id(s) are not "
                           f"in this job, e.g. {missing[0][:60]!r}.",
                           "select cells of this job's data set")
        out["cells"] = ids
    out["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return out


def apply_edits(base: NDArray[Any], cell_rows: dict[str, int], edits: list[dict[str, Any]]
                ) -> tuple[NDArray[Any], list[dict[str, Any]]]:
    """``label_curated`` (object array) and, per edit, the labels it changed and how many
    cells: what the edits table reports."""
    curated = base.astype(object, copy=True)
    effects = []
    for edit in edits:
        if edit["op"] == "relabel":
            rows = np.fromiter((cell_rows[c] for c in edit["cells"]), dtype=np.int64,
                               count=len(edit["cells"]))
            before = curated[rows]
            changed = rows
        else:
            mask = np.isin(curated, np.array(edit["from"], dtype=object))
            changed = np.flatnonzero(mask)
            before = curated[changed]
        previous = sorted({str(v) for v in before.tolist() if v is not None})
        curated[changed] = edit["to"]
        effects.append({"n_cells": len(changed), "previous": previous})
    return curated, effects


def edits_table(doc: dict[str, Any], effects: list[dict[str, Any]]) -> pa.Table:
    """The edits as a table: one row per edit, in the order applied."""
    edits = doc["edits"]
    return pa.table({
        "edit": pa.array(range(1, len(edits) + 1), pa.int32()),
        "op": pa.array([e["op"] for e in edits], pa.string()),
        "base_column": pa.array([doc["base"]] * len(edits), pa.string()),
        "from_labels": pa.array([";".join(e["from"] or eff["previous"])
                                 for e, eff in zip(edits, effects, strict=True)], pa.string()),
        "to_label": pa.array([e["to"] for e in edits], pa.string()),
        "n_cells": pa.array([eff["n_cells"] for eff in effects], pa.int64()),
        "cells": pa.array([";".join(e["cells"]) for e in edits], pa.string()),
        "note": pa.array([e.get("note", "") for e in edits], pa.string()),
        "at": pa.array([e["at"] for e in edits], pa.string()),
    })

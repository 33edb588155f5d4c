"""Recognise what kind of gene identifiers a matrix uses."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from numpy.typing import NDArray

__all__ = ["GeneIdKind", "detect_gene_id_kind"]

GeneIdKind = Literal["ensembl_human", "ensembl_mouse", "ensembl_other", "symbols_human",
                     "symbols_mouse", "other"]

_ENSEMBL = re.compile(r"^ENS([A-Z]{0,4})G\d{6,}(\.\d+)?$")
_HUMAN_SYMBOL = re.compile(r"^[A-Z][A-Z0-9-]*(\.\d+)?$|^C\d+orf\d+$")
_MOUSE_SYMBOL = re.compile(r"^[A-Z][a-z0-9][a-z0-9-]*$")


def detect_gene_id_kind(genes: Sequence[str] | NDArray[Any], *, sample: int = 2000) -> GeneIdKind:
    """Classify gene ids as Ensembl (human / mouse / other species), human or mouse symbols.

    Looks at up to ``sample`` ids spread over the list; a kind wins with >= 60% of them.
    """
    n = len(genes)
    if n == 0:
        return "other"
    step = max(1, n // sample)
    ids = [str(g) for g in genes[::step]]
    counts = {"ensembl_human": 0, "ensembl_mouse": 0, "ensembl_other": 0,
              "symbols_human": 0, "symbols_mouse": 0}
    for g in ids:
        m = _ENSEMBL.match(g)
        if m:
            species = m.group(1)
            key = {"": "ensembl_human", "MUS": "ensembl_mouse"}.get(species, "ensembl_other")
            counts[key] += 1
        elif _MOUSE_SYMBOL.match(g):
            counts["symbols_mouse"] += 1
        elif _HUMAN_SYMBOL.match(g):
            counts["symbols_human"] += 1
    kind, best = max(counts.items(), key=lambda kv: kv[1])
    return kind if best >= 0.6 * len(ids) else "other"  # type: ignore[return-value]

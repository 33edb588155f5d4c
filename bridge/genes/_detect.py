"""Recognise what kind of gene identifiers a matrix uses."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from numpy.typing import NDArray

__all__ = ["GeneIdKind", "IdKind", "count_id_kinds", "detect_gene_id_kind", "id_kind"]

GeneIdKind = Literal["ensembl_human", "ensembl_mouse", "ensembl_other", "symbols_human",
                     "symbols_mouse", "mixed", "other"]
#: The kind one id can have (a list of ids may also be ``mixed`` or ``other``).
IdKind = Literal["ensembl_human", "ensembl_mouse", "ensembl_other", "symbols_human",
                 "symbols_mouse"]

_ENSEMBL = re.compile(r"^ENS([A-Z]{0,4})G\d{6,}(\.\d+)?$")
_HUMAN_SYMBOL = re.compile(r"^[A-Z][A-Z0-9-]*(\.\d+)?$|^C\d+orf\d+$")
_MOUSE_SYMBOL = re.compile(r"^[A-Z][a-z0-9][a-z0-9-]*$")
_SHARE = 0.6  # a kind wins with this share of the ids; recognised ids of several kinds: mixed


def id_kind(gene: str) -> IdKind | None:
    """The kind of one gene id, or ``None`` when it looks like no gene id scbridge knows."""
    m = _ENSEMBL.match(gene)
    if m:
        return {"": "ensembl_human", "MUS": "ensembl_mouse"}.get(  # type: ignore[return-value]
            m.group(1), "ensembl_other")
    if _MOUSE_SYMBOL.match(gene):
        return "symbols_mouse"
    if _HUMAN_SYMBOL.match(gene):
        return "symbols_human"
    return None


def count_id_kinds(genes: Sequence[str] | NDArray[Any], *, sample: int = 2000
                   ) -> tuple[dict[str, int], int]:
    """How many of up to ``sample`` ids spread over ``genes`` are of each kind, and how many
    were looked at."""
    step = max(1, len(genes) // sample)
    ids = [str(g) for g in genes[::step]]
    counts = {"ensembl_human": 0, "ensembl_mouse": 0, "ensembl_other": 0,
              "symbols_human": 0, "symbols_mouse": 0}
    for g in ids:
        kind = id_kind(g)
        if kind is not None:
            counts[kind] += 1
    return counts, len(ids)


def detect_gene_id_kind(genes: Sequence[str] | NDArray[Any], *, sample: int = 2000) -> GeneIdKind:
    """Classify gene ids as Ensembl (human / mouse / other species), human or mouse symbols,
    a mixture of those, or none of them.

    Looks at up to ``sample`` ids spread over the list; a kind wins with >= 60% of them.
    When none does but >= 60% are ids of some known kind (an object whose genes are part
    Ensembl ids, part symbols, as after merging objects made with different references),
    the ids are ``mixed``: each is mapped by its own kind.
    """
    if len(genes) == 0:
        return "other"
    counts, n = count_id_kinds(genes, sample=sample)
    kind, best = max(counts.items(), key=lambda kv: kv[1])
    if best >= _SHARE * n:
        return kind  # type: ignore[return-value]
    return "mixed" if sum(counts.values()) >= _SHARE * n else "other"

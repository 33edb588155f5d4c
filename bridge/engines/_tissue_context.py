"""Tissue context of the marker engine: which tissue's cell types are expected.

Layer: engines.

A context is a set of vocabulary tissues (``tissues.tsv``), given by the user (a name, a
synonym or an UBERON id; several separated by ``;`` or ``,``) or inferred from the data.  Types
*in* the context are the context tissues' types, the circulating immune and erythroid types,
the endothelial and stromal types found everywhere, and the ancestors of all of these; every
other type is foreign and needs much stronger evidence.  An empty context restricts nothing.

Inference (``tissue="auto"``) never looks at labels: a first pass over (a sample of) the
cells with no context calls each cell, and every confident call of a tissue-restricted type
votes for its tissues (a type of *k* tissues gives each ``1/k``).  The tissues whose support
reaches :data:`RELATIVE_SUPPORT` of the best one's, and whose types (of this tissue, alone or
with others) are at least :data:`MIN_SUPPORT` of the cells, form the context; the votes are
kept as the evidence recorded in the calls' metadata.  A sample with no tissue voted for whose
confident calls are nearly all circulating immune and erythroid types is taken for blood.
"""

from __future__ import annotations

import difflib
import gzip
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .._errors import InputError
from ._knowledge_base import data_path, load_tissues

if TYPE_CHECKING:
    from ._marker_model import MarkerModel

__all__ = ["AUTO", "EVERYWHERE", "INFERENCE_CELLS", "TissueContext", "context_mask",
           "infer_context", "resolve_tissues"]

AUTO = "auto"
#: Cells the inference samples (evenly spread runs, :func:`bridge.numerics.spread_runs`);
#: remote clients send the same cells for a chunked run's one context.
INFERENCE_CELLS = 2000
#: Values of ``tissue=`` that switch the context off (every type on equal terms).
EVERYWHERE = frozenset({"all", "none", "any"})
#: The value of ``tissue=`` for a sample of no known tissue (what an inference finding none
#: concludes): only the types found in every tissue are expected, an organ's types need the
#: evidence a foreign type needs.  Remote clients send it to every chunk of such a run.
UNKNOWN_TISSUE = "unknown"
_NO_TISSUE_REASON = ("only the types found in every tissue (immune, endothelial, stromal) "
                     "are expected; a tissue's own types need their defining markers")
#: A tissue joins an inferred context only with this share of the sampled cells' votes ...
MIN_SUPPORT = 0.02
#: ... and at least this fraction of the best-supported tissue's.
RELATIVE_SUPPORT = 0.8
#: With no tissue voted for, a sample whose confident calls are this share of circulating
#: immune and erythroid types is taken for blood.
BLOOD_SHARE = 0.9
_CIRCULATING_COMPARTMENTS = ("immune", "erythroid/megakaryocyte")
_EVERYWHERE_COMPARTMENTS = ("endothelial", "stromal")
#: Compartments whose generic types live in every tissue (see ``context_mask``).
UBIQUITOUS_COMPARTMENTS = _CIRCULATING_COMPARTMENTS + _EVERYWHERE_COMPARTMENTS
_UBERON = re.compile(r"^UBERON[:_]\d{7}$", re.IGNORECASE)


@dataclass(frozen=True)
class TissueContext:
    """The tissues whose types are expected, and how they were chosen."""

    tissues: frozenset[str]
    source: str  # "given", "inferred", "none" (switched off or nothing inferred)
    evidence: dict[str, Any] = field(default_factory=dict)
    #: Every type on equal terms (``tissue="all"``); an inferred context with no tissue
    #: expects only the types found in every tissue.
    every_type: bool = False

    def describe(self) -> dict[str, Any]:
        """The ``scbridge.tissue`` metadata: the tissues, how they were chosen, the evidence."""
        out = {"tissues": sorted(self.tissues), "source": self.source, **self.evidence}
        if not self.tissues:
            out["expects"] = ("every type" if self.every_type else
                              "the types found in every tissue")
        return out


@cache
def _vocabulary() -> tuple[dict[str, str], dict[str, str]]:
    """(word -> tissue name for names and synonyms, lower-cased; UBERON id -> tissue name)."""
    words: dict[str, str] = {}
    uberon: dict[str, str] = {}
    for row in load_tissues():
        for word in [row["name"], *filter(None, row["synonyms"].split("|"))]:
            words[word.lower()] = row["name"]
        uberon[row["uberon_id"]] = row["name"]
    path = data_path("uberon_tissues.tsv.gz")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(("#", "uberon_id")):
                continue
            term, _, _, tissues = line.rstrip("\n").split("\t")[:4]
            if tissues:
                uberon.setdefault(term, tissues.split("|")[0].split(";")[0])
    return words, uberon


def resolve_tissues(tissue: str) -> frozenset[str]:
    """The vocabulary tissues a ``tissue=`` value names (``;`` / ``,`` separate several).

    Raises
    ------
    InputError
        (code ``unknown_tissue``) a part names no tissue; the message lists close matches.
    """
    words, uberon = _vocabulary()
    found = set()
    for part in filter(None, (p.strip() for p in re.split(r"[;,]", tissue))):
        if _UBERON.match(part):
            term = "UBERON:" + part[-7:]
            if term not in uberon:
                msg = (f"tissue {part!r} is not an UBERON term inside any tissue the knowledge "
                       f"base knows; use a tissue name ({', '.join(_names()[:8])}, ...), "
                       "'auto' to infer it from the data, 'all' for no tissue context or "
                       "'unknown' for a sample of no known tissue.")
                raise InputError(msg, code="unknown_tissue")
            found.add(uberon[term])
        elif part.lower() in words:
            found.add(words[part.lower()])
        else:
            close = difflib.get_close_matches(part.lower(), list(words), n=4, cutoff=0.6)
            suggestion = (f"did you mean {', '.join(repr(words[c]) for c in close)}? "
                          if close else "")
            msg = (f"tissue {part!r} is not a tissue the knowledge base knows; {suggestion}"
                   f"known tissues: {', '.join(_names())}. Give a name, a synonym or an UBERON "
                   "id (tissue= in Python and R, --tissue on the command line), 'auto' to "
                   "infer it from the data, 'all' for no tissue context or 'unknown' for a "
                   "sample of no known tissue.")
            raise InputError(msg, code="unknown_tissue")
    if not found:
        msg = "tissue is empty; give a tissue name or UBERON id, 'auto', 'all' or 'unknown'."
        raise InputError(msg, code="unknown_tissue")
    return frozenset(found)


def _names() -> list[str]:
    return [row["name"] for row in load_tissues()]


def given_context(tissue: str | None) -> TissueContext | None:
    """The context a ``tissue=`` value fixes, or ``None`` when it asks for inference."""
    if tissue is None:
        return None
    word = tissue.strip().lower()
    if word == AUTO:
        return None
    if word in EVERYWHERE:
        return TissueContext(frozenset(), "none", {"reason": f"tissue={tissue!r}"},
                             every_type=True)
    if word == UNKNOWN_TISSUE:
        return TissueContext(frozenset(), "none",
                             {"reason": f"tissue={tissue!r}: {_NO_TISSUE_REASON}"})
    return TissueContext(resolve_tissues(tissue), "given")


def context_mask(model: MarkerModel, context: TissueContext) -> NDArray[Any]:
    """Per node: whether it is in the context.

    In: the context tissues' types, the circulating immune and erythroid types (listed for
    blood or everywhere), the endothelial and stromal types found everywhere, and every
    ancestor of a type in the context (the coarser calls of the same cells).  Lineage nodes
    without markers are always in.  With no tissue inferred, only those found everywhere
    are: nothing says any organ is there, so an organ's types need the evidence a foreign
    type needs (its defining marker); with ``tissue="all"`` every type is in.
    """
    if context.every_type:
        return np.ones(model.n_nodes, dtype=bool)
    out = ~model.is_type.copy()
    for k in np.flatnonzero(model.is_type):
        listed = model.tissues[k]
        compartment = model.compartments[k]
        circulating = compartment in _CIRCULATING_COMPARTMENTS and (
            "blood" in listed or "any" in listed)
        everywhere = compartment in _EVERYWHERE_COMPARTMENTS and "any" in listed
        if circulating or everywhere or not listed.isdisjoint(context.tissues):
            out[model.path(int(k))] = True
    return out


def infer_context(model: MarkerModel, labels: NDArray[Any], confidence: NDArray[Any],
                  n_cells: int, *, min_confidence: float = 0.5,
                  named: NDArray[Any] | None = None) -> TissueContext:
    """The context the confident calls of a first pass (node per cell, ``-1`` uncalled)
    vote for.  With ``named`` (per cell), a tissue-restricted call votes only where the cell
    shows a defining marker of its type (and counts among the confident calls only then):
    genes a type shares with other tissues' cells (the secretory genes of prostatic club-like
    cells in pancreatic ducts) must not pull the context away from the tissue at hand."""
    votes: dict[str, float] = {}
    present: Counter[str] = Counter()  # cells whose type lives in the tissue (among others)
    by_type: dict[str, Counter[str]] = {}
    circulating = called = 0
    shows = np.ones(len(labels), dtype=bool) if named is None else np.asarray(named, bool)
    for node, conf, shown in zip(labels.tolist(), confidence.tolist(), shows.tolist(),
                                 strict=True):
        if node < 0 or conf < min_confidence:
            continue
        listed = model.tissues[node]
        if model.compartments[node] in _CIRCULATING_COMPARTMENTS and (
                "blood" in listed or "any" in listed):
            called += 1
            circulating += 1
            continue
        if "any" in listed or not model.is_type[node]:
            called += 1
            continue
        if not shown:  # an unnamed tissue-restricted call says nothing about the sample
            continue
        called += 1
        for tissue in listed:
            votes[tissue] = votes.get(tissue, 0.0) + 1.0 / len(listed)
            present[tissue] += 1
            by_type.setdefault(tissue, Counter())[model.names[node]] += 1
    n = max(n_cells, 1)
    support = {t: round(v / n, 4) for t, v in sorted(votes.items(), key=lambda kv: -kv[1])}
    best = max(support.values(), default=0.0)
    # Whether a tissue is there at all counts every cell of a type found in it; which of the
    # tissues present the sample comes from is ranked by the split votes.  (Split votes alone
    # would keep out a lymph node, whose own types - germinal centre B cells, follicular
    # helper T cells - it shares with tonsil and spleen, under a third of their cells each.)
    chosen = frozenset(t for t, s in support.items()
                       if present[t] / n >= MIN_SUPPORT and s >= RELATIVE_SUPPORT * best)
    evidence: dict[str, Any] = {
        "cells_sampled": n_cells,
        "support": dict(list(support.items())[:8]),
        "types": {t: dict(by_type[t].most_common(4)) for t in sorted(chosen)},
    }
    if not chosen and called and circulating >= BLOOD_SHARE * called:
        # Nothing but circulating immune cells: the context is blood itself.
        evidence["circulating"] = round(circulating / called, 4)
        return TissueContext(frozenset({"blood"}), "inferred", evidence)
    if not chosen:
        evidence["reason"] = ("no tissue-specific cell type was called in "
                              f"{MIN_SUPPORT:.0%} of the cells: {_NO_TISSUE_REASON}")
        return TissueContext(frozenset(), "none", evidence)
    return TissueContext(chosen, "inferred", evidence)

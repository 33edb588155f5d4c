"""Mapping gene ids to current human symbols, and the genes-found check."""

from __future__ import annotations

import gzip
import logging
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._errors import GeneIdError
from ._detect import GeneIdKind, count_id_kinds, detect_gene_id_kind, id_kind

__all__ = ["GeneMapping", "check_genes_found", "detect_gene_id_kind", "human_aliases",
           "human_symbols", "load_table", "map_to_human_symbols", "mouse_orthologs"]

logger = logging.getLogger(__name__)


@cache
def load_table(name: str) -> dict[str, str]:
    """A shipped two-column gzip TSV (``from<TAB>to``) as a dict; empty if not shipped."""
    path = Path(str(resources.files("bridge.genes") / "data" / f"{name}.tsv.gz"))
    if not path.exists():
        logger.debug("gene table %s is not shipped", path)
        return {}
    out: dict[str, str] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("#"):
                continue
            key, _, value = line.rstrip("\n").partition("\t")
            if key and value:
                out.setdefault(key, value)
    return out


@cache
def human_symbols() -> frozenset[str]:
    """Current human gene symbols (empty if the table is not shipped)."""
    path = Path(str(resources.files("bridge.genes") / "data" / "symbols_human.txt.gz"))
    if not path.exists():
        return frozenset()
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return frozenset(line.strip() for line in handle if not line.startswith("#"))


@cache
def human_aliases() -> dict[str, str]:
    """Outdated / alias human symbol -> current symbol (curated entries first)."""
    return {**load_table("aliases_human"), **load_table("aliases_curated")}


@cache
def mouse_orthologs() -> dict[str, str | None]:
    """Mouse symbol -> human orthologue (``None``: a known mouse gene without a usable one),
    from ``orthologs_mouse_human.tsv.gz`` (Ensembl 105; ``tools/build_gene_tables.py``)."""
    path = Path(str(resources.files("bridge.genes") / "data" / "orthologs_mouse_human.tsv.gz"))
    if not path.exists():
        return {}
    out: dict[str, str | None] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith("#"):
                mouse, human, _ = line.rstrip("\n").split("\t", 2)
                out[mouse] = human or None
    return out


def _mouse_to_human(symbol: str) -> str | None:
    exception = load_table("mouse_human").get(symbol)
    if exception:
        return exception
    orthologs = mouse_orthologs()
    if symbol in orthologs:
        target = orthologs[symbol]
        # Many-to-one pairs: a human gene with a same-name mouse orthologue is that gene's
        # only; a mouse paralogue (Cldn13 -> CLDN4, Aldoart1 -> ALDOA) would otherwise take
        # the human name in data sets that lack the same-name gene.
        if target and target != symbol.upper() and (
                orthologs.get(target[:1] + target[1:].lower()) == target):
            return None
        return target
    # Not in the orthologue table (renamed since Ensembl 105, or none shipped): the
    # upper-cased symbol where it is a current human symbol.
    upper = symbol.upper()
    current = human_symbols()
    if not current or upper in current:
        return upper
    return human_aliases().get(upper)


@dataclass(frozen=True)
class GeneMapping:
    """The result of mapping a matrix's gene ids to human symbols.

    ``genes`` has one unique id per input column (unmapped or duplicated targets keep their
    original id, so columns are never merged or lost).
    """

    genes: NDArray[Any]
    kind: GeneIdKind
    n_mapped: int  # columns whose id changed

    @property
    def changed(self) -> bool:
        return self.n_mapped > 0


def _strip_version(gene: str) -> str:
    return gene.split(".", 1)[0] if gene.startswith("ENS") else gene


def _apply(genes: Sequence[str], lookup: Callable[[str], str | None]
           ) -> tuple[NDArray[Any], int]:
    out = np.empty(len(genes), dtype=object)
    seen: set[str] = set()
    targets = [lookup(str(g)) for g in genes]
    # Originals that already are targets keep priority over mapped duplicates.
    originals = {str(g) for g, t in zip(genes, targets, strict=True) if t is None}
    n = 0
    for j, (g, t) in enumerate(zip(genes, targets, strict=True)):
        g = str(g)
        if t is not None and t != g and t not in seen and t not in originals:
            out[j] = t
            seen.add(t)
            n += 1
        else:
            out[j] = g
            seen.add(g)
    return out, n


_UPPER_MOUSE = re.compile(r"^(GM\d{3,}|[0-9A-Z]*\d[0-9A-Z]*RIK\d?)$")


def _upper_cased_mouse(genes: Sequence[str]) -> bool:
    """Whether symbols that look human are upper-cased mouse symbols: mouse-only names
    (``GM12345``, ``1700001C19RIK``) among them."""
    step = max(1, len(genes) // 5000)
    sample = [str(g) for g in genes[::step]]
    hits = sum(1 for g in sample if _UPPER_MOUSE.match(g))
    return hits >= max(3, 0.005 * len(sample))


def _human_symbol_lookup(upper_mouse: bool) -> Callable[[str], str | None]:
    """Outdated human symbols to current ones; with ``upper_mouse``, upper-cased mouse symbols
    (HBA-A1, LYZ2: some pipelines write them so) through the orthologue table when they are
    not human symbols themselves."""
    aliases = human_aliases()
    if not upper_mouse:
        return aliases.get
    current = human_symbols()

    def lookup(g: str) -> str | None:
        alias = aliases.get(g)
        if alias or g in current:
            return alias
        return _mouse_to_human(g[:1] + g[1:].lower())
    return lookup


def _lookup_for(kind: str) -> Callable[[str], str | None]:
    """How one id of ``kind`` maps to a current human symbol (``None``: it does not)."""
    if kind == "ensembl_human":
        table = load_table("ensembl_human")
        aliases = human_aliases()

        def lookup(g: str) -> str | None:
            s = table.get(_strip_version(g))
            return aliases.get(s, s) if s else None
        return lookup
    if kind == "ensembl_mouse":
        ens = load_table("ensembl_mouse")

        def lookup(g: str) -> str | None:
            # A mouse gene without a human orthologue keeps its mouse symbol (Ly6g, Mcpt8),
            # which is how mouse-only markers are named.
            s = ens.get(_strip_version(g))
            return (_mouse_to_human(s) or s) if s else None
        return lookup
    if kind == "symbols_mouse":
        return _mouse_to_human
    return human_aliases().get


def _mixed_lookup(genes: Sequence[str]) -> Callable[[str], str | None]:
    """Each id by its own kind: Ensembl ids through their species' table, symbols as the
    symbols of the object's species (human unless mouse symbols are the majority)."""
    counts, _ = count_id_kinds(genes)
    symbols = ("symbols_mouse" if counts["symbols_mouse"] > counts["symbols_human"]
               else "symbols_human")
    lookups = {kind: _lookup_for(kind) for kind in ("ensembl_human", "ensembl_mouse", symbols)}

    def lookup(g: str) -> str | None:
        kind = id_kind(g)
        if kind in ("ensembl_human", "ensembl_mouse"):
            return lookups[kind](g)
        if kind == "ensembl_other":
            return None
        return lookups[symbols](g)
    return lookup


def map_to_human_symbols(genes: Sequence[str] | NDArray[Any]) -> GeneMapping:
    """Map Ensembl ids (human or mouse), mouse symbols and outdated human symbols to current
    human symbols where the shipped tables know them.

    A mixture (part Ensembl ids, part symbols) is mapped id by id, each by its own kind;
    upper-cased mouse symbols are recognised by their mouse-only names and mapped as mouse.
    """
    genes = np.asarray(genes, dtype=object)
    ids = [str(g) for g in genes]
    kind = detect_gene_id_kind(ids)
    if kind == "mixed":
        lookup = _mixed_lookup(ids)
    elif kind in ("ensembl_human", "ensembl_mouse", "symbols_mouse"):
        lookup = _lookup_for(kind)
    else:
        lookup = _human_symbol_lookup(_upper_cased_mouse(ids))
    mapped, n = _apply(ids, lookup)
    return GeneMapping(mapped, kind, n)


def check_genes_found(needed: Sequence[str], genes: Sequence[str] | NDArray[Any], *,
                      kind: str, min_fraction: float = 0.1, where: str = "the matrix",
                      what: str = "the engine") -> float:
    """Fraction of ``needed`` present in ``genes``; refuse below ``min_fraction``.

    The refusal prevents the classic failure where every cell gets the same label because
    the engine saw none of its genes.
    """
    needed = list(dict.fromkeys(needed))
    if not needed:
        return 1.0
    present = set(map(str, genes))
    found = sum(1 for g in needed if g in present)
    fraction = found / len(needed)
    if fraction < min_fraction:
        example = ", ".join(list(map(str, genes[:3])))
        if kind == "mixed":
            kind = "a mixture of Ensembl ids and gene symbols"
        msg = (f"only {found} of the {len(needed)} genes {what} uses ({fraction:.0%}) were "
               f"found in {where} (need {min_fraction:.0%}). Its gene ids look like {kind} "
               f"(e.g. {example}). Use human gene symbols, human or mouse Ensembl ids or mouse "
               "symbols as row/column names, check that the gene names were not replaced by "
               "numbers or shuffled, or lower the bar (min_gene_fraction= in Python, "
               "--min-gene-fraction on the command line, min_gene_fraction = in R).")
        raise GeneIdError(msg)
    if fraction < 0.3:
        warnings.warn(f"only {fraction:.0%} of the {len(needed)} genes {what} uses were found "
                      f"in {where}; calls may be less reliable.", stacklevel=3)
    return fraction

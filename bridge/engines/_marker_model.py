"""The marker engine's model: the knowledge base as a tree of hypotheses with marker weights.

Layer: engines (reads the knowledge base through :mod:`._knowledge_base`).

The tree comes from the Cell Ontology, never from hand-typed parents:

* nodes are the knowledge base's cell types plus the lineage nodes of ``compartments.tsv``
  (``label_l2``) that hold at least one type; one virtual root per compartment (``label_l1``)
  sits above them;
* a type's parent is its nearest **dominating** node inside its lineage: the closest CL
  ancestor among the nodes that lies on *every* is_a path from the type up to its lineage
  node.  A lineage node's parent is found the same way among the lineage nodes of its
  compartment, on the paths up to the compartment's rule nodes.  Dominators, not nearest
  ancestors, because CL has multiple parents: cDC1 (``CD141-positive myeloid dendritic
  cell``) is filed under both ``plasmacytoid dendritic cell`` and ``myeloid dendritic cell``,
  so its parent is the node both paths share (``dendritic cell``), never pDC.  Paths that
  leave the compartment do not count (microglia are glial cells in CL too, but they are
  immune by the compartment rules, so only their macrophage ancestry shapes the tree).

Each node's markers are its own plus those of its tree ancestors (a CD8 T cell hypothesis
carries the T cell and hematopoietic cell markers); a gene positive anywhere on the path is
never negative on it.  Priors add up along the path.

An ``atlas`` may name a folder in the knowledge base's layout (``cell_types.tsv`` and
``cell_markers.tsv``; the ontology, rules and tissues default to the shipped ones) or a single
marker file in ``cell_markers.tsv``'s format (types not in the shipped ``cell_types.tsv`` are
found everywhere, with no prior).  The ambient-prone genes (``ambient_genes.tsv``) are a
property of the genes, so they apply to any atlas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from .._errors import FormatError
from ._knowledge_base import (
    SPECIES,
    CellOntology,
    LevelRule,
    data_path,
    derive_levels,
    load_ambient_genes,
    load_cell_markers,
    load_cell_ontology,
    load_cell_types,
    load_level_rules,
    load_tissues,
)

__all__ = ["MarkerModel", "load_marker_model"]

Species = Literal["human", "mouse"]


@dataclass(frozen=True)
class MarkerModel:
    """The knowledge base as the engine walks it (one species).

    Node ``k`` is a cell type of the knowledge base (``is_type[k]``) or a lineage node without
    markers of its own; compartment roots are not nodes (``parents[k] == -1`` marks a child of
    its compartment's root).
    """

    ids: list[str]  # CL id per node
    names: list[str]  # CL label per node
    is_type: NDArray[Any]  # bool: a knowledge base type (has markers, can be a call)
    parents: NDArray[Any]  # int: parent node, -1 under the compartment root
    compartments: list[str]  # label_l1 per node
    compartment_index: NDArray[Any]  # int: position in ``compartment_names``
    compartment_names: list[str]
    lineages: NDArray[Any]  # int: the node's lineage node (label_l2)
    is_lineage: NDArray[Any]  # bool: the node is a lineage node
    depth: NDArray[Any]  # int: 1 for children of a compartment root
    tissues: list[frozenset[str]]  # vocabulary tissues, or {"any"}
    prior: NDArray[Any]  # summed along the path
    genes: list[str]  # every gene named by a marker row of this species
    ambient: NDArray[Any]  # bool per gene: an ambient-prone transcript (ambient_genes.tsv)
    positive: NDArray[Any]  # nodes x genes: own and inherited positive weights
    negative: NDArray[Any]  # nodes x genes: own and inherited negative weights
    own_positive: NDArray[Any]  # nodes x genes: the node's own positive weights
    own_negative: NDArray[Any]  # nodes x genes: the node's own negative weights
    order: NDArray[Any]  # nodes, parents before children
    species: Species
    source: str
    ontology_version: str
    children: list[NDArray[Any]] = field(repr=False)

    @property
    def n_nodes(self) -> int:
        return len(self.ids)

    @property
    def n_types(self) -> int:
        return int(self.is_type.sum())

    def path(self, node: int) -> list[int]:
        """``node`` and its tree ancestors, root side first."""
        out = []
        while node >= 0:
            out.append(node)
            node = int(self.parents[node])
        return out[::-1]

    def index(self, name_or_id: str) -> int:
        """The node of a CL id or label (``KeyError`` if absent)."""
        for k, (i, n) in enumerate(zip(self.ids, self.names, strict=True)):
            if name_or_id in (i, n):
                return k
        raise KeyError(name_or_id)


# -- the tree ---------------------------------------------------------------------------------
class _Ancestry:
    """CL ancestry of the model's nodes, restricted to a compartment or a lineage."""

    def __init__(self, ontology: CellOntology) -> None:
        self.ontology = ontology
        self._ancestors: dict[str, frozenset[str]] = {}

    def ancestors(self, term: str) -> frozenset[str]:
        if term not in self._ancestors:
            self._ancestors[term] = frozenset(self.ontology.ancestors(term))
        return self._ancestors[term]

    def nearest(self, term: str, candidates: set[str], compatible: Callable[[str], bool],
                members: Iterable[str] = (),
                affinity: Callable[[str], int] = lambda _: 0) -> str | None:
        """The closest compatible candidate ancestor of ``term``: one that is not itself an
        ancestor of another compatible candidate ancestor.  Where CL gives several (multiple
        is_a parents), the one whose programme the term's own defining markers repeat most
        (``affinity``: an enteroendocrine cell's CHGA is the endocrine cell's, not the
        epithelial cell's) wins, then the one with the most candidate descendants, then the
        lowest id.

        A lineage node without markers of its own stands for its ``members``: what all of
        them descend from counts as its ancestry too (``mononuclear phagocyte`` is not a
        ``myeloid leukocyte`` in CL, but monocytes and macrophages are)."""
        above = set(self.ancestors(term))
        shared = [self.ancestors(m) for m in members]
        if shared:
            above |= frozenset.intersection(*shared) - {term}
        above = {a for a in above & candidates if compatible(a)}
        if not above:
            return None
        closest = [a for a in above if not any(a in self.ancestors(b) for b in above - {a})]
        weight = {a: sum(1 for c in candidates if a in self.ancestors(c)) for a in closest}
        return min(closest, key=lambda a: (-affinity(a), -weight[a], a))


def _tree(ontology: CellOntology, types: dict[str, tuple[str, str]],
          conflicts: Callable[[str, str], bool],
          shared: Callable[[str, str], int] = lambda _c, _a: 0,
          ) -> tuple[list[str], dict[str, str | None]]:
    """Nodes (types, then lineage nodes) and each node's parent (``None``: the compartment
    root).  ``types`` maps each type's CL id to its (compartment, lineage id);
    ``conflicts(child, ancestor)`` says the child's negative markers name the ancestor's
    positive ones, so the ancestor cannot be its parent; ``shared(child, ancestor)`` counts
    the defining markers they share (which of two equally close CL parents to keep)."""
    lineage_nodes = {lin: comp for comp, lin in types.values()}
    nodes = list(types) + sorted(set(lineage_nodes) - set(types))
    level = {**{lin: (comp, lin) for lin, comp in lineage_nodes.items()}, **types}
    ancestry = _Ancestry(ontology)
    parents: dict[str, str | None] = {}
    for node in nodes:
        comp, lin = level[node]
        if node != lin:
            candidates = {t for t, (_, x) in level.items() if x == lin}
            represented: list[str] = []
        else:
            candidates = {x for x, c in lineage_nodes.items() if c == comp}
            represented = [] if node in types else [t for t, (_, x) in types.items()
                                                    if x == node]
        found = ancestry.nearest(node, candidates - {node},
                                 lambda a, node=node: not conflicts(node, a),  # type: ignore[misc]
                                 represented,
                                 lambda a, node=node: shared(node, a))  # type: ignore[misc]
        parents[node] = found if found is not None else (None if node == lin else lin)
    return nodes, parents


# -- loading ----------------------------------------------------------------------------------
def _folder_files(atlas: str | None) -> tuple[Path, Path | None, str]:
    """(cell_markers file, cell_types file or None, source name) for an ``atlas``."""
    if atlas is None:
        return data_path("cell_markers.tsv"), data_path("cell_types.tsv"), "default"
    path = Path(atlas)
    if path.is_dir():
        markers, types = path / "cell_markers.tsv", path / "cell_types.tsv"
        if not markers.exists():
            msg = (f"{path}: a knowledge base folder needs cell_markers.tsv (and usually "
                   "cell_types.tsv); see docs/knowledge_base.md for their columns.")
            raise FormatError(msg)
        return markers, types if types.exists() else None, str(path)
    if not path.exists():
        msg = (f"atlas {atlas!r} is neither a knowledge base folder nor a marker file; give a "
               "folder holding cell_markers.tsv / cell_types.tsv, a file in cell_markers.tsv's "
               "format, or leave atlas unset for the shipped knowledge base.")
        raise FormatError(msg)
    return path, None, str(path)


def load_marker_model(atlas: str | None = None, species: Species = "human") -> MarkerModel:
    """The engine's model of the knowledge base (shipped, or ``atlas``) for ``species``."""
    # One cache entry per (atlas, species), however the call spells them.
    return _build_marker_model(atlas, species)


@cache
def _build_marker_model(atlas: str | None, species: Species) -> MarkerModel:
    markers_path, types_path, source = _folder_files(atlas)
    ontology = load_cell_ontology()
    rules = load_level_rules()
    vocabulary = {t["name"] for t in load_tissues()}
    markers = load_cell_markers(str(markers_path))
    type_rows = {t["ontology_id"]: t for t in load_cell_types(
        str(types_path) if types_path else None)}
    wanted = ("both", species)
    used = [m for m in markers if m["species"] in wanted]
    _check_marker_rows(used, markers_path, ontology)
    type_ids = list(dict.fromkeys(m["ontology_id"] for m in used if m["direction"] == "+"))
    type_ids = [t for t in type_ids if type_rows.get(t, {}).get("species", "both") in wanted]
    levels: dict[str, tuple[str, str]] = {}
    for term in type_ids:
        derived = derive_levels(ontology, term, rules)
        if derived is None:
            msg = (f"{markers_path}: no compartment / lineage can be derived from the Cell "
                   f"Ontology for {term} ({ontology.name(term)}); see docs/knowledge_base.md.")
            raise FormatError(msg)
        levels[term] = derived
    own = _own_markers(used)

    def conflicts(child: str, ancestor: str) -> bool:
        empty: tuple[set[str], set[str]] = (set(), set())
        return not own.get(child, empty)[1].isdisjoint(own.get(ancestor, empty)[0])

    def shared(child: str, ancestor: str) -> int:
        empty: tuple[set[str], set[str]] = (set(), set())
        return len(own.get(child, empty)[0] & own.get(ancestor, empty)[0])

    nodes, parent_of = _tree(ontology, levels, conflicts, shared)
    index = {n: k for k, n in enumerate(nodes)}
    parents = np.array([index[p] if (p := parent_of[n]) is not None else -1 for n in nodes])
    genes = sorted({m["gene"] for m in used})
    ambient = {r["gene"] for r in load_ambient_genes()}  # the genes' biology, any atlas
    column = {g: j for j, g in enumerate(genes)}
    own_pos = np.zeros((len(nodes), len(genes)))
    own_neg = np.zeros((len(nodes), len(genes)))
    for m in used:
        if m["ontology_id"] not in index:
            continue
        target = own_pos if m["direction"] == "+" else own_neg
        k, j = index[m["ontology_id"]], column[m["gene"]]
        target[k, j] = max(target[k, j], float(m["weight"]))
    own_prior = np.array([float(type_rows.get(n, {}).get("prior", 0) or 0) for n in nodes])
    model_paths = [_path(parents, k) for k in range(len(nodes))]
    positive, negative = _inherit(parents, own_pos, own_neg)
    prior = np.array([own_prior[p].sum() for p in model_paths])
    compartment = [levels[n][0] if n in levels else _lineage_compartment(rules, n)
                   for n in nodes]
    compartment_names = sorted(set(compartment))
    lineage_of = {n: levels[n][1] if n in levels else n for n in nodes}
    tissues = []
    for n in nodes:
        listed = type_rows.get(n, {}).get("tissues", "any") or "any"
        names = frozenset(t for t in listed.split(";") if t)
        unknown = names - vocabulary - {"any"}
        if unknown:
            msg = (f"{types_path}: {n} lists tissues {sorted(unknown)} that are not in the "
                   "tissue vocabulary (tissues.tsv).")
            raise FormatError(msg)
        tissues.append(names if n in levels else frozenset({"any"}))
    depth = np.array([len(p) for p in model_paths])
    children = [np.flatnonzero(parents == k) for k in range(len(nodes))]
    return MarkerModel(
        ids=nodes, names=[ontology.name(n) for n in nodes],
        is_type=np.array([n in levels for n in nodes]), parents=parents,
        compartments=compartment,
        compartment_index=np.array([compartment_names.index(c) for c in compartment]),
        compartment_names=compartment_names,
        lineages=np.array([index[lineage_of[n]] for n in nodes]),
        is_lineage=np.array([lineage_of[n] == n for n in nodes]), depth=depth,
        tissues=tissues, prior=prior, genes=genes, positive=positive, negative=negative,
        ambient=np.array([g in ambient for g in genes], dtype=bool),
        own_positive=own_pos, own_negative=own_neg, order=np.argsort(depth, kind="stable"),
        species=species, source=source, ontology_version=ontology.version, children=children,
    )


def _own_markers(rows: list[dict[str, str]]) -> dict[str, tuple[set[str], set[str]]]:
    """Per type: its own defining positive genes (weight 1) and its negative genes."""
    out: dict[str, tuple[set[str], set[str]]] = {}
    for m in rows:
        defining, negative = out.setdefault(m["ontology_id"], (set(), set()))
        if m["direction"] == "-":
            negative.add(m["gene"])
        elif float(m["weight"]) >= 1.0:
            defining.add(m["gene"])
    return out


def _inherit(parents: NDArray[Any], own_pos: NDArray[Any], own_neg: NDArray[Any]
             ) -> tuple[NDArray[Any], NDArray[Any]]:
    """Markers down the tree: a node has its ancestors' markers and its own, its own
    overriding (a gene it lists as negative is not inherited as positive, and vice versa)."""
    positive, negative = own_pos.copy(), own_neg.copy()
    done = np.zeros(len(parents), dtype=bool)

    def visit(node: int) -> None:
        if done[node]:
            return
        parent = int(parents[node])
        if parent >= 0:
            visit(parent)
            inherited_pos = np.where(own_neg[node] > 0, 0.0, positive[parent])
            inherited_neg = np.where(own_pos[node] > 0, 0.0, negative[parent])
            positive[node] = np.maximum(own_pos[node], inherited_pos)
            negative[node] = np.maximum(own_neg[node], inherited_neg)
        done[node] = True

    for node in range(len(parents)):
        visit(node)
    return positive, negative


def _path(parents: NDArray[Any], node: int) -> list[int]:
    out = []
    while node >= 0:
        out.append(node)
        node = int(parents[node])
    return out


def _lineage_compartment(rules: tuple[LevelRule, ...], lineage: str) -> str:
    return next(r.compartment for r in rules if r.level == "lineage"
                and r.ontology_id == lineage)


def _check_marker_rows(rows: list[dict[str, str]], where: Path,
                       ontology: CellOntology) -> None:
    """Refuse marker rows the engine cannot use, naming the line."""
    for m in rows:
        at = f"{where}:{m['_line']}"
        if m["ontology_id"] not in ontology:
            msg = (f"{at}: {m['ontology_id']!r} is not a live Cell Ontology id; every cell "
                   "type must be a CL term (CL:0000000) so the engine can place it.")
            raise FormatError(msg)
        if m["direction"] not in ("+", "-"):
            msg = f"{at}: direction must be '+' or '-', got {m['direction']!r}."
            raise FormatError(msg)
        try:
            weight = float(m["weight"])
        except ValueError:
            weight = float("nan")
        if not 0.0 < weight <= 1.0:
            msg = f"{at}: weight {m['weight']!r} must be a number in (0, 1]."
            raise FormatError(msg)
        if m["species"] not in SPECIES:
            msg = f"{at}: species {m['species']!r} is not one of {', '.join(SPECIES)}."
            raise FormatError(msg)
        if not m["gene"].strip():
            msg = f"{at}: the gene is empty."
            raise FormatError(msg)

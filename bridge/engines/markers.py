"""The embedded marker engine (model ``"markers"``): curated markers, no reference, no network.

How a cell is called
--------------------
1. Counts are normalised per cell to ``log1p(counts / total * 10,000)`` (log-normalised input
   is used as given).  Only the marker panel's columns are ever touched after the per-cell
   totals, so memory stays a small dense block of cells x panel genes.
2. Each marker's expression becomes soft evidence ``s = min(x / saturation, 1)``: one UMI of
   a marker in a shallow cell counts about as much as many UMIs, because drop-out, not
   expression level, is what separates cell types in sparse data.
3. Each cell type's *own* score is the weighted evidence of its positive markers minus its
   negative markers, divided by ``(sum of positive weights) ** 0.5`` (types with many markers
   are not favoured over types with a few specific ones), plus a small prior.  Genes absent
   from the matrix are left out of the type entirely, so a filtered gene panel does not count
   against a type.  Priors are small and biological: CD4 T cells outnumber CD8 T cells in
   blood and CD4 transcripts drop out far more often than CD8A / CD8B, so a T cell with no
   CD8 transcript leans CD4; rare types (MAIT, gamma-delta T, plasma cells, DCs) lean away.
4. Types form a tree (compartment -> lineage -> type -> subtype).  A node's *subtree* score
   adds the best child's subtree score, so a T cell's evidence also votes for "hematopoietic
   cell" even where PTPRC dropped out; a compartment or lineage without subtypes (NK cell,
   progenitor, platelet, fibroblast, ...) counts its own evidence again for each level it
   lacks, so it is not outvoted by a branched sibling merely for having fewer levels.  Calls
   go top-down: at each level a softmax over the siblings' subtree scores gives the
   probability of each branch; the cell's label is the
   deepest node on the winning path whose cumulative probability stays at or above
   ``min_level_confidence``, so an uncertain subtype keeps its type and an uncertain type keeps
   its lineage.  ``confidence`` is that cumulative probability.
5. ``markers`` are the genes that contributed most to the winning path in this cell;
   ``alternates`` are the losing siblings along the path with their cumulative probability.

Every step is per cell: calls never depend on which other cells share a chunk.
"""

from __future__ import annotations

import csv
import itertools
import logging
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from .._contract import UNKNOWN, ChunkCalls
from .._errors import FormatError, InputError
from ..numerics import log_normalize
from . import register_engine
from ._base import ChunkedEngine, GeneLayoutCache

if TYPE_CHECKING:
    from ..matrix import CellMatrix

__all__ = ["MarkerDatabase", "MarkerEngine", "load_marker_database"]

logger = logging.getLogger(__name__)

PRIOR = "__prior__"
# Matrix columns of the panel genes present, their names, positive and negative weights.
_PanelLayout = tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]
_COLUMNS = ("cell_type", "ontology_id", "parent", "level", "tissue", "gene", "direction",
            "weight", "source")


@dataclass(frozen=True)
class MarkerDatabase:
    """Cell types (a tree) and their weighted positive / negative marker genes."""

    types: list[str]  # node names; index = node id
    ontology_ids: list[str | None]
    parents: NDArray[Any]  # node -> parent node id (-1 for a compartment)
    levels: NDArray[Any]
    tissues: list[str]
    sources: list[str]
    genes: list[str]  # panel genes (all genes named anywhere in the database)
    positive: NDArray[Any]  # types x panel genes, weights >= 0
    negative: NDArray[Any]  # types x panel genes, weights >= 0
    prior: NDArray[Any]  # types
    path: str

    @property
    def n_types(self) -> int:
        return len(self.types)

    def children(self, node: int) -> NDArray[Any]:
        return np.flatnonzero(self.parents == node)

    def lineage_of(self, label: str) -> list[str]:
        """``label`` and its ancestors, root first (``[]`` for labels not in the database):
        the way to group calls into coarse classes (e.g. a plasma cell is in ``B cell``)."""
        if label not in self.types:
            return []
        return [self.types[k] for k in self.lineage(self.types.index(label))]

    def lineage(self, node: int) -> list[int]:
        """``node`` and its ancestors, root first."""
        out = []
        while node >= 0:
            out.append(node)
            node = int(self.parents[node])
        return out[::-1]


def _default_path() -> Path:
    return Path(str(resources.files("bridge.engines") / "data" / "markers.tsv"))


@cache
def load_marker_database(path: str | None = None) -> MarkerDatabase:
    """Read a marker database TSV (the shipped one by default) and check it."""
    where = path or str(_default_path())
    with open(where, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows or any(c not in rows[0] for c in _COLUMNS):
        msg = f"{where}: a marker database needs the tab-separated columns {', '.join(_COLUMNS)}."
        raise FormatError(msg)
    types: list[str] = []
    info: dict[str, dict[str, Any]] = {}
    for line, row in enumerate(rows, start=2):
        name = row["cell_type"].strip()
        if row["direction"] not in ("+", "-"):
            msg = f"{where}:{line}: direction must be '+' or '-', got {row['direction']!r}."
            raise FormatError(msg)
        try:
            weight = float(row["weight"])
        except ValueError:
            msg = f"{where}:{line}: weight {row['weight']!r} is not a number."
            raise FormatError(msg) from None
        if name not in info:
            types.append(name)
            info[name] = {"ontology": row["ontology_id"] or None, "parent": row["parent"].strip(),
                          "level": int(row["level"]), "tissue": row["tissue"],
                          "source": row["source"], "markers": []}
        info[name]["markers"].append((row["gene"].strip(), row["direction"], weight))
    index = {name: i for i, name in enumerate(types)}
    for name, d in info.items():
        if d["parent"] and d["parent"] not in index:
            msg = f"{where}: {name!r} names parent {d['parent']!r}, which has no markers."
            raise FormatError(msg)
    genes = sorted({g for d in info.values() for g, _, _ in d["markers"] if g != PRIOR})
    gene_index = {g: j for j, g in enumerate(genes)}
    positive = np.zeros((len(types), len(genes)))
    negative = np.zeros((len(types), len(genes)))
    prior = np.zeros(len(types))
    for name, d in info.items():
        i = index[name]
        for gene, direction, weight in d["markers"]:
            sign = 1.0 if direction == "+" else -1.0
            if gene == PRIOR:
                prior[i] += sign * weight
            elif direction == "+":
                positive[i, gene_index[gene]] = weight
            else:
                negative[i, gene_index[gene]] = weight
    return MarkerDatabase(
        types=types,
        ontology_ids=[info[n]["ontology"] for n in types],
        parents=np.array([index.get(info[n]["parent"], -1) for n in types]),
        levels=np.array([info[n]["level"] for n in types]),
        tissues=[info[n]["tissue"] for n in types],
        sources=[info[n]["source"] for n in types],
        genes=genes, positive=positive, negative=negative, prior=prior, path=where,
    )


class MarkerEngine(ChunkedEngine):
    """Hierarchical scoring against the curated marker database.

    Parameters
    ----------
    atlas
        Path of a marker database TSV (columns as the shipped ``markers.tsv``); ``None`` or
        ``"default"`` uses the shipped one.
    tissue
        Only consider cell types annotated for this tissue (or ``any``); e.g. ``"blood"``.
    saturation
        Normalised expression at which a marker counts as fully present.
    temperature
        Softmax temperature over sibling scores (smaller is more decisive).
    min_level_confidence
        Descend to a finer level only while the cumulative probability stays at or above this.
    child_weight
        How much a child's subtree score adds to its parent's, by the child's level.
    extend_leaves_to_level
        Leaves at this level or above (compartments and lineages without subtypes: NK,
        progenitors, platelets, fibroblasts, ...) count their own evidence again for each
        level they lack, so they compete on equal terms with branched siblings; ``0`` turns
        this off.
    n_markers, n_alternates
        Genes and runner-up labels reported per cell.
    min_gene_fraction
        Refuse inputs holding fewer of the panel's genes than this fraction.
    """

    name = "markers"

    def __init__(self, atlas: str | None = None, *, tissue: str | None = None,
                 saturation: float = 2.0, temperature: float = 0.1,
                 min_level_confidence: float = 0.5,
                 child_weight: float | tuple[float, ...] = (1.0, 1.0, 0.5, 0.25),
                 extend_leaves_to_level: int = 2,
                 n_markers: int = 5, n_alternates: int = 3,
                 min_gene_fraction: float = 0.1) -> None:
        if saturation <= 0 or temperature <= 0:
            msg = "saturation and temperature must be positive."
            raise InputError(msg, code="invalid_parameter")
        for name, value in (("min_level_confidence", min_level_confidence),
                            ("min_gene_fraction", min_gene_fraction)):
            if not 0.0 <= value <= 1.0:
                msg = f"{name} must lie in [0, 1], got {value}."
                raise InputError(msg, code="invalid_parameter")
        path = None if atlas in (None, "", "default", "markers") else str(atlas)
        self.db = load_marker_database(path)
        self.atlas: str | None = "default" if path is None else path
        self.tissue = tissue
        self.saturation = saturation
        self.temperature = temperature
        self.min_level_confidence = min_level_confidence
        self.child_weight = child_weight
        self.extend_leaves_to_level = extend_leaves_to_level
        self.n_markers = n_markers
        self.n_alternates = n_alternates
        self.min_gene_fraction = min_gene_fraction
        self.allowed = self._allowed_types(tissue)
        self._layouts: GeneLayoutCache[_PanelLayout] = GeneLayoutCache()

    # -- the public engine surface --------------------------------------------------------
    @property
    def genes(self) -> list[str]:
        """The positive markers of the types in play (what the genes-found check counts)."""
        used = (self.db.positive[self.allowed] > 0).any(axis=0)
        return [g for g, keep in zip(self.db.genes, used, strict=True) if keep]

    def parameters(self) -> dict[str, Any]:
        return {
            "tissue": self.tissue, "saturation": self.saturation,
            "temperature": self.temperature, "min_level_confidence": self.min_level_confidence,
            "child_weight": self.child_weight,
            "extend_leaves_to_level": self.extend_leaves_to_level, "n_markers": self.n_markers,
            "n_alternates": self.n_alternates, "min_gene_fraction": self.min_gene_fraction,
            "n_types": self.db.n_types, "n_marker_genes": len(self.db.genes),
        }

    def annotate_chunk(self, matrix: CellMatrix) -> ChunkCalls:
        columns, panel, pos, neg = self._layouts.get(matrix.genes, self._panel_layout)
        block = log_normalize(matrix.X, matrix.value_kind, columns=columns, dtype=np.float64)
        # Sparse x dense products sum each row on its own, in a fixed order: a cell's scores
        # are bit-identical whatever chunk it is in (dense BLAS blocking would not be).
        evidence = block.copy()
        evidence.data = np.minimum(evidence.data / self.saturation, 1.0)
        evidence.eliminate_zeros()
        available = self._available(pos)
        # Normalise by the database's weights, not only the genes present: a type whose
        # markers were mostly filtered out must not be inflated by the one that remains.
        norm = np.sqrt(np.maximum(self.db.positive.sum(axis=1), 1e-9))
        own = np.asarray(evidence @ (pos - neg).T) / norm[None, :] + self.db.prior[None, :]
        subtree = self._subtree_scores(own, available)
        path_nodes, path_probs, alt_nodes, alt_scores = self._descend(subtree, available)
        labels, ontology, confidence, final, depth = self._choose_level(path_nodes, path_probs)
        alternates = self._alternates(alt_nodes, alt_scores, depth)
        # A cell with no marker evidence at all is not called.
        empty = np.diff(evidence.indptr) == 0
        markers = self._cell_markers(evidence, pos, final, panel)
        for i in np.flatnonzero(empty):
            labels[i], ontology[i], confidence[i] = UNKNOWN, None, 0.0
            markers[i], alternates[i] = [], []
        return ChunkCalls(labels=labels, confidence=confidence, ontology_ids=ontology,
                          alternates=alternates, markers=markers)

    # -- steps ----------------------------------------------------------------------------
    def _allowed_types(self, tissue: str | None) -> NDArray[Any]:
        if tissue is None:
            return np.ones(self.db.n_types, dtype=bool)
        wanted = tissue.lower()
        ok = np.array([wanted in t.lower().split(";") or "any" in t.lower().split(";")
                       for t in self.db.tissues])
        # Keep every ancestor of an allowed type, so the tree stays connected.
        for node in np.flatnonzero(ok):
            ok[self.db.lineage(int(node))] = True
        return ok

    def _panel_layout(self, genes: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any],
                                                         NDArray[Any]]:
        """Matrix columns of the panel genes present, and the weights restricted to them."""
        position = {str(g): j for j, g in enumerate(genes)}
        present = [k for k, g in enumerate(self.db.genes) if g in position]
        columns = np.array([position[self.db.genes[k]] for k in present], dtype=np.int64)
        panel = np.array([self.db.genes[k] for k in present], dtype=object)
        return columns, panel, self.db.positive[:, present], self.db.negative[:, present]

    def _available(self, pos: NDArray[Any]) -> NDArray[Any]:
        """Types with a positive marker in the panel, or with such a descendant (allowed only)."""
        available = (pos.sum(axis=1) > 0) & self.allowed
        for level in sorted(set(self.db.levels.tolist()), reverse=True):
            for node in np.flatnonzero(self.db.levels == level):
                parent = self.db.parents[node]
                if available[node] and parent >= 0 and self.allowed[parent]:
                    available[parent] = True
        return available

    def _child_weight(self, level: int) -> float:
        weights = self.child_weight
        if isinstance(weights, int | float):
            return float(weights)
        return float(weights[min(level, len(weights)) - 1])

    def _subtree_scores(self, own: NDArray[Any], available: NDArray[Any]) -> NDArray[Any]:
        """Own score plus the best available child's subtree score, deepest level first."""
        subtree = own.copy()
        for level in sorted(set(self.db.levels.tolist()), reverse=True):
            for node in np.flatnonzero((self.db.levels == level) & available):
                kids = self.db.children(int(node))
                kids = kids[available[kids]]
                if len(kids):
                    weight = self._child_weight(int(self.db.levels[kids[0]]))
                    if weight:
                        subtree[:, node] += weight * subtree[:, kids].max(axis=1)
                elif level <= self.extend_leaves_to_level:
                    # A compartment or lineage without subtypes (NK, progenitors, platelets,
                    # fibroblasts, ...) would set one level of evidence against branched
                    # siblings that sum theirs over several levels (T + CD8 T + effector CD8
                    # T): it counts its own evidence again for each level it lacks.
                    subtree[:, node] += self._leaf_extension(level) * own[:, node]
        return subtree

    def _leaf_extension(self, level: int) -> float:
        """The child weights a leaf at ``level`` misses out on, summed down to the deepest level."""
        total, factor = 0.0, 1.0
        for child_level in range(level + 1, int(self.db.levels.max()) + 1):
            factor *= self._child_weight(child_level)
            total += factor
        return total

    def _descend(self, subtree: NDArray[Any], available: NDArray[Any]
                 ) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]:
        """Top-down winning path per cell.

        Returns node ids and cumulative probabilities per depth (cells x depth), and the
        losing siblings at each depth with their cumulative probabilities
        (cells x depth x n_alternates; -1 / -inf where there is none).
        """
        n = subtree.shape[0]
        depth = int(self.db.levels.max())
        k_alt = max(self.n_alternates, 0)
        nodes = np.full((n, depth), -1, dtype=np.int64)
        probs = np.zeros((n, depth), dtype=np.float64)
        alt_nodes = np.full((n, depth, k_alt), -1, dtype=np.int64)
        alt_scores = np.full((n, depth, k_alt), -np.inf)
        current = np.full(n, -1, dtype=np.int64)
        cumulative = np.ones(n)
        for d in range(depth):
            next_current, next_cumulative = current.copy(), cumulative.copy()
            for parent in np.unique(current):
                if d > 0 and parent < 0:
                    continue  # no compartment had any marker in the panel
                kids = np.flatnonzero((self.db.parents == parent) & available)
                if not len(kids):
                    continue  # a leaf: this cell's path ends here
                rows = np.flatnonzero(current == parent)
                logits = subtree[np.ix_(rows, kids)] / self.temperature
                logits -= logits.max(axis=1, keepdims=True)
                p = np.exp(logits)
                p /= p.sum(axis=1, keepdims=True)
                best = p.argmax(axis=1)
                cum = cumulative[rows] * p[np.arange(len(rows)), best]
                nodes[rows, d] = kids[best]
                probs[rows, d] = cum
                k = min(k_alt, len(kids) - 1)
                if k > 0:
                    # Runners-up: the best losing siblings, with their cumulative probability.
                    order = np.argsort(-p, axis=1, kind="stable")[:, 1 : k + 1]
                    alt_nodes[rows, d, :k] = kids[order]
                    alt_scores[rows, d, :k] = (np.take_along_axis(p, order, axis=1)
                                               * cumulative[rows, None])
                next_current[rows] = kids[best]
                next_cumulative[rows] = cum
            current, cumulative = next_current, next_cumulative
        return nodes, probs, alt_nodes, alt_scores

    def _alternates(self, alt_nodes: NDArray[Any], alt_scores: NDArray[Any],
                    final_depth: NDArray[Any]) -> list[list[tuple[str, float]]]:
        """Runners-up to each cell's label: losers at its level and above, best first."""
        n, depth, k_alt = alt_nodes.shape
        if not k_alt or not n:
            return [[] for _ in range(n)]
        deeper = np.arange(depth)[None, :] > final_depth[:, None]
        scores = np.where(deeper[:, :, None], -np.inf, alt_scores).reshape(n, -1)
        candidates = alt_nodes.reshape(n, -1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k_alt]
        top_nodes = np.take_along_axis(candidates, top, axis=1)
        top_scores = np.take_along_axis(scores, top, axis=1)
        names = self.db.types
        return [[(names[j], s) for j, s in zip(row_nodes, row_scores, strict=True) if j >= 0]
                for row_nodes, row_scores in zip(top_nodes.tolist(), top_scores.tolist(),
                                                 strict=True)]

    def _choose_level(self, nodes: NDArray[Any], probs: NDArray[Any]
                      ) -> tuple[list[str], list[str | None], NDArray[Any], NDArray[Any],
                                 NDArray[Any]]:
        """The deepest node on each path whose cumulative probability clears the bar."""
        n = nodes.shape[0]
        ok = (nodes >= 0) & (probs >= self.min_level_confidence)
        ok[:, 0] |= nodes[:, 0] >= 0  # a cell always gets at least its compartment
        # deepest depth index with ok, contiguous from the top
        contiguous = np.cumprod(ok, axis=1).astype(bool)
        depth = contiguous.sum(axis=1) - 1
        depth = np.maximum(depth, 0)
        final = nodes[np.arange(n), depth]
        confidence = probs[np.arange(n), depth].astype(np.float32)
        labels = [self.db.types[k] if k >= 0 else UNKNOWN for k in final]
        ontology = [self.db.ontology_ids[k] if k >= 0 else None for k in final]
        return labels, ontology, confidence, final, depth

    def _cell_markers(self, evidence: sp.csr_matrix, pos: NDArray[Any], final: NDArray[Any],
                      panel: NDArray[Any]) -> list[list[str]]:
        """Per cell, the positive markers of its path that carried the most evidence."""
        if not len(panel) or self.n_markers <= 0:
            return [[] for _ in range(len(final))]
        path_weight = np.zeros((self.db.n_types + 1, len(panel)))
        for node in range(self.db.n_types):
            path_weight[node] = pos[self.db.lineage(node)].max(axis=0)
        rows = np.repeat(np.arange(evidence.shape[0]), np.diff(evidence.indptr))
        # final == -1 picks the all-zero last row
        contribution = evidence.data * path_weight[final[rows], evidence.indices]
        keep = contribution > 0
        rows, cols, contribution = rows[keep], evidence.indices[keep], contribution[keep]
        order = np.lexsort((cols, -contribution, rows))  # ties broken by gene, stably
        rows, cols = rows[order], cols[order]
        starts = np.searchsorted(rows, np.arange(len(final) + 1))
        genes = panel[cols].tolist()
        k = self.n_markers
        return [genes[a:min(b, a + k)] for a, b in itertools.pairwise(starts.tolist())]


register_engine("markers", MarkerEngine,
                "embedded curated marker engine: blood, bone marrow and major tissue "
                "compartments; no reference, no network")

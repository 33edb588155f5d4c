"""The embedded marker engine (model ``"markers"``): the knowledge base, no reference, no network.

How a cell is called
--------------------
1. **Evidence.** Values are normalised per cell to ``x = log1p(value / total * 10,000)``
   (counts and TPM / CPM / FPKM alike; log-normalised input is used as given), touching only
   the marker panel's columns after the per-cell totals.  A marker's evidence is
   ``e = min(x / saturation, 1)``: in sparse data detection, not level, separates types.  A
   marker counts as *detected* from ``detection`` counts per 10,000 (``x >= log1p(0.5)``).
2. **Hypotheses.** Every cell type of the knowledge base (:mod:`._marker_model`: a tree
   from the Cell Ontology) is a hypothesis carrying its own markers and its ancestors'.  Its
   score is the weighted evidence of its positive markers minus its negative markers,
   divided by ``sqrt(sum of positive weights)`` (so a type with many markers is not favoured
   over one with a few specific ones), plus its prior.  A hypothesis is *eligible* only with at
   least ``min_markers`` detected positive markers: one read of one gene never makes a call.
3. **Tissue context** (:mod:`._tissue_context`).  Types foreign to the context need
   ``foreign_evidence`` times the markers and have their score divided by it.
4. **Descent.** From the root, each node's options are its children (scored by the best
   eligible hypothesis in their subtree) and, for a type, stopping at the node itself
   (scored by its own hypothesis: a cell with the generic programme and no subtype's stays
   generic).  A softmax with ``temperature`` over the options gives conditional
   probabilities; the cell follows the best option at each step.  Its label is the deepest
   node on that path whose cumulative probability is at least ``min_level_confidence``, and
   its ``confidence`` that cumulative probability passed through :data:`CALIBRATION`
   (``docs/annotation.md`` says how the map was fitted).
5. A cell with no eligible hypothesis is ``Unknown`` with an ``unknown_reason``.  ``markers``
   are the genes that carried the call, ``alternates`` the losing options along the path
   with their cumulative probabilities; ``label_l1`` / ``label_l2`` are the call's
   compartment and lineage.

Every step is per cell: calls never depend on which other cells share a chunk.  What is
decided once per matrix (species, tissue context when inferred) is worked out in
:meth:`MarkerEngine.plan` before the chunks.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from numpy.typing import NDArray

from .._contract import UNKNOWN, ChunkCalls
from .._errors import GeneIdError, InputError
from ..numerics import log_normalize
from . import register_engine
from ._base import ChunkedEngine, ChunkPlan, GeneLayoutCache
from ._marker_model import MarkerModel, Species, load_marker_model
from ._tissue_context import (
    TissueContext,
    context_mask,
    given_context,
    infer_context,
)

if TYPE_CHECKING:
    from ..matrix import CellMatrix

__all__ = ["CALIBRATION", "FEW_MARKERS_CAP", "UNKNOWN_REASONS", "MarkerEngine",
           "detect_species"]

logger = logging.getLogger(__name__)

#: ``unknown_reason`` values: why a cell got no call.
UNKNOWN_REASONS = {
    "no_marker_genes": "no marker gene of any cell type was detected in the cell",
    "too_few_markers": "no cell type had enough of its positive markers detected "
                       "(min_markers)",
    "foreign_types_only": "only cell types foreign to the tissue context had enough markers, "
                          "short of the stronger evidence they need",
}
#: Piecewise-linear map from the descent's cumulative probability to the reported confidence
#: (x, y knots; see docs/annotation.md for how it was fitted).
CALIBRATION: tuple[tuple[float, ...], tuple[float, ...]] = ((0.0, 1.0), (0.0, 1.0))
#: Confidence of a call carried by fewer than ``min_markers`` detected markers (possible only
#: where the matrix lacks the type's other markers): below even odds.
FEW_MARKERS_CAP = 0.45
_Kind = tuple[str, float]
_MIN_EXTRA_WEIGHT = 0.25  # a hypothesis adds at least one weak marker's weight  # value kind as read, log base
_BLOCK = 8192  # cells scored at once inside a chunk (bounds the nodes x cells arrays)
_MOUSE_GENE = re.compile(r"[a-z]")
_HUMAN_ORF = re.compile(r"^C\d+orf\d+")
_UPPER_MOUSE = re.compile(r"^(GM\d{3,}|\d{7}[A-Z]\d{2}RIK|[A-Z]\d{6}RIK|\d+RIK)$")


def detect_species(genes: NDArray[Any] | list[str]) -> Species:
    """``mouse`` when the gene ids (after mapping to human symbols) keep mouse-only names
    (``Gm12345``, ``1700001C19Rik``, upper-cased ``GM12345`` / ``...RIK``), else ``human``."""
    n = len(genes)
    if not n:
        return "human"
    step = max(1, n // 5000)
    sample = [str(g) for g in genes[::step]]
    mouse = sum(1 for g in sample if (_MOUSE_GENE.search(g) and not _HUMAN_ORF.match(g))
                or _UPPER_MOUSE.match(g))
    return "mouse" if mouse >= max(3, 0.005 * len(sample)) else "human"


@dataclass(frozen=True)
class _Tree:
    """The model's nodes plus a virtual root per compartment and one global root."""

    n_rows: int
    parent: NDArray[Any]  # row -> parent row (-1 for the global root)
    children: list[NDArray[Any]]  # internal rows' children
    internal: NDArray[Any]  # rows with children, deepest first
    internal_pos: NDArray[Any]  # row -> position in ``internal`` (-1 for leaves)
    callable_: NDArray[Any]  # rows that can be a label (model nodes)
    root: int
    max_steps: int
    hypotheses: dict[int, NDArray[Any]]  # internal row -> types below it, grouped by child
    starts: dict[int, NDArray[Any]]  # internal row -> where each child's group starts


def _build_tree(model: MarkerModel) -> _Tree:
    n_model = model.n_nodes
    n_comp = len(model.compartment_names)
    root = n_model + n_comp
    parent = np.empty(root + 1, dtype=np.int64)
    parent[:n_model] = np.where(model.parents >= 0, model.parents,
                                n_model + model.compartment_index)
    parent[n_model:root] = root
    parent[root] = -1
    depth = np.zeros(root + 1, dtype=np.int64)
    depth[:n_model] = model.depth + 1
    depth[n_model:root] = 1
    children = [np.flatnonzero(parent == r) for r in range(root + 1)]
    internal = np.array([r for r in np.argsort(-depth, kind="stable") if len(children[r])])
    internal_pos = np.full(root + 1, -1, dtype=np.int64)
    internal_pos[internal] = np.arange(len(internal))
    callable_ = np.zeros(root + 1, dtype=bool)
    callable_[:n_model] = True
    below: list[list[int]] = [[] for _ in range(root + 1)]  # types in each subtree
    for node in model.order[::-1]:  # children before parents
        row = int(node)
        if model.is_type[row]:
            below[row].append(row)
        below[int(parent[row])].extend(below[row])
    for row in range(n_model, root):
        below[root].extend(below[row])
    hypotheses, starts = {}, {}
    for row in internal.tolist():
        groups = [below[int(kid)] for kid in children[row]]
        hypotheses[row] = np.array([h for g in groups for h in g], dtype=np.int64)
        starts[row] = np.cumsum([0, *[len(g) for g in groups[:-1]]]).astype(np.int64)
    return _Tree(root + 1, parent, children, internal, internal_pos, callable_, root,
                 int(depth.max()) + 1, hypotheses, starts)


@dataclass(frozen=True)
class _Layout:
    """The model restricted to the genes of one matrix."""

    columns: NDArray[Any]  # matrix columns of the panel genes present
    panel: NDArray[Any]  # their names
    signed: sp.csr_matrix  # nodes x panel: (positive - negative) / sqrt(sum positive)
    detects: sp.csr_matrix  # nodes x panel: 1 for a positive marker (own or inherited)
    own_detects: sp.csr_matrix  # nodes x panel: the node's own positive weights
    own_defining: sp.csr_matrix  # nodes x panel: 1 for the node's own weight-1 markers
    chains: list[list[int]]  # nodes: the programme nodes on the path, root side first
    available: NDArray[Any]  # nodes: types with an own positive marker in the panel
    positive: NDArray[Any]  # (nodes + 1) x panel: positive weights (last row zero)
    n_present: NDArray[Any]  # nodes: positive markers present in the panel
    weight: NDArray[Any]  # nodes: positive marker weight present in the panel


class MarkerEngine(ChunkedEngine):
    """Hierarchical scoring against the cell-type knowledge base (``docs/knowledge_base.md``).

    Parameters
    ----------
    atlas
        ``None`` / ``"default"``: the shipped knowledge base; or a folder holding
        ``cell_markers.tsv`` (and ``cell_types.tsv``) in the knowledge base's format, or one
        marker file in ``cell_markers.tsv``'s format.
    tissue
        ``"auto"`` (default): infer the tissue context from the data; a tissue name, synonym
        or UBERON id (several separated by ``;``), e.g. ``"pancreas"`` or
        ``"UBERON:0001264"``; ``"all"``: no context, every type on equal terms.
    species
        ``"auto"`` (from the gene ids), ``"human"`` or ``"mouse"``: which species-specific
        marker rows and types apply.
    min_markers
        Positive markers (the type's own and its ancestors') that must be detected in a cell
        before the type can be called.
    foreign_evidence
        Types foreign to the tissue context need this many times ``min_markers`` and have
        their score divided by it.
    level_evidence
        Detected weight of its own positive markers that every type on a call's path must
        show (a subtype's markers refine its parent's programme, never replace it).
    saturation
        Normalised expression (log1p of counts per 10,000) at which a marker counts fully.
    detection
        Counts per 10,000 from which a marker counts as detected.
    temperature
        Softmax temperature over the options at each node (smaller is more decisive).
    min_level_confidence
        Descend to a finer level only while the cumulative probability stays at or above this.
    n_markers, n_alternates
        Genes and runner-up labels reported per cell.
    min_gene_fraction
        Refuse inputs holding fewer of the candidate panel's genes (the positive markers of
        the types in the tissue context) than this fraction.
    """

    name = "markers"

    def __init__(self, atlas: str | None = None, *, tissue: str | None = "auto",
                 species: Literal["auto", "human", "mouse"] = "auto", min_markers: int = 2,
                 foreign_evidence: float = 2.0, level_evidence: float = 0.5,
                 saturation: float = 2.0,
                 detection: float = 0.5, temperature: float = 0.1,
                 min_level_confidence: float = 0.5, n_markers: int = 5,
                 n_alternates: int = 3, min_gene_fraction: float = 0.02) -> None:
        if saturation <= 0 or temperature <= 0 or detection < 0:
            msg = "saturation and temperature must be positive, detection not negative."
            raise InputError(msg, code="invalid_parameter")
        for name, value in (("min_level_confidence", min_level_confidence),
                            ("min_gene_fraction", min_gene_fraction)):
            if not 0.0 <= value <= 1.0:
                msg = f"{name} must lie in [0, 1], got {value}."
                raise InputError(msg, code="invalid_parameter")
        if isinstance(min_markers, bool) or not isinstance(min_markers, int) or min_markers < 1:
            msg = f"min_markers must be a whole number >= 1, got {min_markers!r}."
            raise InputError(msg, code="invalid_parameter")
        if foreign_evidence < 1:
            msg = f"foreign_evidence must be >= 1, got {foreign_evidence}."
            raise InputError(msg, code="invalid_parameter")
        if species not in ("auto", "human", "mouse"):
            msg = f"species must be 'auto', 'human' or 'mouse', got {species!r}."
            raise InputError(msg, code="invalid_parameter")
        path = None if atlas in (None, "", "default", "markers") else str(atlas)
        self._atlas_path = path
        self.atlas: str | None = "default" if path is None else path
        load_marker_model(path, "human")  # refuse a malformed atlas now, not at the first call
        self.tissue = "auto" if tissue is None else tissue
        self._given = given_context(tissue)
        self.species = species
        self.min_markers = min_markers
        self.foreign_evidence = float(foreign_evidence)
        self.level_evidence = float(level_evidence)
        self.saturation = saturation
        self.detection = detection
        self.temperature = temperature
        self.min_level_confidence = min_level_confidence
        self.n_markers = n_markers
        self.n_alternates = n_alternates
        self.min_gene_fraction = min_gene_fraction
        self._layouts: dict[str, GeneLayoutCache[_Layout]] = {
            "human": GeneLayoutCache(), "mouse": GeneLayoutCache()}

    # -- the public engine surface --------------------------------------------------------
    def model(self, species: Species = "human") -> MarkerModel:
        """The knowledge base as this engine walks it."""
        return load_marker_model(self._atlas_path, species)

    @property
    def genes(self) -> list[str]:
        """The candidate panel: positive markers of the types in the given tissue context
        (every type's when the context is inferred), both species."""
        out: set[str] = set()
        for species in ("human", "mouse"):
            model = self.model(species)  # type: ignore[arg-type]
            keep = model.is_type.copy()
            if self._given is not None:
                keep &= context_mask(model, self._given)
            used = (model.own_positive[keep] > 0).any(axis=0)
            out.update(g for g, u in zip(model.genes, used, strict=True) if u)
        return sorted(out)

    def parameters(self) -> dict[str, Any]:
        model = self.model("human")
        return {
            "tissue": self.tissue, "species": self.species, "min_markers": self.min_markers,
            "foreign_evidence": self.foreign_evidence, "level_evidence": self.level_evidence,
            "saturation": self.saturation,
            "detection": self.detection, "temperature": self.temperature,
            "min_level_confidence": self.min_level_confidence, "n_markers": self.n_markers,
            "n_alternates": self.n_alternates, "min_gene_fraction": self.min_gene_fraction,
            "n_types": model.n_types, "n_marker_genes": len(model.genes),
            "cell_ontology": model.ontology_version,
        }

    def plan(self, matrix: CellMatrix) -> ChunkPlan:
        """Species, tissue context (given, or inferred from the cells) and the genes-found
        check against the candidate panel, once per matrix."""
        species = detect_species(matrix.genes) if self.species == "auto" else self.species
        model = self.model(species)
        layout = self._layouts[species].get(matrix.genes, partial(self._panel_layout, model))
        tree = _tree_of(model)
        kind, base = _value_handling(matrix)
        context = self._given or self._infer(matrix, (kind, base), model, tree, layout)
        in_context = context_mask(model, context)
        fraction = self._check_panel(matrix, model, layout, in_context, context)
        run = partial(self._annotate_block_wise, kind=(kind, base), model=model, tree=tree,
                      layout=layout, in_context=in_context)
        if context.source == "inferred":
            logger.info("%s: tissue context inferred: %s", matrix.source or "matrix",
                        ", ".join(sorted(context.tissues)))
        return ChunkPlan(run, fraction, {"tissue": context.describe(), "species": species})

    def annotate_chunk(self, matrix: CellMatrix) -> ChunkCalls:
        """Calls for one chunk on its own (its tissue context inferred from it alone)."""
        return self.plan(matrix).annotate_chunk(matrix)

    # -- once per matrix ------------------------------------------------------------------
    def _panel_layout(self, model: MarkerModel, genes: NDArray[Any]) -> _Layout:
        position = {str(g): j for j, g in enumerate(genes)}
        present = [k for k, g in enumerate(model.genes) if g in position]
        columns = np.array([position[model.genes[k]] for k in present], dtype=np.int64)
        panel = np.array([model.genes[k] for k in present], dtype=object)
        positive = model.positive[:, present]
        negative = model.negative[:, present]
        # Scores are normalised (in _options) by the weights of the markers present: a gene
        # the matrix lacks is no evidence either way (a panel without KRT19 must not count
        # against ductal cells); min_markers keeps a type whose markers were mostly filtered
        # out from riding on the one that remains.
        signed = sp.csr_matrix(positive - negative)
        detects = sp.csr_matrix((positive > 0).astype(np.float64))
        own = model.own_positive[:, present]
        padded = np.vstack([positive, np.zeros((1, len(present)))])
        has_own = (own > 0).any(axis=1)
        return _Layout(columns, panel, signed, detects, sp.csr_matrix(own),
                       sp.csr_matrix((own >= 1.0).astype(np.float64)), _programme_chains(model),
                       model.is_type & has_own, padded, (positive > 0).sum(axis=1),
                       positive.sum(axis=1))

    def _infer(self, matrix: CellMatrix, kind: _Kind, model: MarkerModel, tree: _Tree,
               layout: _Layout) -> TissueContext:
        """The tissue context voted for by a first pass over up to 4,000 cells (evenly
        spaced, so the same matrix always gives the same context)."""
        n = matrix.n_cells
        rows = np.unique(np.linspace(0, n - 1, min(n, 4000)).astype(np.int64)) if n else []
        sample = matrix.X[rows] if n else matrix.X
        everything = np.ones(model.n_nodes, dtype=bool)
        nodes, confidence, _, _ = self._descend_block(
            sample, kind, model, tree, layout, everything)
        return infer_context(model, nodes, confidence, len(rows))

    def _check_panel(self, matrix: CellMatrix, model: MarkerModel, layout: _Layout,
                     in_context: NDArray[Any], context: TissueContext) -> float:
        """The fraction of the candidate panel found; refused below ``min_gene_fraction`` or
        when no candidate type has ``min_markers`` of its markers in the matrix."""
        from ..genes import check_genes_found, detect_gene_id_kind

        candidates = model.is_type & in_context
        needed = [g for g, u in zip(model.genes, (model.own_positive[candidates] > 0).any(0),
                                    strict=True) if u]
        where = matrix.source or "the matrix"
        what = ("the 'markers' model" if not context.tissues else
                f"the 'markers' model for {', '.join(sorted(context.tissues))}")
        kind = detect_gene_id_kind(list(matrix.genes))
        fraction = check_genes_found(needed, matrix.genes, kind=kind,
                                     min_fraction=self.min_gene_fraction, where=where,
                                     what=what)
        if not (layout.n_present[candidates] >= self.min_markers).any():
            msg = (f"{where}: no cell type of {what} has {self.min_markers} of its marker "
                   f"genes in the matrix ({len(layout.panel)} marker genes found), so no cell "
                   "can be called. Check the gene ids (symbols or Ensembl ids), or lower "
                   "min_markers.")
            raise GeneIdError(msg)
        return fraction

    # -- per chunk --------------------------------------------------------------------------
    def _annotate_block_wise(self, matrix: CellMatrix, *, kind: _Kind, model: MarkerModel,
                             tree: _Tree, layout: _Layout, in_context: NDArray[Any]
                             ) -> ChunkCalls:
        parts = [self._annotate_block(matrix.X[a:a + _BLOCK], kind, model, tree, layout,
                                      in_context)
                 for a in range(0, max(matrix.n_cells, 1), _BLOCK)]
        if len(parts) == 1:
            return parts[0]
        return ChunkCalls(
            labels=[x for p in parts for x in p.labels],
            confidence=np.concatenate([p.confidence for p in parts]),
            ontology_ids=[x for p in parts for x in p.ontology_ids or []],
            alternates=[x for p in parts for x in p.alternates or []],
            markers=[x for p in parts for x in p.markers or []],
            extra={k: pa.concat_arrays([p.extra[k] for p in parts]) for k in parts[0].extra},
        )

    def _evidence(self, X: sp.csr_matrix, value_kind: _Kind, layout: _Layout
                  ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """Evidence ``min(x / saturation, 1)`` and detection (0 / 1), cells x panel."""
        kind, base = value_kind
        if kind == _RESCALED_LOG:
            block = _rescale_log(X, layout.columns, base)
        else:
            block = log_normalize(X, kind, columns=layout.columns, dtype=np.float64)
        detected = block.copy()
        detected.data = (detected.data >= np.log1p(self.detection)).astype(np.float64)
        detected.eliminate_zeros()
        block.data = np.minimum(block.data / self.saturation, 1.0)
        block.eliminate_zeros()
        return block, detected

    def _hypotheses(self, evidence: sp.csr_matrix, detected: sp.csr_matrix,
                    model: MarkerModel, layout: _Layout, in_context: NDArray[Any]
                    ) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]:
        """Per node and cell: the weighted evidence of its markers (own and inherited,
        positive minus negative, not yet normalised) and whether its hypothesis is eligible;
        per cell, whether some hypothesis was eligible before the context's stronger bar;
        per node and cell, the detected positive markers."""
        transposed = detected.T.tocsr()
        raw = (layout.signed @ evidence.T.tocsr()).toarray().astype(np.float32)
        counts = (layout.detects @ transposed).toarray()
        levels = self._levels_shown(model, layout, transposed)
        # A type none of whose own markers is in the matrix has no evidence of its own.
        types = layout.available[:, None]
        foreign = ~in_context[:, None]
        # Where the matrix lacks a type's other markers (a 1,000-gene panel), fewer detected
        # markers may carry a call, at a confidence below even odds (FEW_MARKERS_CAP).
        at_hand = np.minimum(self.min_markers, layout.n_present)[:, None]
        needed = np.where(foreign, self.min_markers * self.foreign_evidence, at_hand)
        eligible = types & levels & (counts >= needed)
        plain = types & levels & (counts >= at_hand)
        foreign_only = plain.any(axis=0) & ~eligible.any(axis=0)
        return raw, eligible, foreign_only, counts

    def _levels_shown(self, model: MarkerModel, layout: _Layout,
                      detected_t: sp.csr_matrix) -> NDArray[Any]:
        """Per node and cell: the programmes of the node's lineages are shown.

        The *programme nodes* on a node's path are its lineage nodes that are types
        (``hematopoietic cell``, ``myeloid leukocyte``, ``T cell``, ``epithelial cell``) and,
        below a lineage node without markers of its own (``mononuclear phagocyte``), the
        first type on the path (``monocyte``).  Each must show its programme: detected own
        positive weight of at least ``level_evidence``, or a detected *defining* marker
        (weight 1) of a programme node below it (a monocyte's LYZ speaks for the
        hematopoietic programme above it where PTPRC dropped out; a transit amplifying
        cell's cycling genes do not speak for the epithelial one).  A subtype's markers
        refine its lineage's call, they never make it alone: memory T cell genes such as
        ANXA1 or LMNA say nothing without a T cell programme.  A programme node whose own
        markers are all missing from the matrix cannot show it.
        """
        own = layout.own_detects @ detected_t
        shown = own.toarray() >= self.level_evidence
        defining = (layout.own_defining @ detected_t).toarray() > 0
        out = np.ones_like(shown)
        for node, chain in enumerate(layout.chains):
            implied = np.zeros(shown.shape[1], dtype=bool)
            for programme in chain[::-1]:  # deepest first
                out[node] &= shown[programme] | implied
                implied |= defining[programme]
        return out

    def _descend_block(self, X: sp.csr_matrix, value_kind: _Kind, model: MarkerModel,
                       tree: _Tree, layout: _Layout, in_context: NDArray[Any]
                       ) -> tuple[NDArray[Any], NDArray[Any], dict[str, Any], sp.csr_matrix]:
        """The label node and confidence per cell (``-1`` / 0 for no call), plus what the
        report columns need."""
        evidence, detected = self._evidence(X, value_kind, layout)
        raw, eligible, foreign_only, counts = self._hypotheses(evidence, detected, model,
                                                               layout, in_context)
        n = raw.shape[1]
        conditional = np.zeros((tree.n_rows, n), dtype=np.float32)
        choice = np.empty((len(tree.internal), n), dtype=np.int64)
        for pos, row in enumerate(tree.internal):
            logits = self._options(row, raw, eligible, model, tree, layout, in_context)
            kids = tree.children[row]
            with np.errstate(invalid="ignore", over="ignore"):
                top = logits.max(axis=0)
                weights = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
                total = weights.sum(axis=0)
                probs = np.divide(weights, total, out=np.zeros_like(weights),
                                  where=total > 0)
            conditional[kids] = probs[:-1]
            pick = np.argmax(logits, axis=0)
            choice[pos] = np.where(pick == len(kids), row,
                                   kids[np.minimum(pick, len(kids) - 1)])
        steps = tree.max_steps
        path = np.full((steps, n), -1, dtype=np.int64)
        cumulative = np.zeros((steps, n), dtype=np.float64)
        current = np.full(n, tree.root, dtype=np.int64)
        cum = np.ones(n)
        active = eligible.any(axis=0)
        columns = np.arange(n)
        for step in range(steps):
            pos = tree.internal_pos[current]
            following = np.where(pos >= 0, choice[np.maximum(pos, 0), columns], current)
            moving = active & (following != current)
            cum = np.where(moving, cum * conditional[following, columns], cum)
            current = np.where(moving, following, current)
            path[step] = np.where(moving, current, -1)
            cumulative[step] = np.where(moving, cum, 0.0)
            active = moving
        label, confidence, depth = self._choose(path, cumulative, tree)
        info = {"path": path, "cumulative": cumulative, "depth": depth, "conditional":
                conditional, "choice": choice, "foreign_only": foreign_only,
                "supported": counts[np.maximum(label, 0), np.arange(n)]}
        return label, confidence, info, evidence

    def _options(self, row: int, raw: NDArray[Any], eligible: NDArray[Any],
                 model: MarkerModel, tree: _Tree, layout: _Layout,
                 in_context: NDArray[Any]) -> NDArray[Any]:
        """Logits of the options at node ``row``: each child (its subtree's best eligible
        hypothesis), then stopping at the node itself.

        A hypothesis is scored by the evidence it adds *beyond the deciding node*: its
        markers' weighted evidence less the node's, over the square root of its marker
        weight beyond the node's, plus its prior beyond the node's.  The evidence every option
        shares (a T cell's CD3 genes when CD4 and CD8 T cells compete) thus neither dilutes
        nor decides the choice.  Stopping scores 0: it wins when no subtype adds evidence.
        """
        hyps, starts = tree.hypotheses[row], tree.starts[row]
        if row < model.n_nodes:
            base_raw, base_weight, base_prior = raw[row], layout.weight[row], model.prior[row]
        else:
            base_raw, base_weight, base_prior = np.float32(0.0), 0.0, 0.0
        extra_weight = np.maximum(layout.weight[hyps] - base_weight, _MIN_EXTRA_WEIGHT)
        scores = ((raw[hyps] - base_raw) / np.sqrt(extra_weight)[:, None]
                  + (model.prior[hyps] - base_prior)[:, None])
        foreign = ~in_context[hyps]
        scores[foreign] = np.where(scores[foreign] > 0,
                                   scores[foreign] / self.foreign_evidence, scores[foreign])
        scores = np.where(eligible[hyps], scores, -np.inf)
        options = np.maximum.reduceat(scores, starts, axis=0)
        stop = np.full((1, raw.shape[1]), -np.inf, dtype=np.float32)
        if row < model.n_nodes and model.is_type[row]:
            stop[0] = np.where(eligible[row], 0.0, -np.inf)
        return np.vstack([options, stop]) / np.float32(self.temperature)

    def _choose(self, path: NDArray[Any], cumulative: NDArray[Any], tree: _Tree
                ) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
        """The deepest callable node on each path with cumulative probability at or above
        ``min_level_confidence``; else the shallowest callable node, at its own probability."""
        on_path = path >= 0
        callable_ = on_path & tree.callable_[np.maximum(path, 0)]
        good = callable_ & (cumulative >= self.min_level_confidence)
        steps, n = path.shape
        index = np.arange(steps)[:, None]
        deepest_good = np.where(good, index, -1).max(axis=0)
        first_callable = np.where(callable_, index, steps).min(axis=0)
        depth = np.where(deepest_good >= 0, deepest_good, first_callable)
        found = depth < steps
        depth = np.where(found, depth, 0)
        columns = np.arange(n)
        label = np.where(found, path[depth, columns], -1)
        confidence = np.where(found, cumulative[depth, columns], 0.0)
        return label, confidence, np.where(found, depth, -1)

    def _annotate_block(self, X: sp.csr_matrix, value_kind: _Kind, model: MarkerModel,
                        tree: _Tree, layout: _Layout, in_context: NDArray[Any]) -> ChunkCalls:
        label, confidence, info, evidence = self._descend_block(X, value_kind, model, tree,
                                                                layout, in_context)
        confidence = _calibrate(confidence)
        # Fewer than min_markers detected genes never make a call of even odds.
        confidence = np.where(info["supported"] < self.min_markers,
                              np.minimum(confidence, FEW_MARKERS_CAP), confidence)
        called = label >= 0
        names = [model.names[k] if k >= 0 else UNKNOWN for k in label.tolist()]
        ids = [model.ids[k] if k >= 0 else None for k in label.tolist()]
        l1 = [model.compartments[k] if k >= 0 else None for k in label.tolist()]
        l2 = [model.names[model.lineages[k]] if k >= 0 else None for k in label.tolist()]
        has_markers = np.diff(evidence.indptr) > 0
        reason = np.where(called, None, np.where(
            ~has_markers, "no_marker_genes",
            np.where(info["foreign_only"], "foreign_types_only", "too_few_markers")))
        markers = self._cell_markers(evidence, layout, label)
        alternates = self._alternates(info, tree, model, label)
        extra = {
            "label_l1": _dictionary(l1), "label_l2": _dictionary(l2),
            "unknown_reason": _dictionary(reason.tolist()),
        }
        return ChunkCalls(labels=names, confidence=np.where(called, confidence, 0.0),
                          ontology_ids=ids, alternates=alternates, markers=markers,
                          extra=extra)

    def _alternates(self, info: dict[str, Any], tree: _Tree, model: MarkerModel,
                    label: NDArray[Any]) -> list[list[tuple[str, float]]]:
        """Losing options at the label's level and above, with cumulative probabilities."""
        path, cumulative, depth = info["path"], info["cumulative"], info["depth"]
        conditional, choice = info["conditional"], info["choice"]
        n = len(label)
        k_alt = max(self.n_alternates, 0)
        if not k_alt or not n:
            return [[] for _ in range(n)]
        out: list[list[tuple[str, float]]] = [[] for _ in range(n)]
        steps = path.shape[0]
        columns = np.arange(n)
        for step in range(steps):
            chosen = path[step]
            rows = np.flatnonzero((chosen >= 0) & (step <= depth))
            if not len(rows):
                continue
            parent_cum = np.where(step > 0, cumulative[max(step - 1, 0)], 1.0)
            parents = tree.parent[chosen[rows]]
            for parent in np.unique(parents):
                sel = rows[parents == parent]
                kids = tree.children[parent]
                scores = conditional[np.ix_(kids, sel)] * (
                    parent_cum[sel] if step > 0 else np.ones(len(sel)))
                scores[kids[:, None] == chosen[sel][None, :]] = 0.0
                order = np.argsort(-scores, axis=0, kind="stable")[:k_alt]
                for j, cell in enumerate(sel.tolist()):
                    for o in order[:, j]:
                        s = float(scores[o, j])
                        if s <= 0:
                            break
                        node = int(kids[o])
                        while not tree.callable_[node]:  # a compartment: its best branch
                            node = int(choice[tree.internal_pos[node], cell])
                        out[cell].append((model.names[node], s))
        del columns
        calibrated = []
        for row in out:
            row.sort(key=lambda a: -a[1])
            calibrated.append([(name, float(_calibrate(np.array([s]))[0]))
                               for name, s in row[:k_alt]])
        return calibrated

    def _cell_markers(self, evidence: sp.csr_matrix, layout: _Layout,
                      label: NDArray[Any]) -> list[list[str]]:
        """Per cell, the positive markers of its label (own or inherited) that carried the
        most evidence."""
        n = len(label)
        if not len(layout.panel) or self.n_markers <= 0:
            return [[] for _ in range(n)]
        rows = np.repeat(np.arange(n), np.diff(evidence.indptr))
        # label -1 picks the all-zero last row
        contribution = evidence.data * layout.positive[label[rows], evidence.indices]
        keep = contribution > 0
        rows, cols, contribution = rows[keep], evidence.indices[keep], contribution[keep]
        order = np.lexsort((cols, -contribution, rows))  # ties broken by gene, stably
        rows, cols = rows[order], cols[order]
        starts = np.searchsorted(rows, np.arange(n + 1))
        genes = layout.panel[cols].tolist()
        k = self.n_markers
        return [genes[a:min(b, a + k)] for a, b in zip(starts[:-1].tolist(),
                                                       starts[1:].tolist(), strict=True)]


_RESCALED_LOG = "lognorm, rescaled"
#: log1p of counts per 10,000 sums to at most this much per cell once un-logged.
_LOG1P_CP10K_SUM = 1.5e4
_LOG_BASES = (2.0, float(np.e), 10.0)


def _value_handling(matrix: CellMatrix) -> tuple[str, float]:
    """How the engine reads the values: as their value kind says, except log values of a
    larger scale than log1p(counts per 10,000) (log2 FPKM, log1p CPM), which are un-logged,
    rescaled per cell to 10,000 and logged again (:func:`_rescale_log`).  The log base is the
    one under which the cells' un-logged totals agree best (depth-normalised values sum to
    the same total in every cell).  Decided once per matrix from up to 1,000 evenly spaced
    cells, so every chunk is read the same way."""
    if matrix.value_kind != "lognorm" or not matrix.n_cells or not matrix.nnz:
        return matrix.value_kind, float(np.e)
    rows = np.unique(np.linspace(0, matrix.n_cells - 1, min(matrix.n_cells, 1000))
                     .astype(np.int64))
    sample = matrix.X[rows]
    starts = sample.indptr[:-1][np.diff(sample.indptr) > 0]
    data = sample.data.astype(np.float64)
    if not len(starts) or float(np.median(np.add.reduceat(np.expm1(data), starts))
                                 ) <= _LOG1P_CP10K_SUM:
        return matrix.value_kind, float(np.e)
    with np.errstate(over="ignore"):
        spread = [float(np.std(np.log(np.add.reduceat(np.power(b, data) - 1.0, starts))))
                  for b in _LOG_BASES]
    return _RESCALED_LOG, _LOG_BASES[int(np.nanargmin(spread))]


def _rescale_log(X: sp.csr_matrix, columns: NDArray[Any], base: float) -> sp.csr_matrix:
    """``log1p`` of each cell's un-logged values (``base ** x - 1``) rescaled to 10,000,
    panel columns only."""
    from ..numerics import cell_totals, panel_block

    unlogged = sp.csr_matrix((np.power(base, X.data.astype(np.float64)) - 1.0, X.indices,
                              X.indptr), shape=X.shape)
    totals = cell_totals(unlogged)
    block = panel_block(unlogged, columns)
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    block.data = np.log1p(block.data * np.repeat(scale, np.diff(block.indptr)))
    return block


def _programme_chains(model: MarkerModel) -> list[list[int]]:
    """Per node: the programme nodes on its path, root side first."""
    chains: list[list[int]] = [[] for _ in range(model.n_nodes)]
    for node in model.order:
        parent = int(model.parents[node])
        chain = list(chains[parent]) if parent >= 0 else []
        typed_lineage = model.is_lineage[node] and model.is_type[node]
        first_below_virtual = (parent >= 0 and model.is_lineage[parent]
                               and not model.is_type[parent] and model.is_type[node])
        if typed_lineage or first_below_virtual:
            chain.append(node)
        chains[node] = chain
    return chains


def _calibrate(p: NDArray[Any]) -> NDArray[Any]:
    x, y = CALIBRATION
    return np.interp(p, x, y).astype(np.float32)


def _dictionary(values: list[str | None]) -> pa.Array:
    return pa.array(values, pa.string()).dictionary_encode().cast(
        pa.dictionary(pa.int32(), pa.string()))


_TREES: dict[int, _Tree] = {}


def _tree_of(model: MarkerModel) -> _Tree:
    key = id(model)
    tree = _TREES.get(key)
    if tree is None:
        tree = _build_tree(model)
        _TREES[key] = tree
    return tree


register_engine("markers", MarkerEngine,
                "embedded knowledge-base engine: 270 Cell Ontology types over 37 tissues, "
                "tissue context, abstention; no reference, no network")

if False:  # pragma: no cover - keeps Path imported for type checkers of older tools
    Path()

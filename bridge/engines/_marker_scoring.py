"""The marker engine's arithmetic: evidence, hypotheses and the descent through the tree.

Layer: engines.  Everything here is per cell (a cell's result never depends on the other
cells of its block) and works on the marker panel's columns only.

* :func:`build_layout` restricts the model to the genes of one matrix (the panel);
* :func:`evidence` turns a block of cells into evidence ``min(x / saturation, 1)`` and
  detection, where ``x = log1p(value / total * 10,000)`` (less ``log1p(ambient_floor)`` for
  the ambient-prone genes);
* :func:`hypotheses` scores every type's hypothesis (its own and inherited markers) and
  decides which are eligible (enough detected markers, its lineage's programme shown,
  stronger evidence for types foreign to the tissue context);
* :func:`descend` walks each cell down the tree from the root, at each node choosing among
  the children and stopping there, and records the path, the probabilities and the losing
  options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from numpy.typing import NDArray

from ..matrix import csr_view
from ..numerics import cell_totals, log_normalize, panel_block, spread_runs
from ._tissue_context import UBIQUITOUS_COMPARTMENTS

if TYPE_CHECKING:
    from ..matrix import CellMatrix
    from ._marker_model import MarkerModel

__all__ = ["Descent", "Layout", "Settings", "Tree", "alternates_array", "build_layout",
           "cell_markers", "defining_detected", "descend", "detection_threshold", "evidence",
           "hypotheses", "row_view", "sample_rows", "top_alternates", "tree_of",
           "value_handling"]

#: The value handling of a matrix: its value kind as read, and a log base.
Kind = tuple[str, float]
RESCALED_LOG = "lognorm, rescaled"
#: log1p of counts per 10,000 sums to at most this much per cell once un-logged.
_LOG1P_CP10K_SUM = 1.5e4
_LOG_BASES = (2.0, math.e, 10.0)
#: A hypothesis adds at least one weak marker's weight beyond the node deciding about it.
_MIN_EXTRA_WEIGHT = 0.25
#: A tissue-resident subtype of an immune, endothelial or stromal type (found in every tissue)
#: is called only with this much of its own markers' weight detected (one strong marker, or
#: two moderate ones): supporting markers (0.3) that recruited cells take up never make it.
SUBTYPE_EVIDENCE = 0.7
#: A strong marker's weight.
STRONG = 0.7
#: A type's own strong markers detected with this much weight (two of them) speak for the
#: programmes of the lineages above it, as a defining marker of a programme node does.
OWN_PROGRAMME = 1.4


@dataclass(frozen=True)
class Settings:
    """The engine parameters the arithmetic needs."""

    min_markers: int
    foreign_evidence: float
    level_evidence: float
    saturation: float
    detection: float
    temperature: float
    min_level_confidence: float
    n_alternates: int
    ambient_floor: float  # counts per 10,000 the ambient-prone genes must pass


# -- rows and samples -------------------------------------------------------------------------
def row_view(X: sp.csr_matrix, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``start:stop`` of a CSR matrix as a view (no copy of values or indices)."""
    a, b = int(X.indptr[start]), int(X.indptr[stop])
    out = csr_view(X.data[a:b], X.indices[a:b], X.indptr[start:stop + 1] - a,
                   (stop - start, X.shape[1]))
    out.has_sorted_indices = X.has_sorted_indices
    return out


def sample_rows(X: sp.csr_matrix, n: int, windows: int = 8) -> list[sp.csr_matrix]:
    """About ``n`` cells as views of ``windows`` evenly spaced runs of consecutive rows: the
    same cells for the same matrix, spread over it."""
    if X.shape[0] <= n:
        return [X]
    return [row_view(X, start, stop) for start, stop in spread_runs(X.shape[0], n, windows)]


# -- values ---------------------------------------------------------------------------------
def value_handling(matrix: CellMatrix) -> Kind:
    """How the values are read: as their value kind says, except log values of a larger
    scale than log1p(counts per 10,000) (log2 FPKM, log1p CPM), which are un-logged, rescaled
    per cell to 10,000 and logged again (:func:`_rescale_log`).  The log base is the one under
    which the cells' un-logged totals agree best (depth-normalised values sum to the same
    total in every cell).  Decided once per matrix from about 1,000 cells."""
    if matrix.value_kind != "lognorm" or not matrix.n_cells or not matrix.nnz:
        return matrix.value_kind, math.e
    sample = sample_rows(matrix.X, 1000)
    lengths = np.concatenate([np.diff(w.indptr) for w in sample])
    data = np.concatenate([w.data for w in sample]).astype(np.float64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[lengths > 0]
    if not len(starts) or float(np.median(np.add.reduceat(np.expm1(data), starts))
                                 ) <= _LOG1P_CP10K_SUM:
        return matrix.value_kind, math.e
    with np.errstate(over="ignore"):
        spread = [float(np.std(np.log(np.add.reduceat(np.power(b, data) - 1.0, starts))))
                  for b in _LOG_BASES]
    return RESCALED_LOG, _LOG_BASES[int(np.nanargmin(spread))]


def _rescale_log(X: sp.csr_matrix, columns: NDArray[Any], base: float) -> sp.csr_matrix:
    """``log1p`` of each cell's un-logged values (``base ** x - 1``) rescaled to 10,000,
    panel columns only.  For a log2 matrix read with another base the un-logging is a
    monotone power of the original, which keeps highly expressed genes dominant and leaky
    low-level transcripts negligible."""
    unlogged = sp.csr_matrix((np.power(base, X.data.astype(np.float64)) - 1.0, X.indices,
                              X.indptr), shape=X.shape)
    totals = cell_totals(unlogged)
    block = panel_block(unlogged, columns)
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    block.data = np.log1p(block.data * np.repeat(scale, np.diff(block.indptr))
                          ).astype(np.float32)
    return block


def evidence(X: sp.csr_matrix, kind: Kind, layout: Layout, settings: Settings
             ) -> sp.csr_matrix:
    """Evidence ``min(x / saturation, 1)``, cells x panel.  A marker is *detected* from
    ``detection`` counts per 10,000, i.e. from evidence ``log1p(detection) / saturation``
    (:func:`detection_threshold`).

    An ambient-prone gene (a secreted product that makes up much of its own cells' RNA, and
    so of the free RNA every droplet of the sample takes up) counts only by how far it
    exceeds ``ambient_floor`` counts per 10,000: ``x - log1p(ambient_floor)``.  Its own cells
    hold hundreds to tens of thousands per 10,000 and keep their evidence; a beta cell's
    few stray GCG reads are no evidence against it.  Per cell, like everything here."""
    value_kind, base = kind
    if value_kind == RESCALED_LOG:
        block = _rescale_log(X, layout.columns, base)
    else:
        block = log_normalize(X, value_kind, columns=layout.columns, dtype=np.float32)
    if settings.ambient_floor > 0 and layout.ambient.any():
        floor = np.where(layout.ambient, np.float32(np.log1p(settings.ambient_floor)),
                         np.float32(0.0)).astype(np.float32)
        block.data = np.maximum(block.data - floor[block.indices], np.float32(0.0))
        block.eliminate_zeros()
    block.data = np.minimum(block.data * np.float32(1.0 / settings.saturation),
                            np.float32(1.0)).astype(np.float32, copy=False)
    return block


def detection_threshold(settings: Settings) -> float:
    """The evidence from which a marker counts as detected (evidence is monotone in x)."""
    return float(np.float32(np.log1p(settings.detection) / settings.saturation))


# -- the tree the descent walks ----------------------------------------------------------------
@dataclass(frozen=True)
class Tree:
    """The model's nodes (rows ``0 .. n_nodes - 1``), then a virtual root per compartment,
    then one global root."""

    n_rows: int
    parent: NDArray[Any]  # row -> parent row (-1 for the global root)
    children: list[NDArray[Any]]
    internal_pos: NDArray[Any]  # row -> position among nodes with children (-1 for leaves)
    callable_: NDArray[Any]  # rows that can be a label (model nodes)
    root: int
    max_steps: int
    hypotheses: dict[int, NDArray[Any]]  # internal row -> types below it, grouped by child
    starts: dict[int, NDArray[Any]]  # internal row -> where each child's group starts


_TREES: dict[int, tuple[MarkerModel, Tree]] = {}


def tree_of(model: MarkerModel) -> Tree:
    """The tree of a model, built once (the model is kept with it, so its id stays its)."""
    entry = _TREES.get(id(model))
    if entry is None or entry[0] is not model:
        entry = (model, _build_tree(model))
        _TREES[id(model)] = entry
    return entry[1]


def _build_tree(model: MarkerModel) -> Tree:
    n_model = model.n_nodes
    root = n_model + len(model.compartment_names)
    parent = np.empty(root + 1, dtype=np.int64)
    parent[:n_model] = np.where(model.parents >= 0, model.parents,
                                n_model + model.compartment_index)
    parent[n_model:root] = root
    parent[root] = -1
    depth = np.zeros(root + 1, dtype=np.int64)
    depth[:n_model] = model.depth + 1
    depth[n_model:root] = 1
    children = [np.flatnonzero(parent == r) for r in range(root + 1)]
    internal = [r for r in range(root + 1) if len(children[r])]
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
    for row in internal:
        groups = [below[int(kid)] for kid in children[row]]
        hypotheses[row] = np.array([h for g in groups for h in g], dtype=np.int64)
        starts[row] = np.cumsum([0, *[len(g) for g in groups[:-1]]]).astype(np.int64)
    return Tree(root + 1, parent, children, internal_pos, callable_, root,
                int(depth.max()) + 1, hypotheses, starts)


# -- the model on one matrix's genes --------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """The model restricted to the genes of one matrix (the panel)."""

    columns: NDArray[Any]  # matrix columns of the panel genes present
    panel: NDArray[Any]  # their names
    # Weights as differences from the parent's, so each node's row is short; sums down the
    # tree (accumulate) give every node its own and inherited total.
    signed: sp.csr_matrix  # nodes x panel: positive - negative weights, less the parent's
    on_detection: sp.csr_matrix  # (nodes + 2 x programmes) x panel: positive markers less
    #   the parent's; own positive weights and own weight-1 markers of the programme nodes
    programmes: NDArray[Any]  # the programme nodes, in on_detection's order
    chain_end: NDArray[Any]  # nodes: the deepest programme node on the path (-1: none)
    distinct_chains: dict[int, list[int]]  # deepest programme node -> the chain, root first
    available: NDArray[Any]  # nodes: types with an own positive marker in the panel
    positive: NDArray[Any]  # (nodes + 1) x panel: positive weights (last row zero)
    n_present: NDArray[Any]  # nodes: positive markers present in the panel
    weight: NDArray[Any]  # nodes: positive marker weight present in the panel
    defining: sp.csr_matrix  # nodes x panel: own defining markers (positive weight 1)
    ambient: NDArray[Any]  # panel: ambient-prone genes (read above the ambient floor only)
    # Weights whose detected sum must reach a bar, few rows and kept sparse: the positive
    # weight each tissue-resident subtype adds to its parent's (bar: SUBTYPE_EVIDENCE or
    # what the panel holds), then the own strong markers of types below a programme that
    # can reach OWN_PROGRAMME in this panel.
    barred: sp.csr_matrix  # (residents + speakers) x panel
    bars: NDArray[Any]  # per row of barred
    residents: NDArray[Any]  # the tissue-resident subtypes, in barred's order
    speakers: NDArray[Any]  # types below a programme, in barred's order after the residents


def build_layout(model: MarkerModel, genes: NDArray[Any]) -> Layout:
    """The model restricted to ``genes``.  Scores are normalised (in :func:`_options`) by the
    weights of the markers present: a gene the matrix lacks is no evidence either way (a panel
    without KRT19 must not count against ductal cells); ``min_markers`` keeps a type whose
    markers were mostly filtered out from riding on the one that remains."""
    position = {str(g): j for j, g in enumerate(genes)}
    # In the matrix's column order, so a panel block of sorted rows stays sorted.
    present = sorted((k for k, g in enumerate(model.genes) if g in position),
                     key=lambda k: position[model.genes[k]])
    columns = np.array([position[model.genes[k]] for k in present], dtype=np.int64)
    panel = np.array([model.genes[k] for k in present], dtype=object)
    positive = model.positive[:, present]
    negative = model.negative[:, present]
    own = model.own_positive[:, present]
    has_own = (own > 0).any(axis=1)
    chains = _programme_chains(model)
    programmes = np.array(sorted({p for c in chains for p in c}), dtype=np.int64)
    parent = model.parents
    signed = positive - negative
    detects = (positive > 0).astype(np.float64)
    top = parent < 0
    signed_delta = signed - np.where(top[:, None], 0.0, signed[np.maximum(parent, 0)])
    detects_delta = detects - np.where(top[:, None], 0.0, detects[np.maximum(parent, 0)])
    # What a tissue-resident subtype adds to a parent that is itself a type (a call of its
    # own): the evidence that must be seen for it to be called instead of the parent.
    parent_is_type = ~top & model.is_type[np.maximum(parent, 0)]
    resident = np.array([model.compartments[k] in UBIQUITOUS_COMPARTMENTS
                         and _resident(model.tissues[k], model.tissues[max(int(parent[k]), 0)])
                         for k in range(model.n_nodes)], dtype=bool)
    residents = np.flatnonzero(parent_is_type & resident)
    added = np.maximum(positive[residents] - positive[parent[residents]], 0.0)
    # Types below a programme: their own strong markers, which speak for the programme
    # above where its genes are missing or dropped out (see OWN_PROGRAMME).
    chain_end = np.array([c[-1] if c else -1 for c in chains], dtype=np.int64)
    strong_own = np.where(own >= STRONG, own, 0.0)
    speakers = np.flatnonzero(model.is_type & (chain_end >= 0)
                              & (strong_own.sum(axis=1) >= OWN_PROGRAMME - 1e-6))
    needed = np.minimum(SUBTYPE_EVIDENCE, added.sum(axis=1))
    stacked = np.vstack([detects_delta, own[programmes],
                         (own[programmes] >= 1.0).astype(np.float64)])
    return Layout(
        columns=columns, panel=panel, signed=sp.csr_matrix(signed_delta.astype(np.float32)),
        on_detection=sp.csr_matrix(stacked.astype(np.float32)), programmes=programmes,
        chain_end=chain_end,
        distinct_chains={c[-1]: c for c in chains if c}, available=model.is_type & has_own,
        positive=np.vstack([positive, np.zeros((1, len(present)))]),
        n_present=(positive > 0).sum(axis=1), weight=positive.sum(axis=1),
        defining=sp.csr_matrix((own >= 1.0).astype(np.float32)),
        ambient=model.ambient[present],
        barred=sp.csr_matrix(np.vstack([added, strong_own[speakers]]).astype(np.float32)),
        bars=np.concatenate([needed, np.full(len(speakers), OWN_PROGRAMME)]
                            ).astype(np.float32),
        residents=residents, speakers=speakers)


def _resident(tissues: frozenset[str], parent: frozenset[str]) -> bool:
    """Whether a type of these tissues is a tissue-resident form of a parent of those: listed
    for fewer tissues, and not for blood (circulating states are in every tissue)."""
    if "any" in tissues or "blood" in tissues:
        return False
    return "any" in parent or tissues < parent


def _programme_chains(model: MarkerModel) -> list[list[int]]:
    """Per node: the programme nodes on its path, root side first (see
    :func:`_programmes_shown`)."""
    chains: list[list[int]] = [[] for _ in range(model.n_nodes)]
    for node in model.order:
        parent = int(model.parents[node])
        chain = list(chains[parent]) if parent >= 0 else []
        typed_lineage = model.is_lineage[node] and model.is_type[node]
        first_below_virtual = (parent >= 0 and model.is_lineage[parent]
                               and not model.is_type[parent] and model.is_type[node])
        if typed_lineage or first_below_virtual:
            chain.append(int(node))
        chains[node] = chain
    return chains


# -- hypotheses -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hypotheses:
    """Per node and cell of one block."""

    raw: NDArray[Any]  # weighted evidence of the node's markers (not normalised), float32
    masked: NDArray[Any]  # raw, -inf where the hypothesis is not eligible
    alone: NDArray[Any]  # the hypothesis scored on its own (at a root), -inf if not eligible
    eligible: NDArray[Any]  # the hypothesis can be called
    counts: NDArray[Any]  # detected positive markers
    foreign_only: NDArray[Any]  # per cell: only foreign types fell short of their bar


def hypotheses(evidence_: sp.csr_matrix, model: MarkerModel, layout: Layout,
               in_context: NDArray[Any], settings: Settings) -> Hypotheses:
    """Every node's hypothesis for every cell of a block.

    Eligible: a type with an own marker in the panel, at least ``min_markers`` detected
    positive markers (own or inherited; fewer where the panel lacks them, see
    ``FEW_MARKERS_CAP``; ``foreign_evidence`` times as many for a type foreign to the tissue
    context), its lineage's programme shown (:func:`_programmes_shown`), and for a
    tissue-resident form of an immune, endothelial or stromal type, :data:`SUBTYPE_EVIDENCE`
    of its own markers' weight detected: recruited and tumour macrophages take up the
    iron-handling genes of red pulp macrophages and Kupffer cells (HMOX1, SLC40A1) without
    being either.
    """
    # Weights times the transposed block: short weight rows (differences from the parent)
    # make the sparse products cheap; each entry sums in its weight row's order, whatever
    # else is in the block.
    transposed = evidence_.T.tocsr()
    raw = _accumulate((layout.signed @ transposed).toarray(), model)
    transposed.data = (transposed.data >= detection_threshold(settings)).astype(np.float32)
    n_nodes, n_programmes = model.n_nodes, len(layout.programmes)
    stacked = np.asarray((layout.on_detection @ transposed).toarray(), dtype=np.float32)
    counts = _accumulate(stacked[:n_nodes], model)
    shown = _programmes_shown(
        layout, stacked[n_nodes:n_nodes + n_programmes] >= settings.level_evidence,
        stacked[n_nodes + n_programmes:n_nodes + 2 * n_programmes] > 0)
    reached = _bars_reached(layout, transposed)
    n_res = len(layout.residents)
    shown[layout.speakers] |= reached[n_res:]
    types = layout.available[:, None]
    foreign = ~in_context[:, None]
    at_hand = np.minimum(settings.min_markers, layout.n_present)[:, None]
    needed = np.where(foreign, settings.min_markers * settings.foreign_evidence, at_hand)
    eligible = types & shown & (counts >= needed) & _defining_shown(layout, transposed,
                                                                      in_context)
    eligible[layout.residents] &= reached[:n_res]
    plain = types & shown & (counts >= at_hand)
    masked = np.where(eligible, raw, np.float32(-np.inf))
    alone = masked * (1.0 / np.sqrt(np.maximum(layout.weight, _MIN_EXTRA_WEIGHT))
                      ).astype(np.float32)[:, None] + model.prior.astype(np.float32)[:, None]
    _foreign(alone, np.arange(model.n_nodes), in_context, settings)
    return Hypotheses(raw, masked, alone, eligible, counts,
                      plain.any(axis=0) & ~eligible.any(axis=0))


def _bars_reached(layout: Layout, detected: sp.csr_matrix) -> NDArray[Any]:
    """Per row of ``layout.barred`` and cell: the detected weight reaches the row's bar (a
    bar of 0 always is).  The product stays sparse: few cells show these markers."""
    product = (layout.barred @ detected).tocsr()
    rows = np.repeat(np.arange(product.shape[0]), np.diff(product.indptr))
    keep = product.data >= layout.bars[rows] - np.float32(1e-6)
    out = np.zeros(product.shape, dtype=bool)
    out[rows[keep], product.indices[keep]] = True
    out[layout.bars <= 0] = True
    return out


def _defining_shown(layout: Layout, detected: sp.csr_matrix, in_context: NDArray[Any]
                    ) -> NDArray[Any]:
    """Per node and cell: a type foreign to the tissue context shows one of its own defining
    markers (weight 1).  A foreign type's generic markers are
    often another tissue's too (the secretory genes PIGR, MMP7, OLFM4, LTF of prostatic
    club-like cells are pancreatic duct genes as well); what names the type is what must be
    seen, and a type without one detected (none in the matrix, or none in the knowledge
    base: a transit amplifying cell of the gut is a proliferating state of its crypt) cannot
    be confirmed abroad.  In-context types pass."""
    out = np.ones((len(in_context), detected.shape[1]), dtype=bool)
    rows = np.flatnonzero(~in_context)
    if len(rows):
        out[rows] = np.asarray((layout.defining[rows] @ detected).toarray()) > 0
    return out


def defining_detected(evidence_: sp.csr_matrix, layout: Layout, label: NDArray[Any],
                      settings: Settings) -> NDArray[Any]:
    """Per cell: a defining marker (own, weight 1) of its label is detected (False for
    cells without a label)."""
    called = label >= 0
    out = np.zeros(len(label), dtype=bool)
    if not called.any():
        return out
    rows = np.flatnonzero(called)
    detected = evidence_[rows] >= detection_threshold(settings)
    out[rows] = np.asarray(layout.defining[label[rows]].multiply(detected).sum(axis=1)
                           ).ravel() > 0
    return out


def _accumulate(delta: NDArray[Any], model: MarkerModel) -> NDArray[Any]:
    """Per-node differences from the parent summed down the tree: every node's total."""
    out = np.asarray(delta, dtype=np.float32)
    for node in model.order:  # parents first
        parent = model.parents[node]
        if parent >= 0:
            out[node] += out[parent]
    return out


def _programmes_shown(layout: Layout, shown: NDArray[Any], defining: NDArray[Any]
                      ) -> NDArray[Any]:
    """Per node and cell: the programmes of the node's lineages are shown.

    The *programme nodes* on a node's path are its lineage nodes that are types
    (``hematopoietic cell``, ``myeloid leukocyte``, ``T cell``, ``epithelial cell``) and,
    below a lineage node without markers of its own (``mononuclear phagocyte``), the first
    type on the path (``monocyte``).  Each must show its programme (``shown``: detected own
    positive weight of at least ``level_evidence``), or a programme node below it must show a
    detected *defining* marker (weight 1): a monocyte's LYZ speaks for the hematopoietic
    programme above it where PTPRC dropped out; a transit amplifying cell's cycling genes do
    not speak for the epithelial one.  A subtype's markers refine its lineage's call, they
    never make it alone: memory T cell genes such as ANXA1 or LMNA say nothing without a T
    cell programme.  A programme node whose own markers are all missing from the matrix
    cannot show it.  (:func:`hypotheses` adds: two strong markers of the type itself,
    :data:`OWN_PROGRAMME`, show every programme above it.)
    """
    row = {int(p): k for k, p in enumerate(layout.programmes)}  # rows of shown / defining
    ok = {}
    for end, chain in layout.distinct_chains.items():
        implied = np.zeros(shown.shape[1], dtype=bool)
        good = np.ones(shown.shape[1], dtype=bool)
        for programme in chain[::-1]:  # deepest first
            good &= shown[row[programme]] | implied
            implied |= defining[row[programme]]
        ok[end] = good
    everyone = np.ones(shown.shape[1], dtype=bool)
    return np.vstack([ok[end] if end >= 0 else everyone for end in layout.chain_end])


# -- the descent ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Descent:
    """Each cell's walk down the tree (``steps`` x cells, ``-1`` / 0 where it stopped)."""

    path: NDArray[Any]  # node reached at each step
    cumulative: NDArray[Any]  # its cumulative probability
    alt_nodes: NDArray[Any]  # steps x cells x n_alternates: losing options (callable nodes)
    alt_scores: NDArray[Any]  # their cumulative probabilities
    label: NDArray[Any]  # the call's node (-1: none)
    probability: NDArray[Any]  # its cumulative probability
    depth: NDArray[Any]  # the step at which the label was reached (-1: none)


def descend(h: Hypotheses, model: MarkerModel, tree: Tree, layout: Layout,
            in_context: NDArray[Any], settings: Settings) -> Descent:
    """Walk each cell from the root: at each node a softmax over the options of
    :func:`_options`; the cell follows the best one.  Only the nodes a cell visits are scored
    for it."""
    n = h.raw.shape[1]
    steps, k_alt = tree.max_steps, max(settings.n_alternates, 0)
    path = np.full((steps, n), -1, dtype=np.int64)
    cumulative = np.zeros((steps, n))
    alt_nodes = np.full((steps, n, k_alt), -1, dtype=np.int64)
    alt_scores = np.zeros((steps, n, k_alt))
    current = np.full(n, tree.root, dtype=np.int64)
    cum = np.ones(n)
    active = h.eligible.any(axis=0)
    for step in range(steps):
        cells = np.flatnonzero(active & (tree.internal_pos[current] >= 0))
        if not len(cells):
            break
        order = np.argsort(current[cells], kind="stable")
        cells = cells[order]
        nodes, first = np.unique(current[cells], return_index=True)
        bounds = [*first.tolist(), len(cells)]
        moving = np.zeros(n, dtype=bool)
        for g, node in enumerate(nodes.tolist()):
            sel = cells[bounds[g]:bounds[g + 1]]
            logits, best_below = _options(node, sel, h, model, tree, layout, in_context,
                                          settings)
            kids = tree.children[node]
            probs = _softmax(logits)
            pick = np.argmax(logits, axis=0)
            go = pick < len(kids)
            chosen = kids[np.minimum(pick, len(kids) - 1)]
            before = cum[sel]
            cum[sel] = np.where(go, before * probs[pick, np.arange(len(sel))], before)
            current[sel] = np.where(go, chosen, current[sel])
            moving[sel] = go
            if k_alt:
                _record_alternates(step, sel[go], kids, probs[:-1, go], pick[go], before[go],
                                   best_below[:, go], tree, alt_nodes, alt_scores)
        path[step] = np.where(moving, current, -1)
        cumulative[step] = np.where(moving, cum, 0.0)
        active = moving
    label, probability, depth = _choose(path, cumulative, tree, settings.min_level_confidence)
    return Descent(path, cumulative, alt_nodes, alt_scores, label, probability, depth)


def _options(node: int, cells: NDArray[Any], h: Hypotheses, model: MarkerModel, tree: Tree,
             layout: Layout, in_context: NDArray[Any], settings: Settings
             ) -> tuple[NDArray[Any], NDArray[Any]]:
    """Logits of the options at ``node`` for ``cells``: each child (its subtree's best
    eligible hypothesis), then stopping at the node itself; and each child's best
    hypothesis (a callable node standing for a compartment in the alternates).

    A hypothesis is scored by the evidence it adds *beyond the deciding node*: its markers'
    weighted evidence less the node's, over the square root of its marker weight beyond the
    node's, plus its prior beyond the node's.  The evidence every option shares (a T cell's
    CD3 genes when CD4 and CD8 T cells compete) thus neither dilutes nor decides the choice.
    A positive score of a type foreign to the tissue context is divided by
    ``foreign_evidence``.  Stopping scores 0: it wins when no subtype adds evidence.
    """
    hyps, starts = tree.hypotheses[node], tree.starts[node]
    everyone = len(cells) == h.raw.shape[1]
    if node >= model.n_nodes:  # a root: nothing shared, every hypothesis on its own
        scores = h.alone[hyps] if everyone else h.alone[np.ix_(hyps, cells)]
    else:
        scores = h.masked[hyps] if everyone else h.masked[np.ix_(hyps, cells)]
        scores -= h.raw[node, cells][None, :]
        extra = np.maximum(layout.weight[hyps] - layout.weight[node], _MIN_EXTRA_WEIGHT)
        scores *= (1.0 / np.sqrt(extra)).astype(np.float32)[:, None]
        scores += (model.prior[hyps] - model.prior[node]).astype(np.float32)[:, None]
        _foreign(scores, hyps, in_context, settings)
    options = np.maximum.reduceat(scores, starts, axis=0)
    best_below = np.zeros(options.shape, dtype=np.int64)
    if not tree.callable_[tree.children[node]].all():  # compartments stand as their best
        for g, (a, b) in enumerate(zip(starts, [*starts[1:], len(hyps)], strict=True)):
            best_below[g] = hyps[a + np.argmax(scores[a:b], axis=0)]
    stop = np.full((1, len(cells)), -np.inf, dtype=np.float32)
    if node < model.n_nodes and model.is_type[node]:
        stop[0] = np.where(h.eligible[node, cells], 0.0, -np.inf)
    return np.vstack([options, stop]) / np.float32(settings.temperature), best_below


def _foreign(scores: NDArray[Any], hyps: NDArray[Any], in_context: NDArray[Any],
             settings: Settings) -> None:
    """In place: positive scores of types foreign to the context divided by
    ``foreign_evidence``."""
    foreign = np.flatnonzero(~in_context[hyps])
    if len(foreign):
        part = scores[foreign]
        scores[foreign] = np.where(part > 0, part / settings.foreign_evidence, part)


def _softmax(logits: NDArray[Any]) -> NDArray[Any]:
    with np.errstate(invalid="ignore", over="ignore"):
        top = logits.max(axis=0)
        weights = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
        total = weights.sum(axis=0)
        return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)


def _record_alternates(step: int, cells: NDArray[Any], kids: NDArray[Any],
                       probs: NDArray[Any], pick: NDArray[Any], before: NDArray[Any],
                       best_below: NDArray[Any], tree: Tree, alt_nodes: NDArray[Any],
                       alt_scores: NDArray[Any]) -> None:
    """The losing children at this step, best first, with their cumulative probability; a
    child that cannot be a label (a compartment) stands as its best hypothesis's branch."""
    if not len(cells):
        return
    k_alt = alt_nodes.shape[2]
    losing = probs.copy()
    losing[pick, np.arange(len(cells))] = 0.0
    k = min(k_alt, len(kids) - 1)
    if k <= 0:
        return
    order = np.argsort(-losing, axis=0, kind="stable")[:k]
    columns = np.arange(len(cells))
    nodes = kids[order]
    substitute = ~tree.callable_[nodes]
    if substitute.any():
        below = best_below[order, columns[None, :]]
        nodes = np.where(substitute, _top_callable(below, tree), nodes)
    scores = losing[order, columns[None, :]] * before[None, :]
    alt_nodes[step, cells, :k] = np.where(scores > 0, nodes, -1).T
    alt_scores[step, cells, :k] = scores.T


def _top_callable(nodes: NDArray[Any], tree: Tree) -> NDArray[Any]:
    """The first callable ancestor-or-self below a compartment root (its top-level node)."""
    out = nodes.copy()
    for _ in range(tree.max_steps):
        parent = tree.parent[out]
        step_up = tree.callable_[parent]
        if not step_up.any():
            break
        out = np.where(step_up, parent, out)
    return out


def _choose(path: NDArray[Any], cumulative: NDArray[Any], tree: Tree, threshold: float
            ) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """The deepest callable node on each path with cumulative probability at or above
    ``threshold``; else the shallowest callable node, at its own probability."""
    callable_ = (path >= 0) & tree.callable_[np.maximum(path, 0)]
    good = callable_ & (cumulative >= threshold)
    steps, n = path.shape
    index = np.arange(steps)[:, None]
    deepest_good = np.where(good, index, -1).max(axis=0)
    first_callable = np.where(callable_, index, steps).min(axis=0)
    depth = np.where(deepest_good >= 0, deepest_good, first_callable)
    found = depth < steps
    depth = np.where(found, depth, 0)
    columns = np.arange(n)
    label = np.where(found, path[depth, columns], -1)
    probability = np.where(found, cumulative[depth, columns], 0.0)
    return label, probability, np.where(found, depth, -1)


def top_alternates(descent: Descent, k: int) -> tuple[NDArray[Any], NDArray[Any]]:
    """Per cell, the ``k`` best losing options at the label's step and above (cells x k;
    ``-1`` / 0 where there are fewer)."""
    steps, n, k_alt = descent.alt_nodes.shape
    if not k or not k_alt or not n:
        return np.full((n, 0), -1, dtype=np.int64), np.zeros((n, 0))
    later = np.arange(steps)[:, None] > descent.depth[None, :]
    scores = np.where(later[:, :, None], 0.0, descent.alt_scores)
    scores = scores.transpose(1, 0, 2).reshape(n, -1)
    nodes = descent.alt_nodes.transpose(1, 0, 2).reshape(n, -1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_nodes = np.where(top_scores > 0, np.take_along_axis(nodes, order, axis=1), -1)
    return top_nodes, top_scores


def cell_markers(evidence_: sp.csr_matrix, layout: Layout, label: NDArray[Any],
                 n_markers: int) -> pa.Array:
    """Per cell, the positive markers of its label (own or inherited) that carried the most
    evidence, best first (ties by gene), as list<utf8>."""
    n = len(label)
    if not len(layout.panel) or n_markers <= 0:
        return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)),
                                        pa.array([], pa.string()))
    rows = np.repeat(np.arange(n), np.diff(evidence_.indptr))
    # label -1 picks the all-zero last row
    contribution = evidence_.data * layout.positive[label[rows], evidence_.indices]
    keep = contribution > 0
    rows, cols, contribution = rows[keep], evidence_.indices[keep], contribution[keep]
    # One stable sort on (cell, descending contribution); CSR order breaks ties by gene.
    scale = 2.0 * float(contribution.max()) if len(contribution) else 1.0
    order = np.argsort(rows + (1.0 - contribution / scale), kind="stable")
    rows, cols = rows[order], cols[order]
    starts = np.searchsorted(rows, np.arange(n + 1))
    rank = np.arange(len(rows)) - starts[rows]
    top = rank < n_markers
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows[top], minlength=n))])
    genes = pa.array(layout.panel[cols[top]].tolist(), pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), genes)


def alternates_array(nodes: NDArray[Any], scores: NDArray[Any], names: NDArray[Any]
                     ) -> pa.Array:
    """list<struct<label, score>> from cells x k node ids (``-1``: none) and scores."""
    valid = nodes >= 0
    offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
    labels = pa.array(names[nodes[valid]].tolist(), pa.string())
    values = pa.array(scores[valid].astype(np.float32), pa.float32())
    struct = pa.StructArray.from_arrays([labels, values], names=["label", "score"])
    return pa.ListArray.from_arrays(pa.array(offsets), struct)

"""One self-contained HTML page with the pictures a biologist checks after annotation.

``write_report(path, matrix, calls)`` draws, as inline SVG (no JavaScript, no external
resources, no plotting library needed, so the page opens anywhere, offline, forever):

1. label composition (cells per label),
2. confidence distribution per label (box plots),
3. the embedding in two dimensions coloured by label (a UMAP-style layout of the kNN graph
   when numba is installed, else the first two principal components),
4. a marker dot plot (dot size: fraction of cells expressing; colour: scaled mean expression).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from ._errors import InputError
from .io._files import atomic_output

if TYPE_CHECKING:
    from .matrix import CellMatrix

__all__ = ["write_report"]

logger = logging.getLogger(__name__)

# A colour-blind-aware categorical palette (Okabe-Ito, then Tableau 10), cycled if needed.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000", "#4E79A7", "#F28E2B", "#59A14F", "#E15759", "#B07AA1", "#9C755F",
           "#76B7B2", "#EDC948", "#FF9DA7", "#BAB0AC")
_FONT = "font-family:Helvetica,Arial,sans-serif;font-size:12px"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _colours(labels: Sequence[str]) -> dict[str, str]:
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


# -- figures -------------------------------------------------------------------------------
def composition_svg(labels: Sequence[str], counts: Sequence[int],
                    colours: dict[str, str]) -> str:
    """Horizontal bars: cells per label, with counts and percentages."""
    total = max(sum(counts), 1)
    left, bar_h, width = 170, 18, 420
    height = 20 + bar_h * len(labels) + 10
    peak = max(max(counts, default=1), 1)
    parts = [f'<svg class="figure" id="composition" width="{left + width + 120}" '
             f'height="{height}" style="{_FONT}" role="img" aria-label="label composition">']
    for i, (label, n) in enumerate(zip(labels, counts, strict=True)):
        y = 20 + i * bar_h
        w = width * n / peak
        parts.append(
            f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{_e(label)}</text>'
            f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{bar_h - 4}" '
            f'fill="{colours[label]}"><title>{_e(label)}: {n:,} cells</title></rect>'
            f'<text x="{left + w + 4:.1f}" y="{y + 13}">{n:,} ({100 * n / total:.1f}%)</text>')
    parts.append("</svg>")
    return "".join(parts)


def confidence_svg(labels: Sequence[str], confidence_by_label: Sequence[NDArray[Any]],
                   colours: dict[str, str]) -> str:
    """Box plots of confidence per label: 5-95% whiskers, quartile box, median line."""
    left, row_h, width = 170, 20, 420
    height = 20 + row_h * len(labels) + 30

    def x(v: float) -> float:
        return left + width * float(np.clip(v, 0, 1))

    parts = [f'<svg class="figure" id="confidence" width="{left + width + 80}" '
             f'height="{height}" style="{_FONT}" role="img" '
             'aria-label="confidence per label">']
    for tick in np.linspace(0, 1, 6):
        parts.append(f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="15" '
                     f'y2="{height - 25}" stroke="#ddd"/>'
                     f'<text x="{x(tick):.1f}" y="{height - 10}" '
                     f'text-anchor="middle">{tick:.1f}</text>')
    for i, (label, values) in enumerate(zip(labels, confidence_by_label, strict=True)):
        y = 20 + i * row_h
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{_e(label)}</text>')
        if len(values) == 0:
            continue
        p5, q1, med, q3, p95 = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
        mid = y + row_h / 2
        parts.append(
            f'<line x1="{x(p5):.1f}" x2="{x(p95):.1f}" y1="{mid}" y2="{mid}" stroke="#555"/>'
            f'<rect x="{x(q1):.1f}" y="{y + 3}" width="{max(x(q3) - x(q1), 1):.1f}" '
            f'height="{row_h - 6}" fill="{colours[label]}" fill-opacity="0.7" stroke="#333">'
            f'<title>{_e(label)}: median {med:.2f}, quartiles {q1:.2f}-{q3:.2f}, '
            f'{len(values):,} cells</title></rect>'
            f'<line x1="{x(med):.1f}" x2="{x(med):.1f}" y1="{y + 3}" y2="{y + row_h - 3}" '
            'stroke="#000" stroke-width="2"/>')
    parts.append(f'<text x="{left + width / 2}" y="{height}" text-anchor="middle">'
                 "confidence</text></svg>")
    return "".join(parts)


def embedding_svg(coords: NDArray[Any], point_labels: NDArray[Any], labels: Sequence[str],
                  colours: dict[str, str], axis_name: str) -> str:
    """A scatter of the 2-D layout coloured by label, with a legend."""
    size, pad, legend_w = 480, 12, 190
    parts = [f'<svg class="figure" id="embedding" width="{size + legend_w}" '
             f'height="{size + 24}" style="{_FONT}" role="img" '
             'aria-label="embedding coloured by label">']
    if len(coords):
        lo, hi = coords.min(axis=0), coords.max(axis=0)
        span = np.where(hi - lo > 0, hi - lo, 1.0)
        scaled = pad + (coords - lo) / span * (size - 2 * pad)
        # Draw in a shuffled order so no label is painted over wholesale by the next.
        order = np.random.default_rng(0).permutation(len(coords))
        radius = 2.2 if len(coords) < 5000 else 1.4
        for i in order:
            px, py = scaled[i, 0], size - scaled[i, 1]
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="{radius}" '
                         f'fill="{colours[point_labels[i]]}" fill-opacity="0.75"/>')
    parts.append(f'<text x="{size / 2}" y="{size + 18}" text-anchor="middle">'
                 f"{_e(axis_name)}</text>")
    for i, label in enumerate(labels):
        y = 16 + 16 * i
        parts.append(f'<circle cx="{size + 14}" cy="{y - 4}" r="5" fill="{colours[label]}"/>'
                     f'<text x="{size + 24}" y="{y}">{_e(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def dotplot_svg(labels: Sequence[str], genes: Sequence[str], fraction: NDArray[Any],
                scaled_mean: NDArray[Any]) -> str:
    """Labels x marker genes: dot area = fraction expressing, colour = scaled mean."""
    left, top, cell = 170, 90, 18
    width = left + cell * len(genes) + 150
    height = top + cell * len(labels) + 20
    parts = [f'<svg class="figure" id="dotplot" width="{width}" height="{height}" '
             f'style="{_FONT}" role="img" aria-label="marker dot plot">']
    for j, gene in enumerate(genes):
        gx = left + cell * j + cell / 2
        parts.append(f'<text transform="translate({gx:.1f},{top - 6}) rotate(-60)">'
                     f"{_e(gene)}</text>")
    for i, label in enumerate(labels):
        gy = top + cell * i + cell / 2
        parts.append(f'<text x="{left - 6}" y="{gy + 4:.1f}" text-anchor="end">{_e(label)}</text>')
        for j, gene in enumerate(genes):
            f, m = float(fraction[i, j]), float(scaled_mean[i, j])
            if f <= 0:
                continue
            gx = left + cell * j + cell / 2
            radius = (cell / 2 - 1) * np.sqrt(f)
            parts.append(f'<circle cx="{gx:.1f}" cy="{gy:.1f}" r="{radius:.2f}" '
                         f'fill="{_blues(m)}"><title>{_e(gene)} in {_e(label)}: '
                         f"{100 * f:.0f}% of cells, scaled mean {m:.2f}</title></circle>")
    lx = left + cell * len(genes) + 20
    for k, f in enumerate((0.25, 0.5, 1.0)):
        parts.append(f'<circle cx="{lx + 8}" cy="{top + 10 + 20 * k}" '
                     f'r="{(cell / 2 - 1) * np.sqrt(f):.2f}" fill="#888"/>'
                     f'<text x="{lx + 22}" y="{top + 14 + 20 * k}">{int(f * 100)}% cells</text>')
    for k, m in enumerate((0.0, 0.5, 1.0)):
        parts.append(f'<rect x="{lx}" y="{top + 74 + 16 * k}" width="16" height="12" '
                     f'fill="{_blues(m)}"/><text x="{lx + 22}" y="{top + 84 + 16 * k}">'
                     f"mean {m:.1f}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _blues(value: float) -> str:
    """Light grey-blue (0) to dark blue (1)."""
    v = float(np.clip(value, 0, 1))
    start, end = np.array([222, 235, 247]), np.array([8, 48, 107])
    r, g, b = (start + (end - start) * v).round().astype(int)
    return f"#{r:02x}{g:02x}{b:02x}"


# -- data for the figures ------------------------------------------------------------------
def _aligned_labels(matrix: CellMatrix, calls: pa.Table, label_column: str
                    ) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """Matrix row, label and confidence of every called cell that is in the matrix."""
    for name in ("cell", label_column):
        if name not in calls.column_names:
            msg = f"calls need columns 'cell' and {label_column!r}; found {calls.column_names}."
            raise InputError(msg)
    row_of = {str(c): i for i, c in enumerate(matrix.cells.tolist())}
    cells = [str(c) for c in calls.column("cell").to_pylist()]
    rows = np.array([row_of.get(c, -1) for c in cells])
    labels = np.asarray(pc.cast(calls.column(label_column), pa.string()).to_pylist(), object)
    if "confidence" in calls.column_names:
        confidence = np.asarray(calls.column("confidence").to_numpy(zero_copy_only=False),
                                dtype=np.float64)
    else:
        confidence = np.full(len(cells), np.nan)
    keep = (rows >= 0) & np.array([lab is not None for lab in labels])
    if not keep.any():
        msg = "none of the called cells is in the matrix; were the calls made on this data?"
        raise InputError(msg)
    return rows[keep], labels[keep].astype(str), confidence[keep]


def _subsample(rows: NDArray[Any], labels: NDArray[Any], max_points: int,
               seed: int) -> NDArray[Any]:
    """Positions of at most ``max_points`` cells, each label keeping its share (at least 1)."""
    if len(rows) <= max_points:
        return np.arange(len(rows))
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n = max(1, round(len(members) * max_points / len(rows)))
        picked.append(rng.choice(members, min(n, len(members)), replace=False))
    return np.sort(np.concatenate(picked))


def _layout(matrix: CellMatrix, rows: NDArray[Any], layout: str, seed: int
            ) -> tuple[NDArray[Any], str] | None:
    """The 2-D layout of the whole matrix (computed once per matrix, shared with
    ``bridge.embed(layout=...)`` and write-back), at ``rows``."""
    from ._cellmap import DISPLAY_NAMES
    from ._cellmap import layout as cell_layout

    laid_out = cell_layout(matrix, method=layout, seed=seed)
    if laid_out is None:
        logger.warning("too few cells or genes for an embedding; the report leaves it out")
        return None
    coords, method = laid_out
    return coords[rows], DISPLAY_NAMES[method]


def _dotplot_data(matrix: CellMatrix, rows: NDArray[Any], labels: NDArray[Any],
                  label_order: Sequence[str], genes_per_label: int
                  ) -> tuple[list[str], NDArray[Any], NDArray[Any]] | None:
    from ._rank_markers import rank_marker_genes
    from .matrix import CellMatrix
    from .numerics import group_moments, log_normalize

    sub = CellMatrix(matrix.X[rows], matrix.cells[rows], matrix.genes,
                     value_kind=matrix.value_kind, validate=False, source=matrix.source)
    calls = pa.table({"cell": sub.cells.astype(str).tolist(), "label": labels.tolist()})
    if len(label_order) < 2:
        return None
    table = rank_marker_genes(sub, calls, top_n=50, min_cells=1).to_pydict()
    genes: list[str] = []
    for label in label_order:  # genes grouped by the label they mark, as scanpy draws them
        rows_of_label = [(g, fc) for lab, g, fc in zip(table["label"], table["gene"],
                                                       table["log2_fold_change"], strict=True)
                         if lab == label]
        # Prefer genes at least 2x higher in the label: a high t alone also picks ubiquitous
        # genes (ribosomal proteins) that only shift a little.
        specific = [g for g, fc in rows_of_label if fc >= 1.0] or [g for g, _ in rows_of_label]
        genes += [g for g in specific if g not in genes][:genes_per_label]
    if not genes:
        return None
    position = {g: j for j, g in enumerate(sub.genes.astype(str).tolist())}
    columns = np.array([position[g] for g in genes])
    Xn = log_normalize(sub.X, sub.value_kind, columns=np.asarray(columns))
    code_of = {label: k for k, label in enumerate(label_order)}
    codes = np.array([code_of[lab] for lab in labels])
    _, mean, _ = group_moments(Xn, codes, len(label_order))
    binary = Xn.copy()
    binary.data = (binary.data > 0).astype(np.float64)
    _, fraction, _ = group_moments(binary, codes, len(label_order))
    lo, hi = mean.min(axis=0), mean.max(axis=0)
    scaled = (mean - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
    return genes, fraction, scaled


# -- the page ------------------------------------------------------------------------------
def write_report(
    path: str | Path,
    matrix: Any,
    calls: pa.Table,
    *,
    label_column: str = "label",
    title: str = "scbridge cell-type annotation report",
    max_points: int = 20_000,
    layout: str = "auto",
    genes_per_label: int = 3,
    seed: int = 0,
    inputs: Iterable[str | Path | None] = (),
) -> Path:
    """Write one self-contained HTML page summarising cell-type calls.

    Parameters
    ----------
    path
        The ``.html`` file to write.
    matrix
        The expression data the calls were made on: a ``CellMatrix`` or anything
        :func:`bridge.read` accepts.
    calls
        A Calls table (``cell``, ``label``, ``confidence``, ...); cells are matched by id.
    label_column
        The column to draw (e.g. ``label_smoothed``).
    title
        Page title.
    max_points
        At most this many cells (a per-label share) are drawn in the embedding and go into
        the dot plot, which keeps the page small; counts and confidences use all.
    layout
        ``"auto"`` (a UMAP-style layout when numba is installed, else PCA), ``"umap-fast"``,
        ``"umap"`` (umap-learn), ``"tsne"`` or ``"pca"``.  The layout covers every cell of
        the matrix and is computed once per matrix (shared with ``bridge.embed`` and
        write-back).
    genes_per_label
        Marker genes per label in the dot plot.
    seed
        Seed for subsampling and the layout.
    inputs
        Files the page must not overwrite (besides ``matrix`` when it is a path); a ``path``
        naming one of them is refused (code ``same_file``) before any work.

    Returns
    -------
    pathlib.Path
        The page written.
    """
    from .io import read
    from .io._files import refuse_same_file
    from .matrix import CellMatrix

    sources = [*inputs, matrix if isinstance(matrix, str | os.PathLike) else None]
    refuse_same_file(path, sources, what="the report")
    matrix = matrix if isinstance(matrix, CellMatrix) else read(matrix)
    rows, labels, confidence = _aligned_labels(matrix, calls, label_column)
    names, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    label_order = [str(names[k]) for k in order]
    colours = _colours(label_order)
    figures: list[tuple[str, str, str]] = [(
        "Label composition", "Cells per label.",
        composition_svg(label_order, [int(counts[k]) for k in order], colours))]
    if np.isfinite(confidence).any():
        by_label = [confidence[(labels == lab) & np.isfinite(confidence)] for lab in label_order]
        figures.append(("Confidence per label",
                        "Box: quartiles; line: median; whiskers: 5th to 95th percentile.",
                        confidence_svg(label_order, by_label, colours)))
    picked = _subsample(rows, labels, max_points, seed)
    laid_out = _layout(matrix, rows[picked], layout, seed)
    if laid_out is not None:
        coords, axis_name = laid_out
        shown = f"{len(picked):,} of {len(rows):,} cells" if len(picked) < len(rows) else \
            f"{len(rows):,} cells"
        figures.append(("Embedding", f"{axis_name} of the PCA embedding, {shown}, coloured by "
                        "label.", embedding_svg(coords, labels[picked], label_order, colours,
                                                axis_name)))
    dots = _dotplot_data(matrix, rows[picked], labels[picked], label_order, genes_per_label)
    if dots is not None:
        genes, fraction, scaled = dots
        figures.append(("Marker genes", f"Top {genes_per_label} marker genes per label "
                        "(t-test against all other cells, at least 2-fold higher where "
                        "possible). Dot area: fraction of cells "
                        "expressing; colour: mean log-normalised expression scaled per gene.",
                        dotplot_svg(label_order, genes, fraction, scaled)))
    page = _page(title, _summary(matrix, calls, rows, confidence, label_order), figures)
    out = Path(path)
    with atomic_output(out, inputs=sources, what="the report") as temp:
        temp.write_text(page, encoding="utf-8")
    logger.info("wrote report %s (%d figures)", out, len(figures))
    return out


def _summary(matrix: CellMatrix, calls: pa.Table, rows: NDArray[Any], confidence: NDArray[Any],
             label_order: Sequence[str]) -> list[tuple[str, str]]:
    items = [("input", matrix.source or "in-memory matrix"),
             ("cells", f"{matrix.n_cells:,} ({len(rows):,} with a call)"),
             ("genes", f"{matrix.n_genes:,}"),
             ("labels", f"{len(label_order)}")]
    if np.isfinite(confidence).any():
        items.append(("mean confidence", f"{np.nanmean(confidence):.3f}"))
    if "qc_pass" in calls.column_names:
        passed = pc.sum(pc.cast(calls.column("qc_pass"), pa.int64())).as_py() or 0
        items.append(("QC pass", f"{passed:,} of {calls.num_rows:,}"))
    meta = calls.schema.metadata or {}
    for key in ("engine", "model", "atlas", "genes_matched", "package_version"):
        raw = meta.get(f"scbridge.{key}".encode())
        if raw:
            value = raw.decode(errors="replace")
            try:
                parsed = json.loads(value)
                value = f"{parsed:.3f}" if isinstance(parsed, float) else str(parsed)
            except json.JSONDecodeError:
                pass
            items.append((key.replace("_", " "), value))
    context = _tissue_context(meta.get(b"scbridge.tissue"))
    if context:
        items.append(("tissue context", context))
    if "unknown_reason" in calls.column_names:
        reasons = pc.value_counts(pc.drop_null(pc.cast(calls.column("unknown_reason"),
                                                        pa.string()))).to_pylist()
        if reasons:
            items.append(("Unknown, by reason", ", ".join(
                f"{r['values']} {r['counts']:,}" for r in reasons)))
    return items


def _tissue_context(raw: bytes | None) -> str:
    """``scbridge.tissue`` in words: the tissues, how they were chosen, and the evidence."""
    if not raw:
        return ""
    try:
        context = json.loads(raw.decode(errors="replace"))
    except json.JSONDecodeError:
        return ""
    if not isinstance(context, dict):
        return ""
    expects = context.get("expects", "every type")
    tissues = ", ".join(context.get("tissues") or []) or f"none ({expects} expected)"
    text = f"{tissues} ({context.get('source', '?')})"
    support = context.get("support") or {}
    if context.get("source") == "inferred" and support:
        text += "; cells voting per tissue: " + ", ".join(
            f"{t} {float(v):.1%}" for t, v in list(support.items())[:4])
    types = context.get("types") or {}
    for tissue, counts in list(types.items())[:2]:
        text += f"; {tissue}: " + ", ".join(f"{n} {c}" for n, c in list(counts.items())[:3])
    if context.get("reason"):
        text += f"; {context['reason']}"
    return text


def _page(title: str, summary: list[tuple[str, str]], figures: list[tuple[str, str, str]]
          ) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary)
    sections = "".join(
        f'<section><h2>{_e(name)}</h2><p class="note">{_e(note)}</p>{svg}</section>'
        for name, note, svg in figures)
    made = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)}</title><style>"
        "body{font-family:Helvetica,Arial,sans-serif;margin:2em auto;max-width:1000px;"
        "color:#222}h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}"
        "table{border-collapse:collapse}th{text-align:left;padding-right:1em;color:#555;"
        "font-weight:normal}.note{color:#666;font-size:0.9em}svg{display:block}"
        f"</style></head><body><h1>{_e(title)}</h1><table>{rows}</table>{sections}"
        f'<p class="note">Made by scbridge on {made}.</p></body></html>\n')

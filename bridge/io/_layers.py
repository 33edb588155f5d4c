"""Which layer of a Seurat assay, or which assay of a SingleCellExperiment, is read.

The rules live in one data file, ``bridge/io/data/layer_rules.tsv``, shipped byte-identical in
the R package (``inst/extdata/layer_rules.tsv``), so that ``bridge.read`` and the R package's
``annotate_cells`` pick the same matrix of the same object, fall back the same way (an
``SCTAssay`` with empty counts: its ``data``, with a warning) and refuse the same layers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

from .._errors import FormatError, InputError, NotFoundError

__all__ = ["LayerRule", "choose_layer", "layer_rules"]

logger = logging.getLogger(__name__)

Container = Literal["seurat", "sce"]
Use = Literal["default", "fallback", "refused"]


@dataclass(frozen=True)
class LayerRule:
    """One row of ``layer_rules.tsv``."""

    container: str
    layer: str
    use: Use
    note: str


@cache
def layer_rules() -> tuple[LayerRule, ...]:
    """Every rule, in file order (the order in which defaults and fallbacks are tried)."""
    text = resources.files("bridge.io").joinpath("data", "layer_rules.tsv").read_text("utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    header, body = rows[0], rows[1:]
    if header != ["container", "layer", "use", "note"]:
        msg = f"layer_rules.tsv: unexpected header {header}"
        raise FormatError(msg)
    rules = []
    for row in body:
        container, layer, use, note = row
        if use not in ("default", "fallback", "refused"):
            msg = f"layer_rules.tsv: unknown use {use!r} for {container} {layer}"
            raise FormatError(msg)
        rules.append(LayerRule(container, layer, use, note))  # type: ignore[arg-type]
    return tuple(rules)


def _rules(container: Container, *uses: Use) -> list[LayerRule]:
    return [r for r in layer_rules() if r.container == container and r.use in uses]


def _matching(layer: str, available: Sequence[str], split: bool) -> list[str]:
    exact = [name for name in available if name == layer]
    if exact or not split:
        return exact
    return [name for name in available if name.startswith(layer + ".")]


def choose_layer(container: Container, requested: str | None, available: Sequence[str], *,
                 split: bool = False, where: str, what: str) -> tuple[str, list[str]]:
    """The layer to read and the available layers it stands for.

    Parameters
    ----------
    container
        ``"seurat"`` (layers of an assay) or ``"sce"`` (assays of an experiment).
    requested
        The layer the user named, or ``None`` for the rules' default.
    available
        The non-empty layers present.
    split
        Whether a name also stands for its split layers (Seurat v5: ``counts`` for
        ``counts.A``, ``counts.B``).
    where, what
        The file and the assay / experiment, for messages.

    Returns
    -------
    tuple
        The chosen name and the available layers it covers (several for split layers).
    """
    word = "assay" if container == "sce" else "layer"
    refused = {r.layer: r for r in _rules(container, "refused")}
    usable = [r.layer for r in _rules(container, "default", "fallback")]
    listing = ", ".join(available) or "none"
    if requested is not None:
        if requested in refused:
            msg = (f"{where}: {word} {requested!r} of {what} holds {refused[requested].note}; "
                   f"choose {' or '.join(repr(u) for u in usable)}.")
            raise InputError(msg)
        covered = _matching(requested, available, split)
        if not covered:
            msg = f"{where}: {what} has no {word} {requested!r}; available {word}s: {listing}."
            raise NotFoundError(msg)
        return requested, covered
    tried: list[str] = []
    for rule in _rules(container, "default", "fallback"):
        covered = _matching(rule.layer, available, split)
        if covered:
            if rule.use == "fallback":
                logger.warning("%s: %s has no %s; using its %r %s (%s) instead", where, what,
                               " or ".join(repr(t) for t in tried), rule.layer, word, rule.note)
            return rule.layer, covered
        tried.append(rule.layer)
    msg = (f"{where}: {what} holds none of the {word}s scbridge reads by default "
           f"({', '.join(tried)}); available {word}s: {listing}. Name one with "
           f"{'assay' if container == 'sce' else 'layer'}=....")
    raise NotFoundError(msg)

"""Synthetic cells for the knowledge-base tests: Poisson counts drawn from gene shares.

Each group of cells is a list of *programmes* (gene -> share of the cell's reads) and a cell
count; every cell also reads housekeeping genes (4% each), an optional *soup* (ambient RNA
every cell takes up) and a low background on every other gene.  The genes are the knowledge
base's marker genes (title case for mouse), the housekeeping genes and every programme gene,
less those a panel ``lacks``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from bridge.engines._marker_model import load_marker_model
from bridge.matrix import CellMatrix

HOUSEKEEPING = ["ACTB", "B2M", "MALAT1", "TMSB4X", "EEF1A1", "RPL13", "RPS27", "RPLP1",
                "RPS12", "TPT1", "FTL", "GAPDH"]
MOUSE_HOUSEKEEPING = ["Actb", "B2m", "Malat1", "Tmsb4x", "Eef1a1", "Rpl13", "Rps27", "Rplp1",
                      "Rps12", "Tpt1", "Ftl1", "Gapdh"]

Programme = Mapping[str, float]


def synthetic_cells(groups: Sequence[tuple[Sequence[Programme], int]], *, seed: int,
                    depth: int = 4000, background: float = 1e-5,
                    soup: Programme | None = None, lacks: Iterable[str] = (),
                    species: str = "human") -> CellMatrix:
    """Cells of each ``(programmes, number)`` group in turn, over one gene list."""
    housekeeping = MOUSE_HOUSEKEEPING if species == "mouse" else HOUSEKEEPING
    markers = set(load_marker_model().genes)
    if species == "mouse":
        markers = {g[0] + g[1:].lower() for g in markers}
    shown = {g for programmes, _ in groups for programme in programmes for g in programme}
    shown |= set(soup or {})
    genes = sorted((markers | set(housekeeping) | shown) - set(lacks))
    col = {g: j for j, g in enumerate(genes)}
    rng = np.random.default_rng(seed)
    rows = []
    for programmes, n in groups:
        p = np.full(len(genes), background)
        for g in housekeeping:
            p[col[g]] = 0.04
        for programme in [soup or {}, *programmes]:
            for g, share in programme.items():
                if g in col:
                    p[col[g]] = max(p[col[g]], share)
        rows.extend(rng.poisson(p / p.sum() * depth) for _ in range(n))
    return CellMatrix(sp.csr_matrix(np.array(rows, dtype=np.float64)),
                      [f"c{i}" for i in range(len(rows))], genes)

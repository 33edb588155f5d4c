"""A sample of no known tissue expects only the types found in every tissue.

When the inference finds no tissue (no tissue-specific type called with its defining marker
in 2% of the cells), nothing says any organ is there: its types need the evidence a foreign
type needs.  Macrophages showing the genes resident macrophages share across organs (VSIG4,
CD5L, TIMD4, MARCO, FOLR2) are then macrophages, not Kupffer cells or alveolar
macrophages.  ``tissue="unknown"`` asks for the same directly (remote clients send it to every
chunk of such a run); ``tissue="all"`` still puts every type on equal terms.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from _synthetic import synthetic_cells

import bridge
from bridge._contract import metadata_dict
from bridge._errors import InputError
from bridge.matrix import CellMatrix

RESIDENT_MACROPHAGE = {"C1QA": 0.01, "C1QB": 0.01, "C1QC": 0.008, "CD163": 0.006,
                       "MRC1": 0.005, "VSIG4": 0.006, "CD5L": 0.004, "TIMD4": 0.003,
                       "MARCO": 0.003, "FOLR2": 0.004, "CD68": 0.008, "AIF1": 0.006,
                       "CST3": 0.01, "LYZ": 0.004, "PTPRC": 0.006, "APOE": 0.006,
                       "LAPTM5": 0.006, "FCER1G": 0.006, "TYROBP": 0.006}
T_CELL = {"PTPRC": 0.01, "CD3E": 0.006, "CD3D": 0.006, "CD2": 0.004, "IL7R": 0.004,
          "CD4": 0.002, "LCK": 0.003, "CORO1A": 0.004, "LCP1": 0.004, "TRAC": 0.006}
FIBROBLAST = {"COL1A1": 0.03, "COL1A2": 0.03, "COL3A1": 0.03, "DCN": 0.02, "LUM": 0.01,
              "PDGFRA": 0.003, "FBLN1": 0.005, "SPARC": 0.01}


def _sample() -> CellMatrix:
    return synthetic_cells([([RESIDENT_MACROPHAGE], 40), ([T_CELL], 40), ([FIBROBLAST], 40)],
                           seed=5, depth=3000, background=1e-6)


def _macrophage_calls(tissue: str) -> tuple[Counter[str], dict]:
    table = bridge.annotate(_sample(), tissue=tissue, qc=False, progress=False)
    labels = [str(x) for x in table.column("label").to_pylist()[:40]]
    return Counter(labels), metadata_dict(table)["tissue"]


def test_macrophages_of_a_sample_of_no_known_tissue_are_macrophages() -> None:
    calls, context = _macrophage_calls("auto")
    assert context["source"] == "none" and not context["tissues"], context
    assert "defining markers" in context["reason"]
    assert calls["macrophage"] >= 36, calls


def test_tissue_unknown_asks_for_the_same_and_all_for_every_type() -> None:
    unknown, context = _macrophage_calls("unknown")
    assert unknown == _macrophage_calls("auto")[0]
    assert context["source"] == "none" and "unknown" in context["reason"]
    every, _ = _macrophage_calls("all")
    assert every["macrophage"] < unknown["macrophage"], every


def test_unknown_tissue_is_named_in_the_refusal() -> None:
    with pytest.raises(InputError, match="'unknown' for a sample of no known tissue"):
        bridge.annotate(_sample(), tissue="nowhere", qc=False, progress=False)
    json.dumps(_macrophage_calls("unknown")[1])  # the metadata stays JSON

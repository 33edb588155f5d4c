"""A tissue-resident form of a type found in every tissue needs evidence of its own.

Macrophages, fibroblasts and endothelial cells live in every organ, and recruited or tumour
macrophages take up programmes that resident subtypes are known by: heme and iron handling
(HMOX1, SLC40A1; Haldar et al. 2014, Cell 156:1223), lipid handling, complement.  Those
supporting genes (weight 0.3) must not turn a macrophage into a splenic red pulp macrophage
or a Kupffer cell just because the spleen or the liver is in the context: the subtype is
called only with a strong marker's weight (0.7) of its own markers detected (SPIC, VCAM1),
see ``SUBTYPE_EVIDENCE``.  Circulating states (naive and memory lymphocytes, monocyte
subsets) are listed for blood and are not held to this.
"""

from __future__ import annotations

import numpy as np
import pytest
from _synthetic import synthetic_cells

import bridge
from bridge.engines._marker_model import load_marker_model

MACROPHAGE = {"C1QA": 0.01, "C1QB": 0.01, "C1QC": 0.008, "CD68": 0.008, "AIF1": 0.006,
              "CST3": 0.01, "LYZ": 0.004, "PTPRC": 0.006, "APOE": 0.008, "MS4A7": 0.004,
              "LAPTM5": 0.006, "FCER1G": 0.006, "TYROBP": 0.006, "SPP1": 0.01}
IRON_HANDLING = {"HMOX1": 0.012, "SLC40A1": 0.006}
RED_PULP_IDENTITY = {"SPIC": 0.005, "VCAM1": 0.005}


def _labels(*programmes: dict[str, float], tissue: str, seed: int = 0) -> list[str]:
    matrix = synthetic_cells([(list(programmes), 40)], seed=seed, depth=3000)
    calls = bridge.annotate(matrix, tissue=tissue, qc=False, progress=False)
    return [str(x) for x in calls.column("label").to_pylist()]


def test_iron_handling_macrophages_are_macrophages_in_a_spleen() -> None:
    # (a stray read of a strong marker, one of the synthetic background, still makes a few)
    labels = _labels(MACROPHAGE, IRON_HANDLING, tissue="spleen")
    assert labels.count("macrophage") >= 30, labels


def test_red_pulp_macrophages_are_called_on_their_own_markers() -> None:
    labels = _labels(MACROPHAGE, IRON_HANDLING, RED_PULP_IDENTITY, tissue="spleen", seed=1)
    assert labels.count("splenic red pulp macrophage") >= 36, labels


def test_iron_handling_macrophages_are_no_kupffer_cells_in_a_liver() -> None:
    labels = _labels(MACROPHAGE, IRON_HANDLING, tissue="liver", seed=2)
    assert labels.count("macrophage") >= 30, labels


def test_only_resident_forms_of_ubiquitous_types_need_own_evidence() -> None:
    from bridge.engines._marker_scoring import SUBTYPE_EVIDENCE, build_layout

    model = load_marker_model()
    layout = build_layout(model, np.array(model.genes, dtype=object))
    needed = layout.bars[:len(layout.residents)]
    held = {model.names[k] for k, need in zip(layout.residents, needed, strict=True)
            if need > 0}
    assert {"splenic red pulp macrophage", "Kupffer cell", "microglial cell",
            "alveolar macrophage", "hepatic stellate cell",
            "endothelial cell of hepatic sinusoid"} <= held
    # circulating states and epithelial types are not held to it
    assert not held & {"naive thymus-derived CD4-positive, alpha-beta T cell",
                       "CD4-positive, alpha-beta memory T cell", "classical monocyte",
                       "naive B cell", "pancreatic ductal cell", "epithelial cell of pancreas"}
    assert float(needed.max()) == pytest.approx(SUBTYPE_EVIDENCE)

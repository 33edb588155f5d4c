"""The epithelial cells of the pancreas share lineage factors (GATA6, PDX1, ONECUT1, NR5A2,
HNF1B, FOXA2; Baron et al. 2016, Muraro et al. 2016): in a pancreas context a pancreatic
epithelial cell that shows them but no duct, acinar or islet programme is called "epithelial
cell of pancreas" (CL:0000083, the generic node above all three, as "kidney epithelial cell"
is for the nephron), not a bare "epithelial cell"; one that shows the duct programme stays a
pancreatic ductal cell."""

from __future__ import annotations

from _synthetic import synthetic_cells

import bridge
from bridge.engines._knowledge_base import load_cell_ontology
from bridge.matrix import CellMatrix

EPITHELIUM = {"EPCAM": 0.006, "KRT8": 0.01, "KRT18": 0.01, "CLDN4": 0.004, "CLDN7": 0.004,
              "ELF3": 0.003}
PANCREAS = {"GATA6": 0.002, "PDX1": 0.002, "ONECUT1": 0.0015, "NR5A2": 0.0015,
            "HNF1B": 0.0015, "FOXA2": 0.0015}
DUCT = {"KRT19": 0.01, "CFTR": 0.004, "SOX9": 0.003, "SPP1": 0.006, "KRT7": 0.006,
        "MMP7": 0.004, "SLC4A4": 0.003}


def _cells(programmes: list[dict[str, float]], n: int, seed: int) -> CellMatrix:
    return synthetic_cells([(programmes, n)], seed=seed)


def test_the_generic_node_sits_above_every_pancreatic_epithelial_type() -> None:
    ontology = load_cell_ontology()
    for child in ("CL:0002079", "CL:0002064", "CL:0008024"):  # ductal, acinar, endocrine
        assert "CL:0000083" in ontology.ancestors(child)


def test_pancreatic_epithelium_without_a_sub_programme_gets_the_organ_node() -> None:
    calls = bridge.annotate(_cells([EPITHELIUM, PANCREAS], 30, seed=1), tissue="pancreas",
                            qc=False, progress=False)
    labels = calls.column("label").to_pylist()
    assert labels.count("epithelial cell of pancreas") >= 27, labels
    ducts = bridge.annotate(_cells([EPITHELIUM, PANCREAS, DUCT], 30, seed=2),
                            tissue="pancreas", qc=False, progress=False)
    assert ducts.column("label").to_pylist().count("pancreatic ductal cell") >= 27

"""Immune cells in matrices that lack their textbook markers.

Targeted and highly-variable-gene panels (the pancreatic cancer set of Moncada et al. 2020
keeps 7,000 genes) often drop the genes an annotator leans on: the tryptases, CPA3 and MS4A2
of mast cells; LYZ, CD68, CSF1R and AIF1 of macrophages.  The cells must still reach their
lineage through the markers that are there, and not the innate lymphoid cells whose genes
they share (KIT, HPGDS and AREG with ILC2s; TYROBP with ILCs):

* mast cells by tryptase delta (TPSD1), RGS13 and Siglec-6 beside KIT and HPGDS (Human
  Protein Atlas single cell type; Bansal et al. 2008; Yu et al. 2018);
* macrophages by NRAMP1 (SLC11A1), restricted to professional phagocytes (Canonne-Hergaux et
  al. 1999), beside C1QA, CD163 and TYROBP.
"""

from __future__ import annotations

from _synthetic import synthetic_cells

import bridge
from bridge.matrix import CellMatrix

LEUKOCYTE = {"PTPRC": 0.003, "CORO1A": 0.003, "RAC2": 0.002, "CXCR4": 0.002}
MAST = {"KIT": 0.01, "HPGDS": 0.004, "AREG": 0.006, "TPSD1": 0.002, "RGS13": 0.002,
        "SIGLEC6": 0.0015, "TYROBP": 0.003}
MAST_PANEL_LACKS = ("TPSAB1", "TPSB2", "CPA3", "MS4A2", "HDC", "CMA1", "GATA2", "CTSG")
MACROPHAGE = {"TYROBP": 0.006, "SLC11A1": 0.002, "C1QA": 0.0002, "CD163": 0.003,
              "LST1": 0.0002, "HLA-DPA1": 0.004}
MACROPHAGE_PANEL_LACKS = ("LYZ", "CD68", "CSF1R", "AIF1", "CST3", "FCER1G", "SPI1", "C1QB",
                          "C1QC", "APOE", "CD14", "MS4A7", "FCGR1A", "MERTK", "MRC1",
                          "MARCO", "SELENOP", "FCGR3A", "CTSS", "MNDA")


def _cells(programmes: list[dict[str, float]], lacks: tuple[str, ...], n: int, seed: int
           ) -> CellMatrix:
    return synthetic_cells([(programmes, n)], seed=seed, depth=1500, lacks=lacks)


def _labels(matrix: CellMatrix) -> list[str]:
    calls = bridge.annotate(matrix, tissue="pancreas", qc=False, progress=False)
    return [str(x) for x in calls.column("label").to_pylist()]


def test_mast_cells_without_tryptase_beta_or_cpa3_are_mast_cells() -> None:
    labels = _labels(_cells([LEUKOCYTE, MAST], MAST_PANEL_LACKS, 40, seed=3))
    assert labels.count("mast cell") >= 30, labels
    assert not any("innate lymphoid" in x for x in labels), labels


def test_macrophages_without_lyz_or_cd68_reach_the_myeloid_lineage() -> None:
    matrix = _cells([LEUKOCYTE, MACROPHAGE], MACROPHAGE_PANEL_LACKS, 40, seed=4)
    calls = bridge.annotate(matrix, tissue="pancreas", qc=False, progress=False)
    lineages = calls.column("label_l2").to_pylist()
    assert lineages.count("mononuclear phagocyte") >= 34, lineages
    labels = [str(x) for x in calls.column("label").to_pylist()]
    assert not any("innate lymphoid" in x for x in labels), labels

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

import numpy as np
import scipy.sparse as sp

import bridge
from bridge.engines._marker_model import load_marker_model
from bridge.matrix import CellMatrix

HOUSEKEEPING = ["ACTB", "B2M", "MALAT1", "TMSB4X", "EEF1A1", "RPL13", "RPS27", "RPLP1",
                "RPS12", "TPT1", "FTL", "GAPDH"]
LEUKOCYTE = {"PTPRC": 0.003, "CORO1A": 0.003, "RAC2": 0.002, "CXCR4": 0.002}
MAST = {"KIT": 0.01, "HPGDS": 0.004, "AREG": 0.006, "TPSD1": 0.002, "RGS13": 0.002,
        "SIGLEC6": 0.0015, "TYROBP": 0.003}
MAST_PANEL_LACKS = ("TPSAB1", "TPSB2", "CPA3", "MS4A2", "HDC", "CMA1", "GATA2", "CTSG")
MACROPHAGE = {"TYROBP": 0.006, "SLC11A1": 0.002, "C1QA": 0.004, "CD163": 0.003,
              "LST1": 0.001, "HLA-DPA1": 0.004}
MACROPHAGE_PANEL_LACKS = ("LYZ", "CD68", "CSF1R", "AIF1", "CST3", "FCER1G", "SPI1", "C1QB",
                          "C1QC", "APOE", "CD14", "MS4A7", "FCGR1A", "MERTK", "MRC1",
                          "MARCO", "SELENOP", "FCGR3A", "CTSS", "MNDA")


def _cells(programmes: list[dict[str, float]], lacks: tuple[str, ...], n: int, seed: int
           ) -> CellMatrix:
    shown = {g for programme in programmes for g in programme}
    genes = sorted((set(load_marker_model().genes) | set(HOUSEKEEPING) | shown) - set(lacks))
    col = {g: j for j, g in enumerate(genes)}
    rng = np.random.default_rng(seed)
    p = np.full(len(genes), 1e-5)
    for g in HOUSEKEEPING:
        p[col[g]] = 0.04
    for programme in programmes:
        for g, share in programme.items():
            p[col[g]] = share
    X = sp.csr_matrix(np.array([rng.poisson(p / p.sum() * 1500) for _ in range(n)],
                               dtype=np.float64))
    return CellMatrix(X, [f"c{i}" for i in range(n)], genes)


def _labels(matrix: CellMatrix) -> list[str]:
    calls = bridge.annotate(matrix, tissue="pancreas", qc=False, progress=False)
    return [str(x) for x in calls.column("label").to_pylist()]


def test_mast_cells_without_tryptase_beta_or_cpa3_are_mast_cells() -> None:
    labels = _labels(_cells([LEUKOCYTE, MAST], MAST_PANEL_LACKS, 40, seed=3))
    assert labels.count("mast cell") >= 30, labels
    assert not any("innate lymphoid" in x for x in labels), labels


def test_macrophages_without_lyz_or_cd68_reach_the_myeloid_lineage() -> None:
    labels = _labels(_cells([LEUKOCYTE, MACROPHAGE], MACROPHAGE_PANEL_LACKS, 40, seed=4))
    assert labels.count("macrophage") >= 30, labels
    assert not any("innate lymphoid" in x for x in labels), labels

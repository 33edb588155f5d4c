"""SPIC marks iron-recycling macrophages wherever heme is cleared, not the spleen alone.

Heme induces SPI-C in monocyte-derived macrophages of bone marrow, splenic red pulp and liver
(Haldar et al. 2014, Cell 156:1223), so a SPIC+ macrophage names no tissue: it must not vote a
lymph node or marrow sample into a spleen context (which would make that tissue's own types
foreign), and abroad it cannot be called a splenic red pulp macrophage.
"""

from __future__ import annotations

import numpy as np
from _synthetic import synthetic_cells

import bridge
from bridge._contract import metadata_dict
from bridge.engines._marker_model import load_marker_model
from bridge.matrix import CellMatrix

IRON_RECYCLING = {"SPIC": 0.004, "VCAM1": 0.004, "HMOX1": 0.01, "SLC40A1": 0.004,
                  "CD163": 0.006, "C1QA": 0.01, "C1QB": 0.01, "C1QC": 0.008, "CD68": 0.008,
                  "AIF1": 0.006, "CST3": 0.01, "LYZ": 0.004, "PTPRC": 0.006, "APOE": 0.006,
                  "MS4A7": 0.004, "LAPTM5": 0.006, "FCER1G": 0.006, "TYROBP": 0.006}
T_CELL = {"PTPRC": 0.01, "CD3E": 0.006, "CD3D": 0.006, "CD2": 0.004, "IL7R": 0.004,
          "CD4": 0.002, "LCK": 0.003, "CORO1A": 0.004, "LCP1": 0.004, "TRAC": 0.006}


def _sample(seed: int = 0) -> CellMatrix:
    return synthetic_cells([([IRON_RECYCLING], 40), ([T_CELL], 60)], seed=seed, depth=3000,
                           background=1e-4)


def test_spic_is_no_defining_marker_of_red_pulp_macrophages() -> None:
    model = load_marker_model()
    row = model.index("splenic red pulp macrophage")
    spic = model.genes.index("SPIC")
    assert 0 < model.own_positive[row, spic] < 1


def test_iron_recycling_macrophages_do_not_make_a_sample_splenic() -> None:
    matrix = _sample()
    table = bridge.annotate(matrix, qc=False, progress=False)
    assert "spleen" not in metadata_dict(table)["tissue"]["tissues"]
    l2 = np.array(table.column("label_l2").to_pylist(), dtype=object)
    assert (l2[:40] == "mononuclear phagocyte").mean() >= 0.9, l2[:40]
    # abroad (a liver context) they are macrophages, never splenic red pulp macrophages
    liver = bridge.annotate(matrix, tissue="liver", qc=False, progress=False)
    assert "splenic red pulp macrophage" not in liver.column("label").to_pylist()[:40]


# Genes tissue-resident macrophages share across organs: complement, scavenger and mannose
# receptors, CRIg, AIM (CD5L), LYVE1 (perivascular macrophages of every tissue; Chakarov et
# al. 2019) - none of them names an organ.
RESIDENT = {"C1QA": 0.01, "C1QB": 0.01, "C1QC": 0.008, "CD163": 0.006, "MRC1": 0.005,
            "LYVE1": 0.004, "VSIG4": 0.005, "CD5L": 0.003, "MARCO": 0.003, "FOLR2": 0.004,
            "CD68": 0.008, "AIF1": 0.006, "CST3": 0.01, "LYZ": 0.004, "PTPRC": 0.006,
            "APOE": 0.006, "MS4A7": 0.004, "LAPTM5": 0.006, "FCER1G": 0.006, "TYROBP": 0.006}


def test_shared_resident_macrophage_genes_confirm_no_organ_abroad() -> None:
    """In a pancreas, macrophages showing what resident macrophages everywhere show are
    macrophages: not Kupffer cells (liver), border-associated macrophages (brain), alveolar
    macrophages (lung) or Hofbauer cells (placenta)."""
    matrix = synthetic_cells([([RESIDENT], 40)], seed=3, depth=3000, background=1e-4)
    calls = bridge.annotate(matrix, tissue="pancreas", qc=False, progress=False)
    labels = [str(x) for x in calls.column("label").to_pylist()]
    assert labels.count("macrophage") >= 36, labels

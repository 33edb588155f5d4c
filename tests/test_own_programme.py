"""A type's own strong programme speaks for its lineage where the lineage's genes are missing.

Targeted panels (a few hundred to a thousand genes: spatial panels, deconvolution references,
highly variable genes) often hold a type's own markers and none of its lineage's: MBP and
PLP1 but no SOX10 or S100B for oligodendrocytes, GCG, ARX and IRX2 but no chromogranin for
alpha cells.  Two strong markers of the type itself (``OWN_PROGRAMME``) then show the
programmes above it, as a defining marker of a programme node below does; weak markers
(ANXA1, LMNA of memory T cells, which epithelia express too) never do.
"""

from __future__ import annotations

from collections import Counter

from _synthetic import synthetic_cells

import bridge

GLIAL_PROGRAMME = ["S100B", "SOX2", "SOX9", "SOX10", "PTPRZ1", "APOE"]
OLIGODENDROCYTE = {"MBP": 0.02, "PLP1": 0.03, "CNP": 0.004, "ST18": 0.002, "QKI": 0.003}
ENDOCRINE_PROGRAMME = ["CHGA", "CHGB", "SCG2", "SCG3", "SCG5", "PCSK1N", "SCGN", "PCSK2",
                       "NEUROD1", "INSM1"]
ALPHA = {"GCG": 0.05, "ARX": 0.002, "IRX2": 0.002, "TTR": 0.01, "TM4SF4": 0.003}
DUCTAL = {"KRT19": 0.01, "KRT7": 0.006, "KRT8": 0.01, "KRT18": 0.01, "EPCAM": 0.004,
          "CFTR": 0.002, "SOX9": 0.002, "SPP1": 0.01, "MMP7": 0.004, "ANXA4": 0.004}
MEMORY_T_WEAK = {"ANXA1": 0.01, "LMNA": 0.006, "S100A4": 0.008, "ITGB1": 0.004,
                 "AQP3": 0.004}


def _calls(programmes: list[dict[str, float]], tissue: str, lacks: list[str],
           seed: int = 0) -> Counter[str]:
    matrix = synthetic_cells([(programmes, 40)], seed=seed, depth=3000, lacks=lacks)
    table = bridge.annotate(matrix, tissue=tissue, qc=False, progress=False)
    return Counter(str(x) for x in table.column("label").to_pylist())


def test_oligodendrocytes_of_a_panel_without_glial_programme_genes() -> None:
    calls = _calls([OLIGODENDROCYTE], "brain", [*GLIAL_PROGRAMME, "MOG", "MOBP"])
    assert calls["oligodendrocyte"] >= 36, calls


def test_alpha_cells_of_a_panel_without_the_endocrine_programme() -> None:
    calls = _calls([ALPHA], "pancreas", ENDOCRINE_PROGRAMME, seed=1)
    assert calls["pancreatic A cell"] >= 36, calls


def test_weak_markers_of_a_subtype_never_make_its_lineage() -> None:
    """Ductal cells expressing memory T cell genes (one strong, AQP3) stay ductal."""
    calls = _calls([DUCTAL, MEMORY_T_WEAK], "pancreas", [], seed=2)
    assert not calls["CD4-positive, alpha-beta memory T cell"], calls
    assert calls["pancreatic ductal cell"] >= 36, calls

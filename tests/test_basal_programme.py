"""The basal keratin programme names no organ.

KRT5, KRT15 and TP63 mark the basal cells of every stratified and pseudostratified epithelium
(airway, oesophagus, urothelium, prostate, breast, skin) and the basal-like state of
carcinomas (the "basal-like" subtype of pancreatic cancer, Moffitt et al. 2015). So they are
strong, not defining, markers of the organ-specific basal cells: a KRT5+ ductal cell in a
pancreas is not a foreign respiratory, urothelial, prostatic or oesophageal basal cell, which
would have to show what names those organs.  Likewise a fibroblast's PDGFRA names no muscle
fibro/adipogenic progenitor, a duct's KRT7 no cholangiocyte, a PAX8+ epithelium no kidney.
"""

from __future__ import annotations

from _synthetic import synthetic_cells

import bridge

EPITHELIUM = {"EPCAM": 0.004, "KRT8": 0.008, "KRT18": 0.008, "CLDN4": 0.003, "CLDN7": 0.003,
              "ELF3": 0.002}
BASAL_LIKE = {"KRT5": 0.01, "KRT17": 0.01, "KRT15": 0.003, "TP63": 0.001, "S100A2": 0.004,
              "KRT6A": 0.004, "KRT19": 0.006, "KRT7": 0.004}
FOREIGN_BASAL = {"respiratory basal cell", "basal cell of urothelium",
                 "basal cell of prostate epithelium",
                 "epithelial cell of stratum germinativum of esophagus"}


def test_basal_like_cells_of_a_pancreas_are_no_foreign_basal_cells() -> None:
    matrix = synthetic_cells([([EPITHELIUM, BASAL_LIKE], 40)], seed=21, depth=3000)
    calls = bridge.annotate(matrix, tissue="pancreas", qc=False, progress=False)
    labels = [str(x) for x in calls.column("label").to_pylist()]
    assert not FOREIGN_BASAL & set(labels), labels

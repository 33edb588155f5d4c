"""Ambient-prone transcripts and the islet's endocrine cells.

Hormones, digestive enzymes, haemoglobins, immunoglobulins and the like make up much of their
own cells' RNA and so of the free RNA every droplet of a dissociated sample takes up (SoupX,
Young & Behjati 2020): in islet preparations nearly every cell holds a few INS, GCG and SST
reads (Baron et al. 2016 human islets: GCG in 68% and SST in 80% of beta cells, at 2-7
counts per 10,000 against ~1,000-3,500 in alpha and delta cells).  The marker engine reads
these genes (``ambient_genes.tsv``) only above ``ambient_floor`` counts per 10,000, so stray
reads neither veto a beta cell nor make a ductal cell endocrine.

Islet cells also show the endocrine programme (CHGA, secretory granule genes) far more than
the epithelial one (few keratins): the enteroendocrine lineage sits under "endocrine cell",
the CL parent whose defining marker it shares, not under "epithelial cell".
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from _synthetic import synthetic_cells

import bridge
from bridge import InputError
from bridge.engines._knowledge_base import load_ambient_genes
from bridge.engines._marker_model import load_marker_model
from bridge.engines._marker_scoring import build_layout, evidence
from bridge.engines.markers import MarkerEngine
from bridge.matrix import CellMatrix

ENDOCRINE = {"CHGA": 0.01, "CHGB": 0.004, "SCG2": 0.003, "SCG3": 0.002, "SCG5": 0.003,
             "PCSK1N": 0.004, "SCGN": 0.002, "PCSK2": 0.002, "NEUROD1": 0.001,
             "INSM1": 0.001}
BETA = {"INS": 0.2, "IAPP": 0.02, "MAFA": 0.001, "NPTX2": 0.002, "DLK1": 0.003,
        "PCSK1": 0.002, "HADH": 0.002, "G6PC2": 0.001}
ALPHA = {"GCG": 0.15, "IRX2": 0.001, "ARX": 0.001, "TTR": 0.01, "TM4SF4": 0.003,
         "LOXL4": 0.001, "GC": 0.002, "CRYBA2": 0.002}
# Baron et al. 2016 ductal cells: KRT19 ~17 per 10,000, the rest of the programme a few.
DUCT = {"KRT19": 0.002, "CFTR": 0.0003, "SOX9": 0.0003, "SPP1": 0.001, "KRT7": 0.0005,
        "MMP7": 0.0003, "SLC4A4": 0.0002, "EPCAM": 0.0005, "KRT8": 0.001, "KRT18": 0.001,
        "ANXA4": 0.0005, "CA2": 0.0003}
# The soup of an islet preparation: every cell takes up a few hormone and enzyme reads.
SOUP = {"INS": 0.0008, "GCG": 0.0003, "SST": 0.0008, "PPY": 0.0002, "PRSS1": 0.0015,
        "CPA1": 0.001, "REG1A": 0.002, "CELA3A": 0.0005, "CTRB1": 0.0008, "SPINK1": 0.0008}


def _cells(groups: list[tuple[list[dict[str, float]], int]], seed: int) -> CellMatrix:
    return synthetic_cells(groups, seed=seed, soup=SOUP)


def test_every_ambient_gene_is_a_marker_gene_with_a_source() -> None:
    rows = load_ambient_genes()
    assert len(rows) >= 50
    model = load_marker_model()
    assert {r["gene"] for r in rows} <= set(model.genes)
    assert {"INS", "GCG", "SST", "HBB", "PRSS1", "JCHAIN", "SFTPC", "ALB"} <= {
        r["gene"] for r in rows}
    assert model.ambient.sum() == len(rows)


def test_an_ambient_gene_counts_only_above_the_floor() -> None:
    model = load_marker_model()
    genes = np.array(["INS", "GCG", "KRT19", "ACTB"], dtype=object)
    layout = build_layout(model, genes)
    # Per 10,000: INS 2,000 (a beta cell's own), GCG 5 (stray), KRT19 5 (not ambient-prone).
    X = sp.csr_matrix(np.array([[2000.0, 5.0, 5.0, 7990.0]]))
    settings = MarkerEngine()._settings()
    found = evidence(X, ("counts", np.e), layout, settings).toarray()[0]
    at = {str(g): found[k] for k, g in enumerate(layout.panel)}
    assert at["INS"] == 1.0
    assert at["GCG"] == 0.0
    assert at["KRT19"] > 0.5
    off = MarkerEngine(ambient_floor=0)._settings()
    unfloored = evidence(X, ("counts", np.e), layout, off).toarray()[0]
    assert unfloored[list(layout.panel).index("GCG")] > 0.5


def test_islet_cells_in_their_soup_get_their_own_types() -> None:
    sample = _cells([([ENDOCRINE, BETA], 40), ([ENDOCRINE, ALPHA], 30), ([DUCT], 30)],
                    seed=11)
    calls = bridge.annotate(sample, tissue="pancreas", qc=False, progress=False)
    labels = calls.column("label").to_pylist()
    assert labels[:40].count("type B pancreatic cell") >= 36, labels[:40]
    assert labels[40:70].count("pancreatic A cell") >= 27, labels[40:70]
    assert labels[70:].count("pancreatic ductal cell") >= 27, labels[70:]


def test_ductal_cells_in_an_acinar_soup_stay_ductal() -> None:
    """Acinar enzymes argue against a ductal cell (PRSS1, CPA1 are its negatives), but a few
    stray reads of them per 10,000 are the soup's, not the cell's."""
    calls = bridge.annotate(_cells([([DUCT], 40)], seed=12), tissue="pancreas", qc=False,
                            progress=False)
    labels = calls.column("label").to_pylist()
    assert labels.count("pancreatic ductal cell") >= 36, labels


def test_the_enteroendocrine_lineage_sits_under_endocrine_cell() -> None:
    model = load_marker_model()
    parent = model.parents[model.index("enteroendocrine cell")]
    assert model.names[parent] == "endocrine cell"
    # Thyroid follicular cells share no defining marker with neuroendocrine cells.
    thyroid = model.parents[model.index("epithelial cell of thyroid gland")]
    assert model.names[thyroid] == "epithelial cell"


def test_ambient_floor_is_a_recorded_non_negative_parameter() -> None:
    assert MarkerEngine().parameters()["ambient_floor"] == 20.0
    with pytest.raises(InputError) as error:
        MarkerEngine(ambient_floor=-1)
    assert error.value.code == "invalid_parameter"


def test_islet_cells_making_gut_hormones_are_no_foreign_l_cells() -> None:
    """Glucagon and PYY are made by islet alpha and PP cells, and PYY by many mouse delta
    cells, as much as by intestinal L cells, so neither confirms an L cell in a pancreas."""
    delta_with_pyy = {"SST": 0.05, "PYY": 0.01, "PPY": 0.003, "GCG": 0.003, "HHEX": 0.0003}
    calls = bridge.annotate(_cells([([ENDOCRINE, delta_with_pyy], 40)], seed=13),
                            tissue="pancreas", qc=False, progress=False)
    labels = [str(x) for x in calls.column("label").to_pylist()]
    assert "type L enteroendocrine cell" not in labels, labels
    assert labels.count("pancreatic D cell") >= 34, labels

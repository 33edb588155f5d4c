"""The cerebellum is a tissue of its own in the context vocabulary.

Purkinje cells, cerebellar granule cells and Bergmann glia live only in the cerebellum
(UBERON:0002037); the glia, vessels and generic neuron classes are shared with the rest of
the brain.  A cortical sample (context "brain") therefore treats the cerebellar types as
foreign: a cortical interneuron that shows calbindin (CALB1) and ITPR1, as many do, is not
a Purkinje cell unless it shows what names one (PCP2, CA8).  A cerebellar sample, given or
inferred, keeps them."""

from __future__ import annotations

from _synthetic import synthetic_cells

import bridge
from bridge.engines._tissue_context import resolve_tissues
from bridge.matrix import CellMatrix

NEURON = {"Snap25": 0.006, "Syt1": 0.004, "Rbfox3": 0.002, "Stmn2": 0.004, "Celf4": 0.002}
GABAERGIC = {"Gad1": 0.006, "Gad2": 0.005, "Slc32a1": 0.002}
CALBINDIN_INTERNEURON = {"Calb1": 0.004, "Itpr1": 0.002}
PURKINJE = {"Pcp2": 0.01, "Car8": 0.004, "Calb1": 0.006, "Pcp4": 0.006, "Itpr1": 0.003,
            "Slc1a6": 0.002}
GRANULE = {"Gabra6": 0.006, "Cbln1": 0.004, "Cbln3": 0.004, "Neurod1": 0.002,
           "Pax6": 0.002, "Zic1": 0.002}
GLUTAMATERGIC = {"Slc17a7": 0.003}
LACKS = ("Pcp2", "Car8", "Pcp4", "Slc1a6", "Grid2")


def _cells(groups: list[tuple[list[dict[str, float]], int]], seed: int,
           lacks: tuple[str, ...] = ()) -> CellMatrix:
    return synthetic_cells(groups, seed=seed, lacks=lacks, species="mouse")


def _labels(matrix: CellMatrix, tissue: str) -> list[str]:
    calls = bridge.annotate(matrix, tissue=tissue, qc=False, progress=False)
    return [str(x) for x in calls.column("label").to_pylist()]


def test_the_vocabulary_names_the_cerebellum_apart_from_the_brain() -> None:
    assert resolve_tissues("cerebellum") == {"cerebellum"}
    assert resolve_tissues("UBERON:0002037") == {"cerebellum"}
    assert resolve_tissues("cerebral cortex") == {"brain"}


def test_calbindin_interneurons_of_the_cortex_are_not_purkinje_cells() -> None:
    cells = _cells([([NEURON, GABAERGIC, CALBINDIN_INTERNEURON], 30)], seed=5, lacks=LACKS)
    labels = _labels(cells, "cerebral cortex")
    assert "Purkinje cell" not in labels, labels
    assert labels.count("Unknown") <= 3, labels


def test_a_cerebellum_keeps_its_own_neurons() -> None:
    purkinje = _cells([([NEURON, GABAERGIC, PURKINJE], 30)], seed=6)
    assert _labels(purkinje, "cerebellum").count("Purkinje cell") >= 27
    assert _labels(purkinje, "brain;cerebellum").count("Purkinje cell") >= 27
    sample = _cells([([NEURON, GABAERGIC, PURKINJE], 30),
                     ([NEURON, GLUTAMATERGIC, GRANULE], 60)], seed=7)
    calls = bridge.annotate(sample, qc=False, progress=False)  # context inferred
    labels = calls.column("label").to_pylist()
    assert labels[:30].count("Purkinje cell") >= 27, labels[:30]
    assert labels[30:].count("cerebellar granule cell") >= 54, labels[30:]
    assert "cerebellum" in (calls.schema.metadata[b"scbridge.tissue"]).decode()

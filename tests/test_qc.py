"""QC metrics: exact values, pass / fail reasons, doublet scores and their graceful skips."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from bridge._qc import QCThresholds, doublet_scores, qc_metrics
from bridge.matrix import CellMatrix


def small_matrix() -> CellMatrix:
    # Real marker genes among the columns, so the embedded engine can annotate the matrix.
    markers = ["CD3D", "CD3G", "CD2", "LCK", "CD14", "FCGR3A", "MS4A1", "CD79A", "NKG7", "GNLY"]
    genes = ["MT-CO1", "MT-ND1", "CD3E", "LYZ", *markers, *[f"G{i}" for i in range(286)]]
    rng = np.random.default_rng(0)
    X = rng.poisson(0.05, size=(4, len(genes))).astype(float)
    X[0, :] = 0
    X[0, 4:300] = 3  # healthy: 888 counts, 296 genes, no mito
    X[1, :] = 0
    X[1, 0] = 500
    X[1, 4:204] = 2  # 900 counts, 201 genes, 500 mito -> mito fails
    X[2, :] = 0
    X[2, 4:54] = 1  # 50 counts, 50 genes -> both count and gene checks fail
    X[3, :] = 0
    return CellMatrix(sp.csr_matrix(X), ["a", "b", "c", "d"], genes)


def test_metrics_are_exact_and_reasons_listed() -> None:
    table = qc_metrics(small_matrix(), doublets=False)
    assert table.column("total_counts").to_pylist() == [888, 900, 50, 0]
    assert table.column("n_genes").to_pylist() == [296, 201, 50, 0]
    mito = table.column("mito_fraction").to_numpy()
    np.testing.assert_allclose(mito, [0, 500 / 900, 0, 0], rtol=1e-6)
    assert table.column("qc_pass").to_pylist() == [True, False, False, False]
    reasons = table.column("qc_reason").to_pylist()
    assert reasons[0] == ""
    assert reasons[1] == "mito_fraction>0.2"
    assert set(reasons[2].split(";")) == {"n_genes<200", "total_counts<500"}
    assert table.column("doublet_score").null_count == 4
    notes = json.loads(table.schema.metadata[b"scbridge.qc_thresholds"])
    assert notes["doublets"] == "not requested" and notes["mito_genes"] == 2


def test_thresholds_are_configurable() -> None:
    loose = QCThresholds(min_counts=10, min_genes=10, max_mito_fraction=0.9)
    table = qc_metrics(small_matrix(), thresholds=loose, doublets=False)
    assert table.column("qc_pass").to_pylist() == [True, True, True, False]


def test_stored_zeros_are_not_detected_genes() -> None:
    X = sp.csr_matrix((np.array([1.0, 0.0, 2.0]), np.array([0, 1, 2]), np.array([0, 3])),
                      shape=(1, 3))
    matrix = CellMatrix(X, ["a"], ["A", "B", "C"])
    assert qc_metrics(matrix, doublets=False).column("n_genes").to_pylist() == [2]


def test_lognormalised_input_is_recorded_not_judged_on_counts() -> None:
    matrix = small_matrix()
    lognorm = CellMatrix(matrix.X.log1p(), matrix.cells, matrix.genes, value_kind="lognorm")
    table = qc_metrics(lognorm)
    assert "total_counts" not in ";".join(table.column("qc_reason").to_pylist())
    notes = json.loads(table.schema.metadata[b"scbridge.qc_thresholds"])
    assert notes["doublets"] == "doublet scores need raw counts"


def test_doublet_scores_skip_with_a_reason_on_few_cells() -> None:
    scores, why = doublet_scores(small_matrix())
    assert scores is None and "too few cells" in why


def test_doublet_scores_find_simulated_doublets() -> None:
    rng = np.random.default_rng(0)
    n_genes, n_types, per_type = 400, 4, 120
    profiles = rng.gamma(0.3, 1.0, size=(n_types, n_genes))
    profiles /= profiles.sum(axis=1, keepdims=True)
    kinds = np.repeat(np.arange(n_types), per_type)
    singlets = rng.poisson(profiles[kinds] * 2000)
    a, b = rng.integers(0, per_type, 30), rng.integers(per_type, 2 * per_type, 30)
    doublets = singlets[a] + singlets[b]  # type 0 + type 1
    X = sp.csr_matrix(np.vstack([singlets, doublets]).astype(float))
    cells = [f"c{i}" for i in range(X.shape[0])]
    matrix = CellMatrix(X, cells, [f"G{i}" for i in range(n_genes)])
    scores, why = doublet_scores(matrix)
    assert scores is not None and why.startswith("scrublet")
    assert scores.shape == (X.shape[0],) and ((scores >= 0) & (scores <= 1)).all()
    assert scores[-30:].mean() > 3 * scores[:-30].mean()
    again, _ = doublet_scores(matrix)
    np.testing.assert_array_equal(scores, again)  # seeded
    table = qc_metrics(matrix)
    assert table.column("doublet_score").null_count == 0
    assert isinstance(table, pa.Table)


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_inputs(n: int) -> None:
    matrix = small_matrix().slice_cells(0, n)
    table = qc_metrics(matrix)
    assert table.num_rows == n


def test_scanpy_scrublet_scores_or_records_why_not() -> None:
    pytest.importorskip("scanpy")
    rng = np.random.default_rng(1)
    X = sp.csr_matrix(rng.poisson(0.3, size=(150, 300)).astype(float))
    matrix = CellMatrix(X, [f"c{i}" for i in range(150)], [f"G{i}" for i in range(300)])
    table = qc_metrics(matrix, doublets="scanpy")  # never raises: scores or a reason
    notes = json.loads(table.schema.metadata[b"scbridge.qc_thresholds"])
    if table.column("doublet_score").null_count:
        assert notes["doublets"].startswith("scanpy.pp.scrublet failed")
    else:
        assert notes["doublets"].startswith("scanpy")


# -- QC as its own step ------------------------------------------------------------------------
def test_qc_is_a_step_of_its_own_and_annotate_composes_it(tmp_path) -> None:
    import bridge
    from bridge.cli import main

    matrix = small_matrix()
    table = bridge.qc(matrix, doublets=False)
    assert table.column_names == ["cell", "total_counts", "n_genes", "mito_fraction",
                                  "doublet_score", "qc_pass", "qc_reason"]
    assert table.column("cell").to_pylist() == ["a", "b", "c", "d"]
    assert table.column("qc_pass").to_pylist() == [True, False, False, False]
    # A QC table computed earlier (and filtered on by the user) is attached, not recomputed.
    given = table.set_column(5, "qc_pass", pa.array([False] * 4))
    calls = bridge.annotate(matrix, qc=given, progress=False, min_gene_fraction=0.0)
    assert calls.column("qc_pass").to_pylist() == [False] * 4
    assert calls.column("cell").to_pylist() == ["a", "b", "c", "d"]
    # In another cell order, rows follow the cells, not the table's order.
    reversed_calls = bridge.annotate(matrix, qc=given.take([3, 2, 1, 0]), progress=False,
                                     min_gene_fraction=0.0)
    assert reversed_calls.column("total_counts").to_pylist() == [888, 900, 50, 0]
    # QC of another data set is refused, never attached silently.
    other = table.set_column(0, "cell", pa.array(["w", "x", "y", "z"]))
    with pytest.raises(bridge.InputError, match="no row for 4 of the 4 cells") as info:
        bridge.annotate(matrix, qc=other, progress=False, min_gene_fraction=0.0)
    assert info.value.code == "invalid_parameter"
    with pytest.raises(bridge.InputError, match="lacks"):
        bridge.annotate(matrix, qc=table.drop_columns(["qc_reason"]), progress=False)
    # The CLI step writes the same table, and annotate --qc-table attaches it.
    out = tmp_path / "qc.parquet"
    source = tmp_path / "m.arrow"
    bridge.write(matrix, source)
    assert main(["qc", str(source), "--out", str(out), "--doublets", "none", "--quiet"]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(out).select(table.column_names).equals(table)
    calls_file = tmp_path / "calls.parquet"
    assert main(["annotate", str(source), "--out", str(calls_file), "--qc-table", str(out),
                 "--quiet", "--min-gene-fraction", "0"]) == 0
    assert pq.read_table(calls_file).column("n_genes").to_pylist() == [296, 201, 50, 0]

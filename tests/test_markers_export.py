"""bridge.markers: one-vs-rest marker genes per label, checked against scipy's tests."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from scipy import stats

import bridge
from bridge._contract import MARKERS_SCHEMA, ChunkCalls, chunk_table
from bridge.matrix import CellMatrix
from bridge.numerics import benjamini_hochberg, log_normalize

LABELS = ("alpha", "beta", "gamma")
CELLS_PER_LABEL = 40
N_GENES = 120


def planted_counts(seed: int = 0) -> CellMatrix:
    """Three labels; label k expresses genes k*10 .. k*10+9 about 8x higher than the rest."""
    rng = np.random.default_rng(seed)
    n_cells = CELLS_PER_LABEL * len(LABELS)
    rate = 0.5 + rng.gamma(2.0, 0.5, size=N_GENES)[None, :].repeat(n_cells, axis=0)
    label = np.repeat(np.arange(len(LABELS)), CELLS_PER_LABEL)
    for k in range(len(LABELS)):
        rate[label == k, k * 10: k * 10 + 10] *= 8
    counts = rng.poisson(rate).astype(np.float32)
    cells = [f"c{i}" for i in range(n_cells)]
    obs = pa.table({"truth": pa.array([LABELS[k] for k in label]),
                    "other": pa.array(["x" if i % 2 else "y" for i in range(n_cells)])})
    return CellMatrix(sp.csr_matrix(counts), cells, [f"G{j}" for j in range(N_GENES)],
                      obs=obs, source="planted")


@pytest.fixture(scope="module")
def matrix() -> CellMatrix:
    return planted_counts()


@pytest.fixture(scope="module")
def calls(matrix: CellMatrix) -> pa.Table:
    return pa.table({"cell": matrix.cells.tolist(), "label": matrix.obs.column("truth")})


def test_schema_and_planted_markers_first(matrix: CellMatrix, calls: pa.Table) -> None:
    table = bridge.rank_marker_genes(matrix, calls, top_n=10)
    assert table.schema.remove_metadata() == MARKERS_SCHEMA
    assert table.schema.metadata[b"scbridge.method"] == b"t-test"
    df = table.to_pandas()
    assert sorted(df.label.unique()) == list(LABELS)
    for k, name in enumerate(LABELS):
        rows = df[df.label == name]
        assert len(rows) == 10
        assert set(rows.gene) == {f"G{j}" for j in range(k * 10, k * 10 + 10)}
        assert (rows.score.diff().dropna() <= 0).all()  # best first
        assert (rows.log2_fold_change > 2).all()  # planted 8x
        assert (rows.p_value_adjusted >= rows.p_value).all()
        assert (rows.p_value_adjusted < 1e-6).all()
        assert (rows.fraction_in_label >= rows.fraction_in_rest).all()
        assert rows.fraction_in_label.between(0, 1).all()


def test_t_statistics_match_scipy_welch(matrix: CellMatrix, calls: pa.Table) -> None:
    table = bridge.rank_marker_genes(matrix, calls, top_n=N_GENES, only_up=False).to_pandas()
    dense = log_normalize(matrix.X, matrix.value_kind).toarray().astype(np.float64)
    truth = np.asarray(matrix.obs.column("truth").to_pylist())
    for name in LABELS:
        rows = table[table.label == name].set_index("gene")
        for gene in ("G0", "G15", "G27", "G100"):
            j = int(gene[1:])
            expected = stats.ttest_ind(dense[truth == name, j], dense[truth != name, j],
                                       equal_var=False)
            assert rows.loc[gene, "score"] == pytest.approx(expected.statistic, rel=1e-4)
            assert rows.loc[gene, "p_value"] == pytest.approx(expected.pvalue, rel=1e-3,
                                                              abs=1e-300)


def test_wilcoxon_matches_scipy_mann_whitney(matrix: CellMatrix, calls: pa.Table) -> None:
    table = bridge.rank_marker_genes(matrix, calls, top_n=N_GENES, method="wilcoxon",
                           only_up=False).to_pandas()
    assert set(table.gene[table.label == "beta"].head(10)) == {f"G{j}" for j in range(10, 20)}
    dense = log_normalize(matrix.X, matrix.value_kind).toarray().astype(np.float64)
    truth = np.asarray(matrix.obs.column("truth").to_pylist())
    rows = table[table.label == "gamma"].set_index("gene")
    for gene in ("G3", "G25", "G61", "G119"):
        j = int(gene[1:])
        expected = stats.mannwhitneyu(dense[truth == "gamma", j], dense[truth != "gamma", j],
                                      use_continuity=False, method="asymptotic")
        assert rows.loc[gene, "p_value"] == pytest.approx(expected.pvalue, rel=1e-6)


def test_benjamini_hochberg_matches_scipy() -> None:
    p = np.random.default_rng(1).uniform(0, 0.1, 200)
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p))
    assert benjamini_hochberg(np.array([])).size == 0


def test_calls_table_label_column_and_n_genes(matrix: CellMatrix) -> None:
    truth = matrix.obs.column("truth").to_pylist()
    calls = chunk_table(matrix.cells, ChunkCalls(labels=truth, confidence=np.ones(len(truth))))
    calls = calls.append_column("label_smoothed", pa.array(truth[::-1]))
    from_calls = bridge.rank_marker_genes(matrix, calls, n_genes=3)
    assert from_calls.num_rows == 3 * len(LABELS)
    # A different label column gives different groups (here: reversed labels).
    other = bridge.rank_marker_genes(matrix, calls, label_column="label_smoothed", n_genes=3)
    assert other.column("gene").to_pylist() != from_calls.column("gene").to_pylist()
    # A dict of columns and polars / pandas conversions just work.
    as_dict = bridge.rank_marker_genes(matrix, {"cell": matrix.cells.tolist(), "label": truth}, n_genes=3)
    assert as_dict.equals(from_calls)
    import polars as pl

    assert pl.from_arrow(from_calls).shape == (9, len(MARKERS_SCHEMA))


def test_reads_files_and_lognorm_input(matrix: CellMatrix, calls: pa.Table,
                                       tmp_path: Path) -> None:
    path = bridge.write(matrix, tmp_path / "m.arrow")
    from_file = bridge.rank_marker_genes(path, calls, top_n=5)
    assert from_file.equals(bridge.rank_marker_genes(matrix, calls, top_n=5))
    lognorm = CellMatrix(log_normalize(matrix.X, matrix.value_kind), matrix.cells, matrix.genes,
                         value_kind="lognorm")
    assert bridge.rank_marker_genes(lognorm, calls, top_n=5).column("gene").equals(
        from_file.column("gene"))


def test_cells_missing_from_calls_are_left_out(matrix: CellMatrix, calls: pa.Table,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bridge._rank_markers"):
        table = bridge.rank_marker_genes(matrix, calls.slice(0, 100), top_n=5)
    assert "20 of 120 cells have no call" in caplog.text
    assert sorted(set(table.column("label").to_pylist())) == list(LABELS)


def test_small_labels_are_skipped(matrix: CellMatrix, caplog: pytest.LogCaptureFixture) -> None:
    labels = matrix.obs.column("truth").to_pylist()
    labels[0] = "rare"
    with caplog.at_level(logging.WARNING, logger="bridge._rank_markers"):
        table = bridge.rank_marker_genes(matrix, {"cell": matrix.cells.tolist(), "label": labels},
                               min_cells=2)
    assert "'rare' has 1 cells" in caplog.text
    assert "rare" not in table.column("label").to_pylist()


def test_errors(matrix: CellMatrix, calls: pa.Table) -> None:
    with pytest.raises(bridge.NotFoundError, match="calls need columns 'cell' and 'label'"):
        bridge.rank_marker_genes(matrix, calls.drop_columns(["label"]))
    with pytest.raises(bridge.NotFoundError, match="'cluster'"):
        bridge.rank_marker_genes(matrix, calls, label_column="cluster")
    with pytest.raises(bridge.InputError, match="none of the 2 cells"):
        bridge.rank_marker_genes(matrix, {"cell": ["x", "y"], "label": ["a", "b"]})
    with pytest.raises(bridge.InputError, match="at least 2 labels"):
        bridge.rank_marker_genes(matrix, {"cell": matrix.cells.tolist(), "label": ["a"] * 120})
    with pytest.raises(bridge.InputError, match="method must be"):
        bridge.rank_marker_genes(matrix, calls, method="logreg")  # type: ignore[arg-type]
    with pytest.raises(bridge.InputError, match="top_n must be at least 1"):
        bridge.rank_marker_genes(matrix, calls, top_n=0)


def test_known_blood_markers_on_pbmc68k_reduced() -> None:
    sc = pytest.importorskip("scanpy")
    adata = sc.datasets.pbmc68k_reduced()
    matrix = bridge.read(adata, layer="raw", value_kind="lognorm")
    calls = {"cell": matrix.cells.tolist(),
             "label": matrix.obs.column("bulk_labels").to_pylist()}
    table = bridge.rank_marker_genes(matrix, calls, top_n=25, method="wilcoxon").to_pandas()
    top = {name: set(g.gene) for name, g in table.groupby("label")}
    assert top["CD19+ B"] & {"CD79A", "CD79B", "MS4A1", "CD74"}
    assert top["CD56+ NK"] & {"GNLY", "NKG7", "GZMB", "PRF1"}
    assert top["CD14+ Monocyte"] & {"S100A8", "S100A9", "LYZ", "FCN1", "CST3"}


def test_wilcoxon_with_many_ties_matches_scipy(matrix: CellMatrix, calls: pa.Table) -> None:
    # Small integers used as values: ties among the non-zero values too, not only zeros.
    tied = CellMatrix(matrix.X, matrix.cells, matrix.genes, value_kind="lognorm")
    table = bridge.rank_marker_genes(tied, calls, top_n=N_GENES, method="wilcoxon",
                           only_up=False).to_pandas()
    dense = matrix.X.toarray().astype(np.float64)
    truth = np.asarray(matrix.obs.column("truth").to_pylist())
    rows = table[table.label == "alpha"].set_index("gene")
    for gene in ("G1", "G12", "G50", "G99"):
        j = int(gene[1:])
        expected = stats.mannwhitneyu(dense[truth == "alpha", j], dense[truth != "alpha", j],
                                      use_continuity=False, method="asymptotic")
        assert rows.loc[gene, "p_value"] == pytest.approx(expected.pvalue, rel=1e-6)


def test_wilcoxon_refuses_negative_values(matrix: CellMatrix, calls: pa.Table) -> None:
    scaled = log_normalize(matrix.X, matrix.value_kind)
    scaled.data -= 10.0
    negative = CellMatrix(scaled, matrix.cells, matrix.genes, value_kind="lognorm",
                          validate=False)
    with pytest.raises(bridge.InputError, match="needs non-negative expression"):
        bridge.rank_marker_genes(negative, calls, method="wilcoxon")

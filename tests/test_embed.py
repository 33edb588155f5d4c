"""bridge.embed: a deterministic sparse PCA embedding table, checked against a dense SVD."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

import bridge
from bridge._embed import embedding_array, highly_variable_genes, layout_2d
from bridge.matrix import CellMatrix
from bridge.numerics import log_normalize


def three_groups(seed: int = 0, n_per_group: int = 50, n_genes: int = 300,
                 planted: int = 20) -> CellMatrix:
    rng = np.random.default_rng(seed)
    rate = 0.5 + rng.gamma(2.0, 0.4, size=n_genes)[None, :].repeat(3 * n_per_group, axis=0)
    group = np.repeat(np.arange(3), n_per_group)
    for k in range(3):
        rate[group == k, k * planted: (k + 1) * planted] *= 10
    counts = rng.poisson(rate).astype(np.float32)
    return CellMatrix(sp.csr_matrix(counts), [f"cell{i}" for i in range(len(group))],
                      [f"G{j}" for j in range(n_genes)],
                      obs=pa.table({"group": pa.array(group)}), source="three groups")


@pytest.fixture(scope="module")
def matrix() -> CellMatrix:
    return three_groups()


def test_table_schema_and_cell_order(matrix: CellMatrix) -> None:
    table = bridge.embed(matrix, n_components=7)
    assert table.schema.field("cell").type == pa.string()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 7)
    assert table.column("cell").to_pylist() == matrix.cells.tolist()
    assert table.schema.metadata[b"scbridge.embedding"] == b"pca"
    assert embedding_array(table).shape == (matrix.n_cells, 7)
    assert table.to_pandas().shape == (matrix.n_cells, 2)
    import polars as pl

    assert pl.from_arrow(table).shape == (matrix.n_cells, 2)


def test_same_input_same_embedding(matrix: CellMatrix) -> None:
    first = bridge.embed(matrix, n_components=5)
    again = bridge.embed(three_groups(), n_components=5)
    assert first.equals(again)


def test_matches_dense_pca(matrix: CellMatrix) -> None:
    table = bridge.embed(matrix, n_components=4, n_top_genes=100)
    Xn = log_normalize(matrix.X, matrix.value_kind)
    dense = Xn[:, highly_variable_genes(Xn, 100)].toarray().astype(np.float64)
    centred = dense - dense.mean(axis=0)
    sd = dense.std(axis=0)
    sd[sd < 1e-8] = 1.0
    u, s, _ = np.linalg.svd(centred / sd, full_matrices=False)
    expected = u[:, :4] * s[:4]
    got = embedding_array(table).astype(np.float64)
    for k in range(2):  # the well-separated components; later ones may share eigenvalues
        np.testing.assert_allclose(np.abs(got[:, k]), np.abs(expected[:, k]), rtol=1e-3,
                                   atol=1e-3)


def test_groups_separate(matrix: CellMatrix) -> None:
    coords = embedding_array(bridge.embed(matrix, n_components=3))
    group = np.asarray(matrix.obs.column("group").to_pylist())
    centroids = np.stack([coords[group == k].mean(0) for k in range(3)])
    nearest = np.argmin(((coords[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (nearest == group).mean() == 1.0


def test_highly_variable_genes_find_planted_genes() -> None:
    # Realistic proportions: 30 group-specific genes among 3,000.
    matrix = three_groups(n_genes=3000, planted=10)
    chosen = highly_variable_genes(log_normalize(matrix.X, matrix.value_kind), n_top=100)
    assert len(chosen) == 100
    assert set(range(30)) <= set(chosen.tolist())


def test_reads_a_file(matrix: CellMatrix, tmp_path: Path) -> None:
    path = bridge.write(matrix, tmp_path / "m.arrow")
    from_file = bridge.embed(path, n_components=3)
    in_memory = bridge.embed(matrix, n_components=3)
    assert from_file.column("cell").equals(in_memory.column("cell"))
    np.testing.assert_array_equal(embedding_array(from_file), embedding_array(in_memory))


def test_errors(matrix: CellMatrix) -> None:
    with pytest.raises(bridge.InputError, match="n_components must be at least 1"):
        bridge.embed(matrix, n_components=0)
    tiny = matrix.slice_cells(0, 6)
    with pytest.raises(bridge.InputError, match="Ask for at most 5"):
        bridge.embed(tiny, n_components=10)


def test_layout_2d_methods(matrix: CellMatrix) -> None:
    table = bridge.embed(matrix, n_components=5)
    pca, name = layout_2d(table, method="pca")
    assert name == "PC 1 / PC 2"
    np.testing.assert_array_equal(pca, embedding_array(table)[:, :2])
    tsne, name = layout_2d(table, method="tsne")
    assert tsne.shape == (matrix.n_cells, 2)
    assert name == "t-SNE"
    few, name = layout_2d(table.slice(0, 10))  # too few cells for UMAP: first components
    assert name == "PC 1 / PC 2"
    assert few.shape == (10, 2)
    one, _ = layout_2d(np.ones((4, 1)), method="pca")
    assert one.shape == (4, 2)
    with pytest.raises(bridge.InputError, match="layout method"):
        layout_2d(table, method="mds")  # type: ignore[arg-type]


def test_bridge_embed_stays_callable_after_importing_the_module() -> None:
    # Importing the module that defines bridge.embed must not shadow the function.
    code = ("import bridge._embed, bridge, numpy as np, scipy.sparse as sp\n"
            "m = bridge.CellMatrix(sp.csr_matrix(np.eye(8, 6) * 3 + 1), "
            "[f'c{i}' for i in range(8)], [f'g{j}' for j in range(6)])\n"
            "print(bridge.embed(m, n_components=2).num_rows)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "8"

"""The kNN graph and 2-D layout (bridge._layout), shared once per data set (bridge._cellmap)
by embed, smoothing, the report and write-back (Seurat DimReduc, SCE reducedDim, AnnData obsm)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp
from test_marker_engine import synthetic_matrix

import bridge
from bridge import _cellmap, _layout
from bridge._smoothing import smooth_labels
from bridge.cli import main
from bridge.matrix import CellMatrix

from conftest import run_r

ROOT = Path(__file__).resolve().parents[1]
needs_numba = pytest.mark.skipif(not _layout.has_numba(),
                                 reason="numba is not installed (pip install 'scbridge[layout]')")


def blobs(n: int, dim: int = 8, centres: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = rng.normal(scale=6.0, size=(centres, dim))
    return (middle[rng.integers(0, centres, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def brute_force(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows by a full sort of all distances (float64)."""
    X = points.astype(np.float64)
    d = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.sqrt(np.take_along_axis(d, order, axis=1))


def counts_with_groups(n_per_group: int = 60, n_genes: int = 200, seed: int = 0) -> CellMatrix:
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(4), n_per_group)
    rate = np.full((len(group), n_genes), 0.6)
    for g in range(4):
        rate[group == g, g * 15:(g + 1) * 15] *= 12
    X = sp.csr_matrix(rng.poisson(rate).astype(np.float32))
    return CellMatrix(X, [f"c{i}" for i in range(len(group))], [f"G{j}" for j in range(n_genes)],
                      obs=pa.table({"group": pa.array(group)}), source="four groups")


# -- kNN graph ------------------------------------------------------------------------------
@needs_numba
def test_exact_graph_matches_a_full_sort() -> None:
    points = blobs(500)
    graph = _layout.nearest_neighbours(points, 12, exact=True)
    want_idx, want_dist = brute_force(points, 11)
    assert graph.indices.shape == graph.distances.shape == (500, 12)
    assert graph.indices.dtype == np.int32 and graph.distances.dtype == np.float32
    assert graph.exact and graph.k == 12
    np.testing.assert_array_equal(graph.indices[:, 0], np.arange(500))  # itself first
    np.testing.assert_array_equal(graph.distances[:, 0], 0)
    np.testing.assert_array_equal(graph.indices[:, 1:], want_idx)
    np.testing.assert_allclose(graph.distances[:, 1:], want_dist, rtol=1e-3, atol=1e-3)
    # The numpy path (used without numba) finds the same neighbours.
    idx, _ = _layout._exact_numpy(points, 11)
    np.testing.assert_array_equal(idx, want_idx)


@needs_numba
def test_approximate_graph_finds_nearly_all_neighbours_and_is_fixed_by_its_seed() -> None:
    points = blobs(_layout.EXACT_MAX_CELLS + 2000, dim=10, centres=12)
    fast = _layout.nearest_neighbours(points, 15)
    assert not fast.exact
    exact = _layout.nearest_neighbours(points, 15, exact=True)
    recall = (fast.indices[:, 1:, None] == exact.indices[:, None, 1:]).any(-1).mean()
    assert recall >= 0.97, recall
    again = _layout.nearest_neighbours(points, 15)
    np.testing.assert_array_equal(fast.indices, again.indices)


def test_graph_edge_cases() -> None:
    one = _layout.nearest_neighbours(np.zeros((1, 3)), 15)
    assert one.indices.tolist() == [[0]]
    empty = _layout.nearest_neighbours(np.zeros((0, 3)), 15)
    assert empty.indices.shape[0] == 0
    graph = _layout.nearest_neighbours(blobs(40), 15, exact=True)
    assert graph.head(5).indices.shape == (40, 5)
    with pytest.raises(bridge.InputError, match="cannot cut it to 16"):
        graph.head(16)


# -- layout ---------------------------------------------------------------------------------
@needs_numba
def test_layout_is_fixed_by_its_seed_whatever_the_thread_count(monkeypatch) -> None:
    import numba

    points = blobs(600)
    graph = _layout.nearest_neighbours(points, 15)
    first = _layout.umap_layout(graph, points[:, :2], seed=3, n_epochs=60)
    assert first.shape == (600, 2) and first.dtype == np.float32
    np.testing.assert_array_equal(first, _layout.umap_layout(graph, points[:, :2], seed=3,
                                                             n_epochs=60))
    assert not np.array_equal(first, _layout.umap_layout(graph, points[:, :2], seed=4,
                                                         n_epochs=60))
    # Parallel epochs: each cell moves only itself against the epoch's starting positions.
    monkeypatch.setattr(_layout, "_PARALLEL_MIN_CELLS", 0)
    before = numba.get_num_threads()
    results = []
    for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
        numba.set_num_threads(threads)
        results.append(_layout.umap_layout(graph, points[:, :2], seed=3, n_epochs=60))
    numba.set_num_threads(before)
    for other in results:
        np.testing.assert_array_equal(first, other)


@needs_numba
def test_layout_keeps_neighbourhoods_of_real_pbmcs() -> None:
    sc = pytest.importorskip("scanpy")
    adata = sc.datasets.pbmc68k_reduced()  # ships with scanpy: 700 PBMCs, its PCA and UMAP
    pca = adata.obsm["X_pca"][:, :30]
    graph = _layout.nearest_neighbours(pca, 16, exact=True)
    ours = _layout.umap_layout(graph.head(15), pca[:, :2], seed=0)
    ours_score = _layout.neighbourhood_preservation(pca, ours, 15, graph=graph)
    scanpy_score = _layout.neighbourhood_preservation(pca, adata.obsm["X_umap"], 15, graph=graph)
    random_score = _layout.neighbourhood_preservation(
        pca, np.random.default_rng(0).normal(size=(len(pca), 2)), 15, graph=graph)
    assert ours_score >= 0.38, ours_score  # measured 0.437; the UMAP shipped with it 0.470
    assert ours_score >= scanpy_score - 0.05
    assert random_score < 0.05
    # Cells of one louvain cluster stay together: most 2-D neighbours share it.
    clusters = adata.obs["louvain"].to_numpy()
    low = _layout.nearest_neighbours(ours, 11, exact=True).indices[:, 1:]
    assert (clusters[low] == clusters[:, None]).mean() >= 0.85


def test_preservation_score_bounds() -> None:
    points = blobs(300, dim=2)
    assert _layout.neighbourhood_preservation(points, points, 10) == 1.0
    assert _layout.neighbourhood_preservation(points, points * 3 + 1, 10) == 1.0
    scrambled = np.random.default_rng(1).permutation(points)
    assert _layout.neighbourhood_preservation(points, scrambled, 10) < 0.2


def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(bridge.InputError, match="2-D array.*PCA scores"):
        _layout.nearest_neighbours(np.zeros(10), 5)
    with pytest.raises(bridge.InputError, match="numeric"):
        _layout.nearest_neighbours(np.array([["a", "b"]]), 5)
    bad = blobs(20)
    bad[7, 1] = np.nan
    with pytest.raises(bridge.InputError, match="NaN or infinite values.*row 7"):
        _layout.nearest_neighbours(bad, 5)
    with pytest.raises(bridge.InputError, match="positive number of neighbours"):
        _layout.nearest_neighbours(blobs(20), 0)
    graph = _layout.nearest_neighbours(blobs(20), 5, exact=True)
    if _layout.has_numba():
        with pytest.raises(bridge.InputError, match=r"init must be 20 x 2"):
            _layout.umap_layout(graph, np.zeros((19, 2)))
        with pytest.raises(bridge.InputError, match="n_epochs must be at least 1"):
            _layout.umap_layout(graph, np.zeros((20, 2)), n_epochs=0)
    with pytest.raises(bridge.InputError, match="layout method must be one of"):
        _cellmap.layout_points(blobs(20), method="mds")
    with pytest.raises(bridge.InputError, match="points have 20 cells, coords 19"):
        _layout.neighbourhood_preservation(blobs(20), np.zeros((19, 2)), graph=graph)


# -- one computation per data set -----------------------------------------------------------
@needs_numba
def test_embed_layout_column_shared_with_smoothing_and_the_report(monkeypatch,
                                                                  tmp_path: Path) -> None:
    counts = {"graph": 0, "layout": 0}
    search, lay_out = _layout.nearest_neighbours, _layout.umap_layout

    def counted_search(*args, **kwargs):
        counts["graph"] += 1
        return search(*args, **kwargs)

    def counted_layout(*args, **kwargs):
        counts["layout"] += 1
        return lay_out(*args, **kwargs)

    monkeypatch.setattr(_layout, "nearest_neighbours", counted_search)
    monkeypatch.setattr(_layout, "umap_layout", counted_layout)
    matrix = counts_with_groups()
    data_before = matrix.X.data.copy()
    table = bridge.embed(matrix, n_components=30, layout="auto")
    assert table.column_names == ["cell", "embedding", "layout"]
    assert table.schema.field("layout").type == pa.list_(pa.float32(), 2)
    assert table.schema.metadata[b"scbridge.layout"] == b"umap-fast"
    coords = table.column("layout").combine_chunks().values.to_numpy().reshape(-1, 2)
    assert np.isfinite(coords).all() and coords.shape == (matrix.n_cells, 2)
    # The four planted groups are apart in the picture.
    group = np.asarray(matrix.obs.column("group"))
    low = _layout.nearest_neighbours(coords, 11, exact=True).indices[:, 1:]
    assert (group[low] == group[:, None]).mean() >= 0.95
    assert counts == {"graph": 2, "layout": 1}  # the cell graph, and the check just above
    # Smoothing, the report and a second embed reuse the same graph and layout.
    calls = pa.table({"cell": matrix.cells.tolist(), "label": [f"type {g}" for g in group],
                      "confidence": np.full(matrix.n_cells, 0.8, np.float32)})
    smoothed = smooth_labels(calls, matrix=matrix, k="knn")
    assert smoothed.column("label_smoothed").to_pylist() == calls.column("label").to_pylist()
    again = bridge.embed(matrix, n_components=30, layout="auto")
    assert again.equals(table)
    page = _write_report(tmp_path, matrix, calls)
    assert 'id="embedding"' in page and "UMAP of the PCA embedding" in page
    assert counts == {"graph": 2, "layout": 1}
    np.testing.assert_array_equal(matrix.X.data, data_before)  # the input is never changed


def _write_report(folder: Path, matrix: CellMatrix, calls: pa.Table) -> str:
    from bridge._report import write_report

    return write_report(folder / "r.html", matrix, calls).read_text()


def test_embed_layout_errors_and_pca_method() -> None:
    matrix = counts_with_groups(n_per_group=10)
    pca = bridge.embed(matrix, n_components=5, layout="pca")
    assert pca.schema.metadata[b"scbridge.layout"] == b"pca"
    got = pca.column("layout").combine_chunks().values.to_numpy().reshape(-1, 2)
    first_two = pca.column("embedding").combine_chunks().values.to_numpy().reshape(-1, 5)[:, :2]
    np.testing.assert_array_equal(got, first_two)
    with pytest.raises(bridge.InputError, match="layout method must be one of"):
        bridge.embed(matrix, n_components=5, layout="mds")
    tiny = matrix.slice_cells(0, 2)
    with pytest.raises(bridge.InputError, match="too few for a 2-D layout"):
        bridge.embed(tiny, n_components=1, layout="auto")


# -- write-back -----------------------------------------------------------------------------
def _layout_of(matrix: CellMatrix, method: str = "auto") -> pa.Table:
    table = _cellmap.layout_table(matrix, method=method)
    assert table is not None
    return table


def test_write_back_h5ad_obsm(tmp_path: Path) -> None:
    matrix = counts_with_groups(n_per_group=15)
    source = bridge.write(matrix, tmp_path / "in.h5ad")
    table = _layout_of(bridge.read(source))
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    out = bridge.write_back(source, None, tmp_path / "out.h5ad", layout=shuffled)
    back = anndata.read_h5ad(out)
    key = "X_scbridge_umap" if _layout.has_numba() else "X_scbridge_pca"
    want = table.column("layout").combine_chunks().values.to_numpy().reshape(-1, 2)
    np.testing.assert_array_equal(back.obsm[key], want)  # obs order, whatever the table's
    assert "X_scbridge_umap" not in anndata.read_h5ad(source).obsm  # source untouched
    with pytest.raises(bridge.InputError, match=f"already has obsm\\['{key}'\\]"):
        bridge.write_back(out, None, tmp_path / "again.h5ad", layout=table)
    bridge.write_back(out, None, tmp_path / "again.h5ad", layout=table, overwrite=True)
    with pytest.raises(bridge.InputError, match="1 cell\\(s\\) of .* have no layout position"):
        bridge.write_back(source, None, tmp_path / "x.h5ad", layout=table.slice(1))
    with pytest.raises(bridge.InputError, match="'cell' and 'layout' columns"):
        bridge.write_back(source, None, tmp_path / "x.h5ad", layout=table.drop_columns("layout"))
    with pytest.raises(bridge.InputError, match="pass columns, a layout, or both"):
        bridge.write_back(source, None, tmp_path / "x.h5ad")


@pytest.mark.needs_r
@pytest.mark.parametrize("fixture", ["seurat_v4.rds", "seurat_v5_split.rds", "sce_dgc.rds"])
def test_write_back_rds_reduction_read_by_r(r_fixtures: Path, tmp_path: Path,
                                            fixture: str) -> None:
    source = r_fixtures / fixture
    table = _layout_of(bridge.read(source))
    kind = "umap" if _layout.has_numba() else "pca"
    before = source.read_bytes()
    out = bridge.write_back(source, None, tmp_path / "out.rds", layout=table.take(
        np.arange(table.num_rows)[::-1]))
    result = run_r(f"""
        suppressMessages({{library(SeuratObject); library(SingleCellExperiment)}})
        a <- readRDS("{source}")
        b <- readRDS("{out}")
        if (inherits(b, "Seurat")) {{
          e <- Embeddings(b[["scbridge_{kind}"]])
          cat(DefaultAssay(b[["scbridge_{kind}"]]), Key(b[["scbridge_{kind}"]]), "\\n")
          old <- attr(a, "reductions")
          kept <- all(mapply(identical, old, attr(b, "reductions")[names(old)]))
          added <- setdiff(names(attr(b, "reductions")), names(old))
          stripped <- b; attr(stripped, "reductions") <- old
          cat(kept, added, "\n")
        }} else {{
          e <- reducedDim(b, "SCBRIDGE_{kind.upper()}")
          cat("sce", paste(reducedDimNames(b), collapse = ","), "\\n")
          stripped <- b; reducedDim(stripped, "SCBRIDGE_{kind.upper()}") <- NULL
          cat(TRUE, "SCBRIDGE_{kind.upper()}", "\n")
        }}
        cells <- if (inherits(b, "Seurat")) rownames(attr(b, "meta.data")) else colnames(b)
        cat(identical(rownames(e), cells), paste(colnames(e), collapse = ","), "\\n")
        cat(identical(a, stripped), "\\n")
        cat(sprintf("%.9g", t(e)), "\\n")
    """).splitlines()
    if fixture.startswith("seurat"):
        assert result[0].split() == ["RNA", f"scbridge{kind}_"]
    else:
        assert result[0].split() == ["sce", f"SCBRIDGE_{kind.upper()}"]
    name = f"scbridge_{kind}" if fixture.startswith("seurat") else f"SCBRIDGE_{kind.upper()}"
    assert result[1].split() == ["TRUE", name], result  # earlier reductions kept, one added
    assert result[2].split() == ["TRUE", f"scbridge{kind}_1,scbridge{kind}_2"], result
    assert result[3].strip() == "TRUE", "the object changed beyond the new reduction"
    want = table.column("layout").combine_chunks().values.to_numpy()
    np.testing.assert_allclose(np.array(result[4].split(), float), want, rtol=1e-6)
    assert source.read_bytes() == before


@needs_numba
def test_cli_report_and_write_back_share_one_layout(monkeypatch, tmp_path: Path) -> None:
    runs = []
    lay_out = _layout.umap_layout

    def counted(*args, **kwargs):
        runs.append(1)
        return lay_out(*args, **kwargs)

    monkeypatch.setattr(_layout, "umap_layout", counted)
    matrix, _ = synthetic_matrix(["naive B cell", "classical monocyte", "natural killer cell"], n_per_type=20)
    source = bridge.write(matrix, tmp_path / "in.h5ad")
    back, report = tmp_path / "out.h5ad", tmp_path / "r.html"
    assert main(["annotate", str(source), "--out", str(tmp_path / "c.parquet"), "--quiet",
                 "--report", str(report), "--write-back", str(back)]) == 0
    assert len(runs) == 1
    obsm = anndata.read_h5ad(back).obsm["X_scbridge_umap"]
    assert obsm.shape == (matrix.n_cells, 2)
    assert 'id="embedding"' in report.read_text()
    plain = tmp_path / "plain.h5ad"
    assert main(["annotate", str(source), "--out", str(tmp_path / "c.parquet"), "--quiet",
                 "--write-back", str(plain), "--no-layout"]) == 0
    assert "X_scbridge_umap" not in anndata.read_h5ad(plain).obsm
    assert "cell_type" in anndata.read_h5ad(plain).obs


# -- numba's cache --------------------------------------------------------------------------
CHILD = """
import json, bridge._layout as L
cache = L.warm_kernels()
k = L._kernels()
hits = sum(sum(getattr(k, n).stats.cache_hits.values()) for n in k.__all__)
misses = sum(sum(getattr(k, n).stats.cache_misses.values()) for n in k.__all__)
print(json.dumps({"path": cache["path"], "warm": cache["warm"], "hits": hits,
                  "misses": misses}))
"""


def _run_child(site: Path, env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"},
                          cwd=site)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _read_only_copy(folder: Path) -> Path:
    """bridge/ copied to folder/site with nothing writable in it, as a system site-packages."""
    site = folder / "site"
    shutil.copytree(ROOT / "bridge", site / "bridge", ignore=shutil.ignore_patterns("__pycache__"))
    # Root may write through permission bits, so a file where __pycache__ would go makes
    # numba's in-tree cache unusable for root as well.
    (site / "bridge" / "__pycache__").write_text("not a folder")
    for path in [*site.rglob("*"), site]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return site


@pytest.mark.slow
@needs_numba
def test_kernels_compile_once_into_the_user_cache_when_the_package_is_read_only(
        tmp_path: Path) -> None:
    site = _read_only_copy(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CACHE")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "user-cache")
    try:
        first = _run_child(site, env)
        assert str(first["path"]).startswith(str(tmp_path / "user-cache" / "numba"))
        assert first["misses"] > 0 and first["warm"] is True  # compiled, then stored
        second = _run_child(site, env)  # a new process: loads, compiles nothing
        assert second["misses"] == 0 and second["hits"] > 0
        # No writable user cache either (a read-only image): a private temporary folder.
        env["XDG_CACHE_HOME"] = str(site / "bridge" / "__pycache__")  # a file: unusable
        env["TMPDIR"] = str(tmp_path / "tmp")
        (tmp_path / "tmp").mkdir()
        third = _run_child(site, env)
        assert str(third["path"]).startswith(str(tmp_path / "tmp" / "scbridge-numba-"))
        assert _run_child(site, env)["misses"] == 0
    finally:
        for path in [site, *site.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_without_numba_the_picture_falls_back_to_pca(tmp_path: Path) -> None:
    """A fresh interpreter in which numba cannot be imported: exact kNN in numpy for
    smoothing, the first two components for the layout, each with a clear message."""
    code = """
import sys, logging, json
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "numba" or name.startswith("numba."):
            raise ImportError("numba blocked for this test")
sys.meta_path.insert(0, Block())
import importlib.util
real = importlib.util.find_spec
importlib.util.find_spec = lambda n, *a: None if n == "numba" else real(n, *a)
import numpy as np, scipy.sparse as sp, bridge
from bridge import _layout
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
rng = np.random.default_rng(0)
X = sp.csr_matrix(rng.poisson(1.0, (80, 50)).astype(np.float32))
m = bridge.CellMatrix(X, [f"c{i}" for i in range(80)], [f"g{j}" for j in range(50)])
t = bridge.embed(m, n_components=5, layout="auto")
g = _layout.nearest_neighbours(rng.normal(size=(30, 4)), 5, exact=False)
try:
    _layout.umap_layout(g, np.zeros((30, 2)))
except bridge.MissingDependencyError as e:
    err = str(e)
print(json.dumps({"method": t.schema.metadata[b"scbridge.layout"].decode(),
                  "exact": g.exact, "error": err}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["method"] == "pca"
    assert got["exact"] is True
    assert "scbridge[layout]" in got["error"]
    assert "numba is not installed, so the 2-D layout is the first two" in done.stderr


def test_pca_fallback_helpers_keep_input_unchanged() -> None:
    points = blobs(50, dim=3)
    copy = points.copy()
    coords, method = _cellmap.layout_points(points, method="pca")
    assert method == "pca" and coords.shape == (50, 2)
    np.testing.assert_array_equal(points, copy)
    frame = pd.DataFrame(points)  # anything array-like
    assert _cellmap.layout_points(frame, method="pca")[0].shape == (50, 2)

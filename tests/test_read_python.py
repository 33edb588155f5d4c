"""AnnData (in memory, .h5ad, backed) and 10x Genomics readers, and reader dispatch."""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

import bridge


@pytest.fixture
def adata() -> anndata.AnnData:
    rng = np.random.default_rng(0)
    counts = sp.random(60, 25, density=0.3, format="csr", random_state=rng,
                       data_rvs=lambda n: rng.integers(1, 30, n)).astype(np.float32)
    obs = pd.DataFrame({
        "cluster": pd.Categorical(rng.choice(["b", "a"], 60), categories=["b", "a", "unused"]),
        "n": np.arange(60),
    }, index=[f"cell{i}" for i in range(60)])
    var = pd.DataFrame(index=[f"GENE{j}" for j in range(25)])
    ad = anndata.AnnData(X=counts.copy(), obs=obs, var=var)
    lognorm = counts.copy()
    lognorm.data = np.log1p(lognorm.data)
    ad.layers["lognorm"] = lognorm
    ad.raw = ad.copy()
    ad.X = lognorm.copy()
    return ad


def test_anndata_in_memory_shares_x(adata: anndata.AnnData) -> None:
    matrix = bridge.read(adata)
    assert np.shares_memory(matrix.X.data, adata.X.data)
    assert matrix.value_kind == "lognorm"
    assert list(matrix.cells) == list(adata.obs_names)
    cluster = matrix.obs.column("cluster").combine_chunks()
    assert cluster.dictionary.to_pylist() == ["b", "a", "unused"]


def test_anndata_raw_and_layers(adata: anndata.AnnData) -> None:
    raw = bridge.read(adata, layer="raw")
    assert raw.value_kind == "counts"
    np.testing.assert_array_equal(raw.X.toarray(), adata.raw.X.toarray())
    layer = bridge.read(adata, layer="lognorm")
    assert layer.value_kind == "lognorm"
    with pytest.raises(bridge.NotFoundError, match="available: X, lognorm, raw"):
        bridge.read(adata, layer="spliced")
    with pytest.raises(bridge.InputError, match="AnnData has no assays"):
        bridge.read(adata, assay="RNA")


def test_h5ad_file_and_backed_mode(adata: anndata.AnnData, tmp_path: Path) -> None:
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    full = bridge.read(path, layer="raw")
    backed = bridge.read(path, layer="raw", backed=True)
    np.testing.assert_array_equal(full.X.toarray(), backed.X.toarray())
    chunks = list(bridge.read_chunks(path, 25, layer="raw"))
    assert [c.n_cells for c in chunks] == [25, 25, 10]
    np.testing.assert_array_equal(sp.vstack([c.X for c in chunks]).toarray(), full.X.toarray())
    assert list(np.concatenate([c.cells for c in chunks])) == list(adata.obs_names)


def test_dense_and_csc_anndata(adata: anndata.AnnData) -> None:
    dense = anndata.AnnData(X=adata.raw.X.toarray(), obs=adata.obs, var=adata.raw.var)
    csc = anndata.AnnData(X=sp.csc_matrix(adata.raw.X), obs=adata.obs, var=adata.raw.var)
    for ad in (dense, csc):
        matrix = bridge.read(ad)
        np.testing.assert_array_equal(matrix.X.toarray(), adata.raw.X.toarray())
        assert matrix.value_kind == "counts"


def test_anndata_bad_values(adata: anndata.AnnData) -> None:
    X = adata.raw.X.copy()
    X.data[3] = np.nan
    bad = anndata.AnnData(X=X, obs=adata.obs, var=adata.raw.var)
    with pytest.raises(bridge.InputError, match="non-finite"):
        bridge.read(bad)
    dup = anndata.AnnData(X=adata.raw.X, obs=adata.obs, var=pd.DataFrame(index=["G"] * 25))
    with pytest.raises(bridge.InputError, match="duplicated gene id"):
        bridge.read(dup)
    before = adata.X.data.copy()
    bridge.read(adata, genes=[f"GENE{j}" for j in reversed(range(25))])
    np.testing.assert_array_equal(adata.X.data, before)  # nothing modified in place


def test_write_h5ad_round_trip(adata: anndata.AnnData, tmp_path: Path) -> None:
    matrix = bridge.read(adata, layer="raw")
    bridge.write(matrix, tmp_path / "out.h5ad")
    back = anndata.read_h5ad(tmp_path / "out.h5ad")
    np.testing.assert_array_equal(back.X.toarray(), adata.raw.X.toarray())
    assert list(back.obs["cluster"].cat.categories) == ["b", "a", "unused"]
    assert back.uns["scbridge"]["value_kind"] == "counts"


def _write_10x_folder(folder: Path, X: sp.csr_matrix, symbols: list[str], gz: bool) -> None:
    folder.mkdir()
    n_cells, n_genes = X.shape
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(folder / f"matrix.mtx{suffix}", "wb") as fh:
        scipy.io.mmwrite(fh, sp.coo_matrix(X.T))
    with opener(folder / f"barcodes.tsv{suffix}", "wt") as fh:
        fh.writelines(f"AAAC-{i}\n" for i in range(n_cells))
    with opener(folder / f"features.tsv{suffix}", "wt") as fh:
        types = ["Gene Expression"] * (n_genes - 1) + ["Antibody Capture"]
        fh.writelines(f"ENSG{j:011d}\t{s}\t{t}\n" for j, (s, t) in enumerate(zip(symbols, types, strict=True)))


@pytest.fixture
def tenx_counts() -> tuple[sp.csr_matrix, list[str]]:
    rng = np.random.default_rng(3)
    X = sp.random(12, 6, density=0.5, format="csr", random_state=rng,
                  data_rvs=lambda n: rng.integers(1, 9, n)).astype(np.float64)
    return X, ["CD3E", "MS4A1", "CD3E", "LYZ", "NKG7", "CD4-prot"]


@pytest.mark.parametrize("gz", [True, False])
def test_10x_folder(tmp_path: Path, tenx_counts, gz: bool) -> None:
    X, symbols = tenx_counts
    _write_10x_folder(tmp_path / "filtered", X, symbols, gz)
    matrix = bridge.read(tmp_path / "filtered")
    assert list(matrix.genes) == ["CD3E", "MS4A1", "CD3E-1", "LYZ", "NKG7"]  # scanpy-style unique
    np.testing.assert_array_equal(matrix.X.toarray(), X[:, :5].toarray())
    adt = bridge.read(tmp_path / "filtered", assay="Antibody Capture")
    assert list(adt.genes) == ["CD4-prot"]
    ids = bridge.read(tmp_path / "filtered", var_names="gene_ids")
    assert ids.genes[0] == "ENSG00000000000"
    with pytest.raises(bridge.NotFoundError, match="available: Antibody Capture, Gene Expression"):
        bridge.read(tmp_path / "filtered", assay="CRISPR")


def test_10x_h5(tmp_path: Path, tenx_counts) -> None:
    X, symbols = tenx_counts
    csc = sp.csc_matrix(X.T)  # genes x cells CSC, as Cell Ranger stores it
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = csc.data, csc.indices, csc.indptr
        g["shape"] = np.array(csc.shape)
        g["barcodes"] = np.array([f"AAAC-{i}".encode() for i in range(X.shape[0])])
        feats = g.create_group("features")
        feats["id"] = np.array([f"ENSG{j:011d}".encode() for j in range(len(symbols))])
        feats["name"] = np.array([s.encode() for s in symbols])
        feats["feature_type"] = np.array([b"Gene Expression"] * 5 + [b"Antibody Capture"])
    matrix = bridge.read(path)
    np.testing.assert_array_equal(matrix.X.toarray(), X[:, :5].toarray())
    assert matrix.cells[0] == "AAAC-0"


def test_incomplete_10x_folder(tmp_path: Path, tenx_counts) -> None:
    X, symbols = tenx_counts
    _write_10x_folder(tmp_path / "f", X, symbols, gz=False)
    (tmp_path / "f" / "barcodes.tsv").unlink()
    with pytest.raises(bridge.FormatError, match="needs matrix.mtx, barcodes.tsv"):
        bridge.read(tmp_path / "f")


def test_unknown_inputs(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(bridge.UnsupportedError, match="unrecognised input. scbridge reads"):
        bridge.read(tmp_path / "x.txt")
    with pytest.raises(bridge.InputError, match="does not exist"):
        bridge.read(tmp_path / "missing.rds")
    with pytest.raises(bridge.UnsupportedError, match="cannot read a builtins.dict"):
        bridge.read({"a": 1})


def test_select_genes_reorders_and_refuses_missing(adata: anndata.AnnData) -> None:
    matrix = bridge.read(adata, layer="raw")
    wanted = ["GENE3", "GENE0", "GENE7"]
    picked = matrix.select_genes(wanted)
    np.testing.assert_array_equal(picked.X.toarray(), adata.raw.X[:, [3, 0, 7]].toarray())
    with pytest.raises(bridge.GeneIdError, match="1 of the 2 requested genes"):
        matrix.select_genes(["GENE1", "ENSG000001"])
    zero = matrix.select_genes(["GENE1", "NOPE"], missing="zero")
    assert zero.X[:, 1].nnz == 0


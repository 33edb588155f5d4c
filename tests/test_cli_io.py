"""``scbridge inspect`` / ``scbridge convert`` and R data sets addressed as ``pkg::name``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

import bridge
from bridge.cli import main

from conftest import run_r
from expected import assert_same, expected_csr


def _scbridge(*args: str) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a subprocess (exit codes and stderr as a user sees them)."""
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True, text=True)


@pytest.fixture
def h5ad_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    X = sp.random(40, 25, density=0.3, format="csr", random_state=rng, dtype=np.float32)
    X.data = np.ceil(X.data * 9)
    adata = anndata.AnnData(X)
    adata.obs_names = [f"cell{i}" for i in range(40)]
    adata.var_names = [f"ENSG{i:011d}" for i in range(25)]
    adata.layers["spliced"] = X.copy()
    path = tmp_path / "small.h5ad"
    adata.write_h5ad(path)
    return path


def test_inspect_text_and_json(h5ad_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(h5ad_file)]) == 0
    text = capsys.readouterr().out
    assert "40 cells x 25 genes" in text
    assert "value kind: counts" in text
    assert "gene id kind: ensembl" in text
    assert main(["inspect", str(h5ad_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["default"]["cells"] == 40
    assert info["default"]["nnz"] == anndata.read_h5ad(h5ad_file).X.nnz


def test_convert_h5ad_to_arrow_file_and_stream(h5ad_file: Path, tmp_path: Path) -> None:
    original = anndata.read_h5ad(h5ad_file)
    for name, chunk in (("whole.arrow", None), ("chunked.arrows", "7")):
        out = tmp_path / name
        args = ["convert", str(h5ad_file), str(out)] + (["--chunk-size", chunk] if chunk else [])
        assert main(args) == 0
        back = bridge.read(out)
        assert (back.X != original.X).nnz == 0
        assert list(back.cells) == list(original.obs_names)
        assert list(back.genes) == list(original.var_names)


def test_convert_named_layer(h5ad_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "spliced.arrow"
    assert main(["convert", str(h5ad_file), str(out), "--layer", "spliced"]) == 0
    assert bridge.read(out).nnz == anndata.read_h5ad(h5ad_file).layers["spliced"].nnz


def test_cli_errors_are_one_clear_line(h5ad_file: Path, tmp_path: Path) -> None:
    missing = _scbridge("inspect", str(tmp_path / "nope.rds"))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr

    bad_layer = _scbridge("convert", str(h5ad_file), str(tmp_path / "x.arrow"), "--layer", "nope")
    assert bad_layer.returncode == 2
    assert "spliced" in bad_layer.stderr  # the available layers are listed
    assert "Traceback" not in bad_layer.stderr

    bad_suffix = _scbridge("convert", str(h5ad_file), str(tmp_path / "x.xlsx"))
    assert bad_suffix.returncode == 2
    assert ".arrow" in bad_suffix.stderr


@pytest.mark.needs_r
def test_inspect_and_convert_seurat(r_fixtures: Path, tmp_path: Path) -> None:
    rds = r_fixtures / "seurat_v4.rds"
    done = _scbridge("inspect", str(rds), "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["class"] == "Seurat"
    assert set(info["assays"]["RNA"]["layers"]) >= {"counts", "data"}

    out = tmp_path / "seurat.arrow"
    assert _scbridge("convert", str(rds), str(out)).returncode == 0
    assert_same(bridge.read(out), *expected_csr(r_fixtures, "seurat_v4_counts"))

    # Arrow -> .rds dgCMatrix: R reads back exactly the values it wrote.
    rds_out = tmp_path / "back.rds"
    assert _scbridge("convert", str(out), str(rds_out)).returncode == 0
    same = run_r(
        f"a <- readRDS('{rds_out}'); s <- readRDS('{rds}'); "
        "m <- SeuratObject::GetAssayData(s, slot = 'counts'); "
        "cat(identical(as.numeric(a@x), as.numeric(m@x)), identical(a@i, m@i), "
        "identical(colnames(a), colnames(m)))"
    )
    assert same.split() == ["TRUE", "TRUE", "TRUE"]


@pytest.mark.needs_r
def test_package_data_sets_read_like_r() -> None:
    matrix = bridge.read("SeuratObject::pbmc_small")
    # What R itself reports for SeuratObject's bundled object.
    dims = run_r(
        "m <- SeuratObject::GetAssayData(SeuratObject::pbmc_small, slot = 'counts'); "
        "cat(ncol(m), nrow(m), length(m@x), colnames(m)[1], rownames(m)[1])"
    ).split()
    assert [matrix.n_cells, matrix.n_genes, matrix.nnz] == [int(d) for d in dims[:3]]
    assert matrix.cells[0] == dims[3] and matrix.genes[0] == dims[4]
    assert "groups" in matrix.obs.column_names
    assert bridge.describe("SeuratObject::pbmc_small")["class"] == "Seurat"

    with pytest.raises(bridge.NotFoundError, match="no data set or object called 'nope'"):
        bridge.read("SeuratObject::nope")
    with pytest.raises(bridge.NotFoundError, match="'NoSuchPackage' is not installed"):
        bridge.read("NoSuchPackage::x")


@pytest.mark.needs_r
def test_rdata_with_several_objects_names_them(tmp_path: Path) -> None:
    path = tmp_path / "two.RData"
    run_r(
        "a <- Matrix::rsparsematrix(5, 4, 0.5); b <- Matrix::rsparsematrix(5, 4, 0.5); "
        f"save(a, b, file = '{path}')"
    )
    with pytest.raises(bridge.InputError, match=r"several objects \(a, b\).*saveRDS"):
        bridge.read(path)

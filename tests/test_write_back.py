"""write_back: new per-cell columns into Seurat meta.data (v4, v5), SCE colData and h5ad obs,
with everything else in the object unchanged, checked by reading the result in R."""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import bridge

from conftest import run_r


def calls_for(cells: list[str], *, reverse: bool = True) -> pa.Table:
    order = list(reversed(cells)) if reverse else list(cells)  # any order: matched by cell id
    labels = ["B cell" if i % 2 else "T cell" for i in range(len(order))]
    return pa.table({
        "cell": order,
        "cell_type": pa.array(labels).dictionary_encode(),
        "cell_type_confidence": pa.array(np.linspace(0, 1, len(order)), pa.float32()),
        "cell_type_ontology": ["CL:0000236" if i % 2 else None for i in range(len(order))],
    })


@pytest.mark.needs_r
@pytest.mark.parametrize("fixture", ["seurat_v4.rds", "seurat_v5_split.rds", "sce_dgc.rds"])
def test_write_back_rds_keeps_everything_else(r_fixtures: Path, tmp_path: Path, fixture: str) -> None:
    source = r_fixtures / fixture
    cells = [f"cell_{i:02d}" for i in range(1, 31)]
    out = bridge.write_back(source, calls_for(cells), tmp_path / "out.rds")
    before = source.read_bytes()
    result = run_r(f"""
        suppressMessages({{library(SeuratObject); library(SingleCellExperiment)}})
        a <- readRDS("{source}")
        b <- readRDS("{out}")
        is_seurat <- inherits(b, "Seurat")
        meta <- if (is_seurat) attr(b, "meta.data") else as.data.frame(colData(b))
        new <- c("cell_type", "cell_type_confidence", "cell_type_ontology")
        stripped <- b
        if (is_seurat) {{
          m <- attr(stripped, "meta.data"); m[new] <- NULL; attr(stripped, "meta.data") <- m
        }} else {{
          colData(stripped) <- colData(stripped)[, setdiff(colnames(colData(stripped)), new)]
        }}
        cat(identical(a, stripped), "\\n")
        cat(as.character(meta$cell_type[1:2]), sep = "|"); cat("\\n")
        cat(levels(meta$cell_type), sep = "|"); cat("\\n")
        cat(is.na(meta$cell_type_ontology[2]), meta$cell_type_ontology[1], "\\n")
        cat(rownames(meta)[1], "\\n")
    """).splitlines()
    assert result[0].strip() == "TRUE", "the object changed beyond the new columns"
    # Cells were given in reverse order: cell_01 is row 29 (odd: B cell, CL id), cell_02 row 28.
    assert result[1] == "B cell|T cell"
    assert result[2] == "T cell|B cell"  # factor levels in the order the table's dictionary has
    assert result[3].split() == ["TRUE", "CL:0000236"]
    assert result[4].strip() == "cell_01"
    assert source.read_bytes() == before  # the source file is never modified


@pytest.mark.needs_r
def test_write_back_values_match_cells(r_fixtures: Path, tmp_path: Path) -> None:
    cells = [f"cell_{i:02d}" for i in range(1, 31)]
    table = pa.table({"cell": cells[::-1], "score_new": np.arange(30, dtype=np.float64)[::-1]})
    out = bridge.write_back(r_fixtures / "seurat_v4.rds", table, tmp_path / "o.rds")
    values = run_r(f'cat(readRDS("{out}")@meta.data$score_new)').split()
    assert [float(v) for v in values] == [float(i) for i in range(30)]


@pytest.mark.needs_r
def test_write_back_refuses_clashes_and_unknown_cells(r_fixtures: Path, tmp_path: Path) -> None:
    cells = [f"cell_{i:02d}" for i in range(1, 31)]
    clash = pa.table({"cell": cells, "group": ["x"] * 30})
    with pytest.raises(bridge.InputError, match="already has column.*'group'.*overwrite=True"):
        bridge.write_back(r_fixtures / "seurat_v4.rds", clash, tmp_path / "o.rds")
    bridge.write_back(r_fixtures / "seurat_v4.rds", clash, tmp_path / "o.rds", overwrite=True)
    unknown = pa.table({"cell": ["nope", *cells[1:]], "x": [1] * 30})
    with pytest.raises(bridge.InputError, match="1 cell id.*not in"):
        bridge.write_back(r_fixtures / "sce_dgc.rds", unknown, tmp_path / "o.rds")
    with pytest.raises(bridge.UnsupportedError, match="needs a Seurat or SingleCellExperiment"):
        bridge.write_back(r_fixtures / "bare_dgc.rds", pa.table({"cell": cells, "x": [1] * 30}),
                          tmp_path / "o.rds")


def test_write_back_h5ad_only_touches_obs(tmp_path: Path) -> None:
    import polars as pl

    rng = np.random.default_rng(0)
    X = (rng.poisson(1, (20, 8))).astype(np.float32)
    ad = anndata.AnnData(X=X, obs=pd.DataFrame(
        {"batch": pd.Categorical(["a", "b"] * 10, categories=["b", "a", "zz"])},
        index=[f"c{i}" for i in range(20)]))
    ad.uns["keep"] = {"x": 1}
    source = tmp_path / "in.h5ad"
    ad.write_h5ad(source)
    cells = [f"c{i}" for i in range(20)][::-1]
    columns = pl.DataFrame({"cell": cells[:15], "cell_type": ["NK cell"] * 15})  # 5 cells missing
    out = bridge.write_back(source, columns, tmp_path / "out.h5ad")
    back = anndata.read_h5ad(out)
    np.testing.assert_array_equal(back.X, X)
    assert back.uns["keep"]["x"] == 1
    assert list(back.obs["batch"].cat.categories) == ["b", "a", "zz"]
    assert back.obs["cell_type"].isna().sum() == 5
    assert back.obs.loc["c19", "cell_type"] == "NK cell"
    assert list(anndata.read_h5ad(source).obs.columns) == ["batch"]  # source untouched


def test_write_back_input_errors(tmp_path: Path) -> None:
    with pytest.raises(bridge.InputError, match="does not exist"):
        bridge.write_back(tmp_path / "none.rds", pa.table({"cell": ["a"], "x": [1]}), tmp_path / "o")
    (tmp_path / "x.h5ad").write_bytes(b"")
    with pytest.raises(bridge.InputError, match="need a 'cell' column"):
        bridge.write_back(tmp_path / "x.h5ad", pa.table({"x": [1]}), tmp_path / "o.h5ad")
    with pytest.raises(bridge.InputError, match="duplicated cell ids"):
        bridge.write_back(tmp_path / "x.h5ad", pa.table({"cell": ["a", "a"], "x": [1, 2]}),
                          tmp_path / "o.h5ad")

"""Reading R objects through rpy2: every container x matrix class, exact against R's own values."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import bridge

from conftest import run_r
from expected import assert_same, expected_csr

pytestmark = pytest.mark.needs_r

# fixture file, read() arguments, expected-values name, value kind, source label prefix
CASES = [
    ("seurat_v4.rds", {}, "seurat_v4_counts", "counts", "Seurat assay RNA counts"),
    ("seurat_v4.rds", {"layer": "data"}, "seurat_v4_data", "lognorm", "Seurat assay RNA data"),
    ("seurat_v4.rds", {"assay": "ADT"}, "seurat_v4_adt", "counts", "Seurat assay ADT counts"),
    ("seurat_v5.rds", {}, "seurat_v4_counts", "counts", "Seurat v5 assay RNA layer counts"),
    ("seurat_v5.rds", {"layer": "data"}, "seurat_v4_data", "lognorm", "Seurat v5 assay RNA layer data"),
    ("seurat_v5_split.rds", {}, "seurat_v4_counts", "counts", "Seurat v5 assay RNA layers counts.A+counts.B"),
    ("seurat_v5_split_genes.rds", {}, "seurat_v5_split_genes", "counts", "Seurat v5 assay RNA layers"),
    ("sce_dgc.rds", {}, "seurat_v4_counts", "counts", "SingleCellExperiment assay counts"),
    ("sce_dgt.rds", {}, "seurat_v4_counts", "counts", "SingleCellExperiment assay counts"),
    ("sce_dense.rds", {}, "seurat_v4_counts", "counts", "SingleCellExperiment assay counts"),
    ("sce_delayed.rds", {}, "seurat_v4_counts", "counts", "SingleCellExperiment assay counts"),
    ("sce_logcounts.rds", {}, "seurat_v4_data", "lognorm", "SingleCellExperiment assay logcounts"),
    ("sce_both.rds", {"assay": "logcounts"}, "seurat_v4_data", "lognorm", "SingleCellExperiment assay logcounts"),
    ("sce_no_coldata.rds", {}, "seurat_v4_counts", "counts", "SingleCellExperiment assay counts"),
    ("bare_dgc.rds", {}, "seurat_v4_counts", "counts", "R dgCMatrix"),
    ("bare_dgt.rds", {}, "seurat_v4_counts", "counts", "R dgTMatrix"),
    ("bare_dgr.rds", {}, "seurat_v4_counts", "counts", "R dgRMatrix"),
    ("bare_dense.rds", {}, "seurat_v4_counts", "counts", "R matrix"),
    ("bare_dense_int.rds", {}, "seurat_v4_counts", "counts", "R matrix"),
    ("bare_dgc.RData", {}, "seurat_v4_counts", "counts", "R dgCMatrix"),
]


@pytest.mark.parametrize(("fixture", "kwargs", "expected", "kind", "label"), CASES,
                         ids=[f"{c[0]}-{'-'.join(c[1].values()) or 'default'}" for c in CASES])
def test_read_matches_r_exactly(r_fixtures: Path, fixture, kwargs, expected, kind, label) -> None:
    matrix = bridge.read(r_fixtures / fixture, **kwargs)
    X, cells, genes = expected_csr(r_fixtures, expected)
    assert_same(matrix, X, cells, genes)
    assert matrix.value_kind == kind
    assert matrix.source.startswith(label)


def test_dgcmatrix_is_zero_copy_and_kept_alive(r_fixtures: Path) -> None:
    import rpy2.robjects as ro

    robj = ro.r["readRDS"](str(r_fixtures / "bare_dgc.rds"))
    matrix = bridge.read(robj)
    slots = {name: np.asarray(robj.do_slot(name).memoryview()) for name in ("p", "i", "x")}
    assert np.shares_memory(matrix.X.indptr, slots["p"])
    assert np.shares_memory(matrix.X.indices, slots["i"])
    assert np.shares_memory(matrix.X.data, slots["x"])
    assert not matrix.X.data.flags.writeable  # the user's R object cannot be modified from here
    expected = matrix.X.data.copy()
    data = matrix.X.data
    del robj, slots, matrix
    gc.collect()
    ro.r("gc()")
    ro.r("x <- lapply(1:200, function(i) runif(1e4))")  # churn R's heap
    np.testing.assert_array_equal(data, expected)  # the view keeps the R vector alive


def test_seurat_obs_keeps_factor_levels_and_missing_values(r_fixtures: Path) -> None:
    matrix = bridge.read(r_fixtures / "seurat_v4.rds")
    group = matrix.obs.column("group").combine_chunks()
    assert pa.types.is_dictionary(group.type)
    levels = (r_fixtures / "seurat_v4.levels.txt").read_text().splitlines()
    assert group.dictionary.to_pylist() == levels == ["c", "b", "a", "unused"]
    assert group.to_pylist()[:3] == ["a", "b", "c"]
    assert matrix.obs.column("flag").to_pylist()[:3] == [True, False, None]
    assert matrix.obs.column("note").to_pylist()[:3] == ["x", None, "z"]
    assert matrix.obs.column("score").to_pylist()[6] == pytest.approx(1.0)


def test_v5_split_layers_join_in_object_cell_order(r_fixtures: Path) -> None:
    matrix = bridge.read(r_fixtures / "seurat_v5_split.rds", layer="counts")
    # Cells of samples A and B are interleaved in the object; the join restores that order.
    assert list(matrix.cells) == [f"cell_{i:02d}" for i in range(1, 31)]
    one = bridge.read(r_fixtures / "seurat_v5_split.rds", layer="counts.B")
    assert list(one.cells) == [f"cell_{i:02d}" for i in range(3, 31, 3)]


def test_live_r_objects(r_fixtures: Path) -> None:
    import rpy2.robjects as ro

    sce = ro.r["readRDS"](str(r_fixtures / "sce_dgc.rds"))
    matrix = bridge.read(sce)
    X, cells, genes = expected_csr(r_fixtures, "seurat_v4_counts")
    assert_same(matrix, X, cells, genes)
    assert "group" in matrix.obs.column_names


def test_describe_lists_assays_and_layers(r_fixtures: Path) -> None:
    info = bridge.describe(r_fixtures / "seurat_v5_split.rds")
    assert info["kind"] == "seurat"
    assert info["seurat_version"] == "5.0.2"
    layers = info["assays"]["RNA"]["layers"]
    assert set(layers) == {"counts.A", "counts.B", "data"}
    assert layers["counts.A"]["cells"] == 20
    v4 = bridge.describe(r_fixtures / "seurat_v4.rds")
    assert set(v4["assays"]) == {"RNA", "ADT"}
    assert v4["assays"]["RNA"]["layers"]["counts"]["nnz"] == 360


BAD = [
    ("bad_class.rds", {}, bridge.UnsupportedError, "Supported: Seurat"),
    ("seurat_v4.rds", {"assay": "SCT"}, bridge.NotFoundError, "available assays: RNA, ADT"),
    ("seurat_v4.rds", {"layer": "spliced"}, bridge.NotFoundError, "available layers: counts, data"),
    ("seurat_v5.rds", {"layer": "spliced"}, bridge.NotFoundError, "available layers: counts, data"),
    ("sce_dgc.rds", {"assay": "spliced"}, bridge.NotFoundError, "available assays: counts"),
    ("bad_dup_cells.rds", {}, bridge.InputError, "duplicated cell id"),
    ("bad_dup_genes.rds", {}, bridge.InputError, "duplicated gene id"),
    ("bad_nan.rds", {}, bridge.InputError, "non-finite values"),
    ("bad_inf.rds", {}, bridge.InputError, "non-finite values"),
    ("bad_negative.rds", {}, bridge.InputError, "negative values"),
    ("bad_noninteger_counts.rds", {}, bridge.InputError, "not integers (e.g. 2.5"),
    ("bad_zero_cells.rds", {}, bridge.InputError, "0 cells"),
    ("bad_no_names.rds", {}, bridge.InputError, "no rownames"),
]


@pytest.mark.parametrize(("fixture", "kwargs", "error", "phrase"), BAD,
                         ids=[f"{b[0]}-{b[3][:20]}" for b in BAD])
def test_bad_input_gets_a_clear_error(r_fixtures: Path, fixture, kwargs, error, phrase) -> None:
    with pytest.raises(error, match=phrase.replace("(", r"\(").replace(".", r"\.")):
        bridge.read(r_fixtures / fixture, **kwargs)


def test_non_finite_error_names_the_cell(r_fixtures: Path) -> None:
    with pytest.raises(bridge.InputError, match="first in cell 'cell_"):
        bridge.read(r_fixtures / "bad_nan.rds")


def test_unsorted_indices_are_sorted_into_new_arrays(r_fixtures: Path) -> None:
    import rpy2.robjects as ro

    robj = ro.r["readRDS"](str(r_fixtures / "bad_unsorted.rds"))
    original_i = np.array(robj.do_slot("i"))
    matrix = bridge.read(robj)
    assert matrix.X.has_sorted_indices
    X, _, _ = expected_csr(r_fixtures, "seurat_v4_counts")
    np.testing.assert_array_equal(matrix.X.toarray(), X.toarray())
    np.testing.assert_array_equal(np.array(robj.do_slot("i")), original_i)  # R object untouched
    assert not np.shares_memory(matrix.X.indices, np.asarray(robj.do_slot("i").memoryview()))


def test_scale_data_is_refused(r_fixtures: Path) -> None:
    with pytest.raises(bridge.InputError, match="scaled .* values"):
        bridge.read(r_fixtures / "seurat_v4.rds", layer="scale.data")


def test_round_trip_r_arrow_python_r_is_value_exact(r_fixtures: Path, tmp_path: Path) -> None:
    source = r_fixtures / "seurat_v4.rds"
    bridge.write(bridge.read(source, layer="data"), tmp_path / "m.arrow")
    back = bridge.read(tmp_path / "m.arrow")
    for container in ("Seurat", "SingleCellExperiment", "dgCMatrix"):
        bridge.write(back, tmp_path / f"{container}.rds", container=container)
    out = run_r(f"""
        suppressMessages({{library(SeuratObject); library(SingleCellExperiment)}})
        a <- readRDS("{source}")
        data <- GetAssayData(a, slot = "data")
        s <- readRDS("{tmp_path}/Seurat.rds")
        sce <- readRDS("{tmp_path}/SingleCellExperiment.rds")
        m <- readRDS("{tmp_path}/dgCMatrix.rds")
        cat(identical(GetAssayData(s, slot = "counts"), data),
            identical(counts(sce), data), identical(m, data),
            identical(levels(s$group), levels(a$group)), identical(s$note, a$note),
            identical(colData(sce)$flag, unname(a$flag)))
    """)
    assert out.split() == ["TRUE"] * 6


def test_writing_more_nonzeros_than_a_dgcmatrix_holds_is_refused() -> None:
    from bridge._validate import check_fits_int32

    check_fits_int32(2**31 - 1, target="an R dgCMatrix")
    with pytest.raises(bridge.CapacityError, match="32-bit integers"):
        check_fits_int32(2**31, target="an R dgCMatrix")


def test_reading_arrow_never_starts_r(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, bridge, scipy.sparse as sp\n"
        "m = bridge.CellMatrix(sp.random(5, 4, density=0.5, format='csr', random_state=0).ceil(),"
        " list('abcde'), list('WXYZ'))\n"
        f"bridge.write(m, r'{tmp_path / 'm.arrow'}')\n"
        f"bridge.read(r'{tmp_path / 'm.arrow'}')\n"
        "assert 'rpy2' not in sys.modules, 'rpy2 was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_children_survive_r_starting(r_fixtures: Path) -> None:
    # rpy2 prepends R's and the system's library folders to LD_LIBRARY_PATH when R starts;
    # children of this process (Dask / multiprocessing workers, the scbridge CLI) then loaded
    # the system's libpython instead of their own and died. Reading or writing R puts it back.
    import subprocess
    import sys

    code = (
        "import os, subprocess, sys, bridge\n"
        "before = os.environ.get('LD_LIBRARY_PATH')\n"
        f"m = bridge.read(r'{r_fixtures / 'seurat_v4.rds'}')\n"
        "assert os.environ.get('LD_LIBRARY_PATH') == before, os.environ.get('LD_LIBRARY_PATH')\n"
        "subprocess.run([sys.executable, '-c', 'import ssl, numpy'], check=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

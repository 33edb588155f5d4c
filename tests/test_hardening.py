"""Issue 12 outside the service: no write destroys an input, no input crashes a reader, no
reference gives a confidence outside [0, 1].

The writers are run through the real CLI (a subprocess) and the Python API on real files,
symbolic links and hard links; the readers get the damaged files the issue lists; references
the values it lists.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

import bridge
from bridge.io._files import TEMP_MARK, atomic_output
from bridge.matrix import CellMatrix

pytest.register_assert_rewrite("tests._server")
from tests._server import subprocess_env, synthetic_cells  # noqa: E402

pytest_plugins = ["tests._server"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def scbridge(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True,
                          text=True, cwd=cwd, env=subprocess_env(), timeout=300)


@pytest.fixture
def arrow_input(tmp_path: Path) -> Path:
    path = tmp_path / "a.arrow"
    bridge.write(synthetic_cells(200, seed=1), path)
    return path


# -- writers never write onto an input ------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["same", "symlink", "hardlink"])
def test_convert_refuses_its_input(arrow_input: Path, spelling: str) -> None:
    folder = arrow_input.parent
    target = {"same": arrow_input, "symlink": folder / "link.arrow",
              "hardlink": folder / "hard.arrow"}[spelling]
    if spelling == "symlink":
        target.symlink_to(arrow_input.name)
    elif spelling == "hardlink":
        os.link(arrow_input, target)
    before = digest(arrow_input)
    done = scbridge("convert", arrow_input.name, target.name, cwd=folder)
    assert done.returncode == 2
    assert "scbridge convert: error[same_file]:" in done.stderr
    assert "Traceback" not in done.stderr
    assert digest(arrow_input) == before


@pytest.mark.parametrize("flags", [
    ["--out", "a.arrow"],
    ["--out", "calls.parquet", "--report", "a.arrow"],
    ["--out", "calls.parquet", "--report", "calls.parquet"],
    ["--out", "calls.parquet", "--write-back", "a.arrow"],
    ["--out", "calls.parquet", "--qc-table", "calls.parquet"],
])
def test_annotate_refuses_outputs_that_are_inputs(arrow_input: Path, flags: list[str]) -> None:
    folder = arrow_input.parent
    (folder / "calls.parquet").write_bytes(b"previous calls")
    before = {p: digest(p) for p in (arrow_input, folder / "calls.parquet")}
    done = scbridge("annotate", "a.arrow", "--quiet", *flags, cwd=folder)
    assert done.returncode == 2, done.stderr
    assert "error[same_file]" in done.stderr and "Traceback" not in done.stderr
    assert {p: digest(p) for p in before} == before


def test_build_reference_and_tables_refuse_their_input(arrow_input: Path) -> None:
    folder = arrow_input.parent
    before = digest(arrow_input)
    (folder / "link.parquet").symlink_to(arrow_input)  # --out gets .parquet added if missing
    for args in (["build-reference", "a.arrow", "--label-column", "label", "--out",
                  "link.parquet"],
                 ["rank-markers", "a.arrow", "--groups", "label", "--out", "a.arrow"],
                 ["embed", "a.arrow", "--out", "a.arrow"]):
        done = scbridge(*args, cwd=folder)
        assert done.returncode == 2 and "error[same_file]" in done.stderr, done.stderr
    assert digest(arrow_input) == before


def test_write_back_refuses_its_source_through_any_link(tmp_path: Path) -> None:
    source = tmp_path / "in.h5ad"
    bridge.write(synthetic_cells(30, seed=2), source)
    (tmp_path / "link.h5ad").symlink_to(source)
    os.link(source, tmp_path / "hard.h5ad")
    before = digest(source)
    columns = pa.table({"cell": [f"cell{i}" for i in range(30)], "cell_type": ["B"] * 30})
    for out in (source, tmp_path / "link.h5ad", tmp_path / "hard.h5ad"):
        with pytest.raises(bridge.InputError) as caught:
            bridge.write_back(source, columns, out)
        assert caught.value.code == "same_file"
    assert digest(source) == before
    out = bridge.write_back(source, columns, tmp_path / "out.h5ad")
    assert digest(source) == before
    import anndata

    assert list(anndata.read_h5ad(out).obs["cell_type"]) == ["B"] * 30


def test_rewriting_a_memory_mapped_arrow_file_in_place(arrow_input: Path) -> None:
    """``bridge.write(bridge.read(p), p)``: the new file replaces the old one by rename, so the
    memory map being read keeps the old bytes (it used to die with a bus error)."""
    matrix = bridge.read(arrow_input)
    expected = matrix.X.toarray()
    bridge.write(matrix, arrow_input)
    np.testing.assert_array_equal(matrix.X.toarray(), expected)  # the map is intact
    np.testing.assert_array_equal(bridge.read(arrow_input).X.toarray(), expected)


def test_a_symlinked_target_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real.arrow"
    real.write_bytes(b"old")
    link = tmp_path / "link.arrow"
    link.symlink_to(real)
    bridge.write(synthetic_cells(10, seed=3), link)
    assert link.is_symlink()
    assert bridge.read(real).n_cells == 10


def test_atomic_output_leaves_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    with pytest.raises(RuntimeError), atomic_output(target) as temp:
        temp.write_bytes(b"half of the new")
        raise RuntimeError("the writer failed")
    assert target.read_bytes() == b"old"
    assert not list(tmp_path.glob(f".*{TEMP_MARK}*"))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    with atomic_output(target) as temp:
        temp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o640  # the old file's mode is kept


def test_an_interrupt_a_library_turned_into_its_own_error_stays_an_interrupt(
        tmp_path: Path) -> None:
    # h5py answers a Ctrl-C that lands inside an attribute write with a TypeError.
    target = tmp_path / "out.h5ad"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt) as caught, atomic_output(target) as temp:
        temp.write_bytes(b"half")
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise TypeError("Operation not defined for data type class") from None
    assert isinstance(caught.value.__cause__, TypeError)
    assert target.read_bytes() == b"old"
    with pytest.raises(TypeError), atomic_output(target) as temp:  # a plain error stays itself
        raise TypeError("a writer's own bug")
    # rpy2 swallows an interrupt raised in one of its callbacks, then fails on its own: the
    # signal received during the write is what propagates.
    with pytest.raises(KeyboardInterrupt), atomic_output(target) as temp:
        with contextlib.suppress(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
        raise TypeError("'NULLType' object is not callable")
    assert target.read_bytes() == b"old"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


# -- readers only raise our errors ------------------------------------------------------------------
def test_arrow_errors_name_the_file_not_the_recorded_source(tmp_path: Path) -> None:
    m = synthetic_cells(20, seed=4)
    m.source = "Seurat assay RNA counts"
    m.X.data[3] = -1.0
    path = tmp_path / "negative.arrow"
    bridge.write(m, path)
    with pytest.raises(bridge.InputError) as caught:
        bridge.read(path)
    assert str(path) in str(caught.value) and caught.value.code == "invalid_values"


def test_the_issues_tiny_mtx_header_bomb(tmp_path: Path) -> None:
    """A 60-byte matrix.mtx.gz claiming 230 x 2,000,000,000: refused from its header."""
    folder = tmp_path / "tenx"
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wt") as fh:
        fh.write("%%MatrixMarket matrix coordinate integer general\n230 2000000000 1\n1 1 1\n")
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as fh:
        fh.write("AAAC-1\n")
    with gzip.open(folder / "features.tsv.gz", "wt") as fh:
        fh.write("".join(f"ENSG{i}\tG{i}\tGene Expression\n" for i in range(230)))
    assert (folder / "matrix.mtx.gz").stat().st_size < 100
    code = ("import resource, bridge\n"
            "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            f"try:\n    bridge.read({str(folder)!r})\n"
            "except bridge.BridgeError as e:\n    print(e.code, e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=subprocess_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("invalid_format")
    assert "2,000,000,000 cells" in done.stdout and "1 barcodes" in done.stdout


@pytest.mark.parametrize("damage", ["empty", "random", "truncated", "shape", "huge_shape"])
def test_damaged_h5ad_files(tmp_path: Path, damage: str) -> None:
    import h5py

    path = tmp_path / "x.h5ad"
    bridge.write(synthetic_cells(40, seed=5), path)
    content = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "truncated":
        path.write_bytes(content[: len(content) // 2])
    else:
        with h5py.File(path, "r+") as f:
            f["X"].attrs["shape"] = np.array([41 if damage == "shape" else 2**40, 300])
    for reader in (bridge.read, bridge.describe):
        with pytest.raises(bridge.FormatError) as caught:
            reader(path)
        assert str(path) in str(caught.value)


def test_a_cell_whose_values_overflow_is_refused_by_name() -> None:
    X = sp.csr_matrix(np.array([[1.0, 2.0], [1e300, 1e300]]))
    with pytest.raises(bridge.InputError) as caught:
        CellMatrix(X, ["ok", "huge"], ["A", "B"], value_kind="lognorm")
    assert caught.value.code == "invalid_values" and "'huge'" in str(caught.value)


def test_inspect_does_not_call_negative_values_counts(tmp_path: Path) -> None:
    m = synthetic_cells(20, seed=6)
    m.X.data[:] = -np.abs(np.rint(m.X.data)) - 1
    path = tmp_path / "scaled.arrow"
    bridge.write(m, path)
    done = scbridge("inspect", path.name, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["default"]["value_kind"].startswith("scaled")


@pytest.mark.needs_r
def test_damaged_r_matrices(tmp_path: Path) -> None:
    from conftest import run_r

    run_r(f"""
        suppressMessages({{library(Matrix); library(SeuratObject)}})
        set.seed(1)
        m <- rsparsematrix(10, 80, 0.4); m@x <- abs(round(m@x * 10)) + 1
        dimnames(m) <- list(paste0("G", 1:10), paste0("c", 1:80))
        short <- m; short@p <- short@p[1:4]; saveRDS(short, "{tmp_path}/short.rds")
        ch <- matrix(as.character(1:20), 4, 5, dimnames = list(paste0("G", 1:4),
                     paste0("c", 1:5))); saveRDS(ch, "{tmp_path}/char.rds")
        s <- CreateSeuratObject(m); a <- s@assays$RNA
        slot(a, "counts", check = FALSE) <- m[, 1:40]; slot(a, "data", check = FALSE) <- m[, 1:40]
        s@assays$RNA <- a; saveRDS(s, "{tmp_path}/half.rds")
    """)
    with pytest.raises(bridge.InputError, match="slots disagree") as caught:
        bridge.read(tmp_path / "short.rds")
    assert str(tmp_path / "short.rds") in str(caught.value)
    with pytest.raises(bridge.InputError, match="holds character strings, not numbers"):
        bridge.read(tmp_path / "char.rds")


@pytest.mark.needs_r
def test_a_seurat_assay_covering_half_the_cells_warns(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from conftest import run_r

    run_r(f"""
        suppressMessages({{library(Matrix); library(SeuratObject)}})
        set.seed(1)
        m <- rsparsematrix(10, 80, 0.4); m@x <- abs(round(m@x * 10)) + 1
        dimnames(m) <- list(paste0("G", 1:10), paste0("c", 1:80))
        s <- CreateSeuratObject(m); a <- s@assays$RNA
        slot(a, "counts", check = FALSE) <- m[, 1:40]; slot(a, "data", check = FALSE) <- m[, 1:40]
        s@assays$RNA <- a; saveRDS(s, "{tmp_path}/half.rds")
    """)
    with caplog.at_level(logging.WARNING, logger="bridge.io.rds"):
        assert bridge.read(tmp_path / "half.rds").n_cells == 40
    assert "covers 40 of the object's 80 cells" in caplog.text


# -- references ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_table(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    out = tmp_path_factory.mktemp("ref") / "ref.parquet"
    bridge.build_reference(synthetic_cells(300, n_genes=80, seed=2), label_column="label",
                           out=out, genes_per_label=10, calibrate=False)
    return pq.read_table(out)


def _variant(table: pa.Table, path: Path, *, weight: float | None = None,
             **meta: str) -> Path:
    if weight is not None:
        n_labels = table.schema.field("weight").type.list_size
        flat = np.full(table.num_rows * n_labels, weight, dtype=np.float32)
        table = table.set_column(1, "weight", pa.FixedSizeListArray.from_arrays(
            pa.array(flat), n_labels))
    metadata = dict(table.schema.metadata)
    metadata.update({f"scbridge.{k}".encode(): v.encode() for k, v in meta.items()})
    pq.write_table(table.replace_schema_metadata(metadata), path)
    return path


@pytest.mark.parametrize(("change", "phrase"), [
    ({"weight": 3e38}, "outside the sane range"),
    ({"weight": -3e38}, "outside the sane range"),
    ({"intercepts": "[true, false, true]"}, "intercepts must hold 3 finite numbers"),
    ({"target_sum": "true"}, r"target_sum must be a positive number from 1 to 1e\+09"),
    ({"target_sum": "1e-320"}, "target_sum must be a positive number"),
    ({"training": "[" * 5000 + "]" * 5000}, "nested more than 16 levels"),
    ({"labels": "[" * 100_000 + "]" * 100_000}, "nested more than 16 levels"),
])
def test_references_outside_sane_ranges_are_refused(reference_table: pa.Table, tmp_path: Path,
                                                    change: dict, phrase: str) -> None:
    from bridge.engines.reference import load_reference

    path = _variant(reference_table, tmp_path / "bad.parquet", **change)
    with pytest.raises(bridge.FormatError, match=phrase) as caught:
        load_reference(path)
    assert caught.value.code == "invalid_reference"


def test_confidence_is_finite_at_the_limits(reference_table: pa.Table, tmp_path: Path) -> None:
    """Weights at the sane limit and extreme (valid) inputs: confidences finite in [0, 1]."""
    from bridge.engines.reference import ReferenceEngine, load_reference
    from bridge.engines.reference._engine import softmax_rows

    model = load_reference(_variant(reference_table, tmp_path / "edge.parquet", weight=1e6))
    m = synthetic_cells(50, n_genes=80, seed=9)
    m.X.data[::7] = 1e15  # the largest value the checks let through
    m = CellMatrix(m.X, m.cells, m.genes, value_kind="lognorm")
    confidence = ReferenceEngine(model).annotate(m, progress=False).column(
        "confidence").to_numpy()
    assert np.isfinite(confidence).all() and ((confidence >= 0) & (confidence <= 1)).all()
    wild = np.array([[np.inf, -np.inf, np.nan], [np.nan, np.nan, np.nan], [1e308, 1e308, 0]])
    prob = softmax_rows(wild)
    assert np.isfinite(prob).all() and np.allclose(prob.sum(axis=1), 1.0)

"""CLI: scbridge build-reference, markers and embed, end to end on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from test_reference import LABELS, labelled

import bridge
from bridge.cli import main
from bridge.cli._table_io import read_table, write_table
from bridge.engines.reference import ReferenceEngine, load_reference
from bridge.matrix import CellMatrix


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bridge.write(labelled(0), tmp_path_factory.mktemp("cli") / "train.arrow")


@pytest.fixture(scope="module")
def query() -> CellMatrix:
    return labelled(1)


def test_build_reference(train_file: Path, query: CellMatrix, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ref"  # .parquet is added
    assert main(["build-reference", str(train_file), "--label-column", "cell_type",
                 "--out", str(out), "--genes-per-label", "20", "--max-cells-per-label", "50"]) == 0
    printed = capsys.readouterr().out
    assert f"reference {out}.parquet: 4 labels" in printed
    assert "CD8 T" in printed and "50 cells" in printed
    assert "--model reference --atlas" in printed
    model = load_reference(f"{out}.parquet")
    assert model.training["genes_per_label"] == 20
    calls = ReferenceEngine(model).annotate_chunk(query)
    truth = np.asarray(query.obs.column("cell_type").to_pylist())
    assert (np.asarray(calls.labels) == truth).mean() > 0.95


def test_build_reference_errors(train_file: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["build-reference", str(train_file), "--label-column", "celltype",
                 "--out", str(tmp_path / "r.parquet")])
    assert code == 2
    err = capsys.readouterr().err
    assert "scbridge build-reference: error[not_found]:" in err and "'celltype'" in err
    assert not (tmp_path / "r.parquet").exists()
    # As a real process, the usage error of a missing required flag exits 2 too.
    done = subprocess.run([sys.executable, "-m", "bridge", "build-reference", str(train_file),
                           "--out", str(tmp_path / "r.parquet")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "--label-column" in done.stderr


def test_markers_from_groups_and_from_calls(train_file: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "markers.parquet"
    assert main(["rank-markers", str(train_file), "--groups", "cell_type", "--out", str(out),
                 "--top-n", "8"]) == 0
    printed = capsys.readouterr().out
    assert f"4 labels, 32 marker rows -> {out}" in printed
    table = pq.read_table(out)
    assert table.column_names[:6] == ["label", "gene", "score", "log2_fold_change", "p_value",
                                      "p_value_adjusted"]
    nk = table.filter(pa.compute.equal(table.column("label"), "NK"))
    assert set(nk.column("gene").to_pylist()) == {f"GENE{j}" for j in range(16, 24)}
    # The same through a calls file (CSV with cell + label, as `scbridge annotate` writes it).
    matrix = bridge.read(train_file)
    calls_csv = tmp_path / "calls.csv"
    pacsv.write_csv(pa.table({"cell": matrix.cells.tolist(),
                              "label": matrix.obs.column("cell_type").to_pylist(),
                              "confidence": np.ones(matrix.n_cells)}), calls_csv)
    out_csv = tmp_path / "markers.csv"
    assert main(["rank-markers", str(train_file), "--calls", str(calls_csv), "--out", str(out_csv),
                 "--top-n", "8", "--method", "wilcoxon", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    from_calls = pacsv.read_csv(out_csv)
    assert from_calls.num_rows == 32
    assert set(from_calls.column("gene").to_pylist()) == set(table.column("gene").to_pylist())


def test_markers_from_json_calls_with_numeric_labels(train_file: Path, tmp_path: Path) -> None:
    matrix = bridge.read(train_file)
    codes = {name: str(k) for k, name in enumerate(LABELS)}
    records = [{"cell": c, "label": codes[lab], "confidence": 1.0}
               for c, lab in zip(matrix.cells.tolist(),
                                 matrix.obs.column("cell_type").to_pylist(), strict=True)]
    calls = tmp_path / "calls.json"
    calls.write_text(json.dumps({"calls": records, "metadata": {}}))
    out = tmp_path / "m.json"
    assert main(["rank-markers", str(train_file), "--calls", str(calls), "--out", str(out),
                 "--top-n", "3", "--quiet"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["label"] for r in rows} == {"0", "1", "2", "3"}


def test_markers_errors(train_file: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rank-markers", str(train_file), "--groups", "nope", "--out",
                 str(tmp_path / "m.parquet")]) == 2
    assert "no cell metadata column 'nope'" in capsys.readouterr().err
    assert main(["rank-markers", str(train_file), "--calls", str(tmp_path / "missing.csv"),
                 "--out", str(tmp_path / "m.parquet")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["rank-markers", str(train_file), "--groups", "cell_type", "--out",
                 str(tmp_path / "m.xlsx")]) == 2
    assert "unknown table format '.xlsx'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["rank-markers", str(train_file), "--calls", str(bad), "--out",
                 str(tmp_path / "m.parquet")]) == 2
    assert "'calls' or 'rows' array" in capsys.readouterr().err


def test_embed(train_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "embedding.arrow"
    assert main(["embed", str(train_file), "--out", str(out), "--n-components", "6"]) == 0
    assert f"240 cells x 6 components -> {out}" in capsys.readouterr().out
    table = read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 6)
    expected = bridge.embed(train_file, n_components=6)
    assert table.column("embedding").equals(expected.column("embedding"))
    out_csv = tmp_path / "embedding.csv"
    assert main(["embed", str(train_file), "--out", str(out_csv), "--n-components", "3",
                 "--quiet"]) == 0
    flat = pacsv.read_csv(out_csv)
    assert flat.column_names == ["cell", "embedding_1", "embedding_2", "embedding_3"]
    first = bridge.embed(train_file, n_components=3).column("embedding")[0].as_py()
    np.testing.assert_allclose([flat.column(f"embedding_{k}")[0].as_py() for k in (1, 2, 3)],
                               first, rtol=1e-5)
    assert main(["embed", str(train_file), "--out", str(out), "--n-components", "0"]) == 2
    assert "n_components must be at least 1" in capsys.readouterr().err


def test_table_io_round_trips(tmp_path: Path) -> None:
    table = pa.table({"cell": ["a", "b"], "label": pa.array(["x", "y"]).dictionary_encode(),
                      "markers": [["G1", "G2"], []], "score": [1.5, 2.0]})
    for suffix in (".parquet", ".arrow"):
        assert read_table(write_table(table, tmp_path / f"t{suffix}")).equals(table)
    text = read_table(write_table(table, tmp_path / "t.tsv"))
    assert text.column("markers").to_pylist()[0] == "G1;G2"
    assert read_table(write_table(table, tmp_path / "t.json")).column("label").to_pylist() == \
        ["x", "y"]

"""``scbridge annotate``: every output suffix, the summary, thresholds, groups, write-back,
report, and the errors a user can cause."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from test_marker_engine import synthetic_matrix

import bridge
from bridge._annotate import annotate
from bridge.cli import main
from bridge.matrix import CellMatrix

from conftest import run_r

pytest_plugins = ["tests._server"]

TYPES = ["naive B cell", "classical monocyte", "natural killer cell",
         "naive thymus-derived CD8-positive, alpha-beta T cell"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    matrix, truth = synthetic_matrix(TYPES, n_per_type=10, seed=3)
    obs = pa.table({"cluster": pa.array(truth).dictionary_encode()})
    matrix = CellMatrix(matrix.X, matrix.cells, matrix.genes, obs=obs, source="synthetic")
    folder = tmp_path_factory.mktemp("cli_annotate")
    return {"arrow": bridge.write(matrix, folder / "cells.arrow"),
            "h5ad": bridge.write(matrix, folder / "cells.h5ad")}


def expected(path: Path, **kw) -> pa.Table:
    return annotate(str(path), progress=False, **kw)


@pytest.mark.parametrize("suffix", [".parquet", ".arrow", ".csv", ".json"])
def test_every_output_suffix(inputs, tmp_path: Path, suffix: str, capsys) -> None:
    out = tmp_path / f"calls{suffix}"
    assert main(["annotate", str(inputs["h5ad"]), "--out", str(out), "--quiet"]) == 0
    want = expected(inputs["h5ad"])
    labels = pc.cast(want.column("label"), pa.string()).to_pylist()
    if suffix == ".parquet":
        got = pq.read_table(out)
        assert got.equals(want)  # values, types and provenance metadata
    elif suffix == ".arrow":
        with pa.memory_map(str(out)) as source:
            got = pa.ipc.open_file(source).read_all()
        assert got.equals(want) and got.schema.metadata == want.schema.metadata
    elif suffix == ".csv":
        got = pcsv.read_csv(out)
        assert got.column("label").to_pylist() == labels
        first = want.column("alternates")[0].as_py()
        text = got.column("alternates")[0].as_py()
        assert text.split(";")[0].startswith(first[0]["label"] + ":")
        assert got.column("markers")[0].as_py() == ";".join(want.column("markers")[0].as_py())
        assert "qc_pass" in got.column_names
        assert got.column("label_l1").to_pylist() == want.column("label_l1").to_pylist()
        assert set(got.column("label_l2").to_pylist()) <= {
            "lymphocyte of B lineage", "mononuclear phagocyte", "innate lymphoid cell",
            "T cell", "hematopoietic cell"}
    else:
        payload = json.loads(out.read_text())
        calls = payload["calls"]
        assert [c["label"] for c in calls] == labels
        assert [c["cell"] for c in calls] == want.column("cell").to_pylist()
        assert set(calls[0]) >= {"cell", "label", "ontology_id", "confidence", "alternates",
                                 "markers", "label_l1", "label_l2", "unknown_reason",
                                 "qc_pass", "qc_reason"}
        assert {c["label_l1"] for c in calls} == {"immune"}
        assert payload["metadata"]["tissue"]["source"] in ("inferred", "none")
        assert set(calls[0]["alternates"][0]) == {"label", "score"}
        assert payload["metadata"]["model"] == "markers"
        assert 0 < payload["metadata"]["genes_matched"] <= 1
    assert capsys.readouterr().out == ""  # --quiet


def test_summary_lists_labels_confidence_and_genes(inputs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "calls.parquet"
    assert main(["annotate", str(inputs["arrow"]), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "40 cells, mean confidence" in printed.out
    assert "genes matched:" in printed.out
    assert "natural killer cell" in printed.out
    assert "tissue context: " in printed.out
    assert "QC:" in printed.out
    assert f"wrote {out}" in printed.err


def test_min_confidence_groups_no_qc_chunk_size(inputs, tmp_path: Path) -> None:
    out = tmp_path / "calls.parquet"
    args = ["annotate", str(inputs["h5ad"]), "--out", str(out), "--quiet", "--no-qc",
            "--min-confidence", "0.99", "--groups", "cluster", "--chunk-size", "7"]
    assert main(args) == 0
    got = pq.read_table(out)
    assert "qc_pass" not in got.column_names
    assert {"label_raw", "label_smoothed", "smoothed_confidence"} <= set(got.column_names)
    want = expected(inputs["h5ad"], qc=False, min_confidence=0.99, groups="cluster")
    assert got.column("label").equals(want.column("label"))


def test_write_back_h5ad(inputs, tmp_path: Path) -> None:
    out, back = tmp_path / "calls.csv", tmp_path / "annotated.h5ad"
    assert main(["annotate", str(inputs["h5ad"]), "--out", str(out), "--quiet",
                 "--write-back", str(back)]) == 0
    adata = anndata.read_h5ad(back)
    want = expected(inputs["h5ad"], qc=False)
    assert list(adata.obs["cell_type"].astype(str)) == \
        pc.cast(want.column("label"), pa.string()).to_pylist()
    np.testing.assert_allclose(adata.obs["cell_type_confidence"],
                               want.column("confidence").to_numpy(), rtol=1e-6)
    assert adata.obs["cell_type_ontology"].iloc[0].startswith("CL:")


@pytest.mark.needs_r
def test_write_back_seurat_rds(tmp_path: Path) -> None:
    source = tmp_path / "pbmc_small.rds"
    run_r(f'saveRDS(SeuratObject::UpdateSeuratObject(SeuratObject::pbmc_small), "{source}")')
    out, back = tmp_path / "calls.json", tmp_path / "annotated.rds"
    assert main(["annotate", str(source), "--out", str(out), "--quiet", "--no-qc",
                 "--groups", "RNA_snn_res.1", "--write-back", str(back)]) == 0
    calls = json.loads(out.read_text())["calls"]
    result = run_r(f"""
        suppressMessages(library(SeuratObject))
        m <- readRDS("{back}")[[]]
        cat(as.character(m$cell_type[1:3]), sep = "|"); cat("\\n")
        cat(class(m$cell_type_confidence), m$cell_type_ontology[1], "\\n")
        cat(rownames(m)[1], nrow(m), "\\n")
    """).splitlines()
    assert result[0].split("|") == [c["label"] for c in calls[:3]]
    assert result[1].split()[0] == "numeric" and result[1].split()[1].startswith("CL:")
    assert result[2].split() == [calls[0]["cell"], "80"]
    labels = {c["label"] for c in calls}
    assert labels & {"naive B cell", "memory B cell", "B cell"}  # pbmc_small has B cells
    assert any("monocyte" in label for label in labels)


def test_tissue_flag_sets_the_context(inputs, tmp_path: Path) -> None:
    out = tmp_path / "calls.json"
    assert main(["annotate", str(inputs["arrow"]), "--out", str(out), "--quiet", "--no-qc",
                 "--tissue", "UBERON:0000178"]) == 0
    context = json.loads(out.read_text())["metadata"]["tissue"]
    assert context == {"tissues": ["blood"], "source": "given"}


def test_report(inputs, tmp_path: Path) -> None:
    out, report = tmp_path / "calls.parquet", tmp_path / "report.html"
    assert main(["annotate", str(inputs["h5ad"]), "--out", str(out), "--quiet",
                 "--report", str(report)]) == 0
    html = report.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "natural killer cell" in html
    assert "tissue context" in html


@pytest.mark.parametrize(("args", "code", "phrase"), [
    (["--out", "{tmp}/calls.xlsx"], "invalid_input", "unsupported suffix '.xlsx'"),
    (["--out", "{tmp}/calls.csv", "--model", "nope"], "unknown_model", "unknown model 'nope'"),
    (["--out", "{tmp}/calls.csv", "--groups", "nope"], "not_found", "not a cell metadata column"),
    (["--out", "{tmp}/calls.csv", "--min-confidence", "3"], "invalid_parameter",
     "min_confidence must lie"),
    (["--out", "{tmp}/calls.csv", "--model", "reference", "--tissue", "blood",
      "--atlas", "{tmp}/nope.parquet"], "unknown_parameter", "does not take 'tissue'"),
    (["--out", "{tmp}/calls.csv", "--model", "reference", "--atlas", "{tmp}/nope.parquet"],
     "not_found", "does not exist"),
    (["--out", "{tmp}/calls.csv", "--tissue", "pancreass"], "unknown_tissue",
     "did you mean 'pancreas'"),
])
def test_user_errors_exit_2_with_one_line(inputs, tmp_path: Path, capsys, args, code,
                                          phrase) -> None:
    argv = ["annotate", str(inputs["h5ad"]), "--quiet", "--no-qc",
            *[a.format(tmp=tmp_path) for a in args]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"scbridge annotate: error[{code}]:") and phrase in err
    assert len(err.strip().splitlines()) == 1


def test_missing_input_and_wrong_genes(tmp_path: Path, capsys) -> None:
    assert main(["annotate", str(tmp_path / "nope.h5ad"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    matrix, _ = synthetic_matrix(["natural killer cell"], n_per_type=5)
    wrong = CellMatrix(matrix.X, matrix.cells, [f"ENSMUSG9{i:010d}" for i in range(matrix.n_genes)])
    path = bridge.write(wrong, tmp_path / "mouse.arrow")
    assert main(["annotate", str(path), "--out", str(tmp_path / "x.csv"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "ensembl_mouse" in err and "genes" in err


def test_console_entry_point(inputs, tmp_path: Path) -> None:
    out = tmp_path / "calls.json"
    done = subprocess.run([sys.executable, "-m", "bridge", "annotate", str(inputs["arrow"]),
                           "--out", str(out), "--no-qc"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "mean confidence" in done.stdout
    assert len(json.loads(out.read_text())["calls"]) == 40


def test_endpoint_gives_the_local_calls(inputs, tmp_path: Path, live_server, monkeypatch,
                                        capsys) -> None:
    from tests._server import API_KEY

    monkeypatch.setenv("MY_SCBRIDGE_KEY", API_KEY)
    local, remote = tmp_path / "local.parquet", tmp_path / "remote.parquet"
    assert main(["annotate", str(inputs["h5ad"]), "--out", str(local), "--quiet",
                 "--no-qc"]) == 0
    assert main(["annotate", str(inputs["h5ad"]), "--out", str(remote), "--quiet", "--no-qc",
                 "--endpoint", live_server.url, "--api-key-env", "MY_SCBRIDGE_KEY",
                 "--transport", "json", "--chunk-size", "15"]) == 0
    a, b = pq.read_table(local), pq.read_table(remote)
    for name in ("cell", "label", "ontology_id", "markers"):
        assert b.column(name).to_pylist() == a.column(name).to_pylist(), name
    np.testing.assert_allclose(b.column("confidence").to_numpy(),
                               a.column("confidence").to_numpy(), rtol=1e-6)
    monkeypatch.delenv("MY_SCBRIDGE_KEY")
    assert main(["annotate", str(inputs["h5ad"]), "--out", str(remote), "--quiet", "--no-qc",
                 "--endpoint", live_server.url, "--api-key-env", "MY_SCBRIDGE_KEY"]) == 2
    assert "scbridge annotate: error[" in capsys.readouterr().err


@pytest.mark.needs_r
def test_warnings_are_one_line_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # pbmc_small keeps 230 genes: the genes-found warning goes to the user as one line.
    assert main(["annotate", "SeuratObject::pbmc_small", "--out", str(tmp_path / "c.csv"),
                 "--quiet", "--no-qc"]) == 0
    err = capsys.readouterr().err
    # (the panel's size follows the knowledge base, so the figures are not pinned)
    assert re.search(r"scbridge annotate: warning: only \d+% of the \d+ genes the 'markers' "
                     r"model for blood uses", err), err
    assert "call_cells(" not in err and "UserWarning" not in err

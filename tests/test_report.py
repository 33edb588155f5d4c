"""write_report: one self-contained HTML page with the four figures."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_reference import LABELS, labelled

import bridge
from bridge import build_reference
from bridge._contract import ChunkCalls, chunk_table, with_metadata
from bridge._report import write_report
from bridge.engines.reference import ReferenceEngine
from bridge.matrix import CellMatrix

FIGURES = ("composition", "confidence", "embedding", "dotplot")


@pytest.fixture(scope="module")
def matrix() -> CellMatrix:
    return labelled(1)


@pytest.fixture(scope="module")
def calls(matrix: CellMatrix) -> pa.Table:
    engine = ReferenceEngine(build_reference(labelled(0), label_column="cell_type"))
    table = chunk_table(matrix.cells, engine.annotate_chunk(matrix))
    table = table.append_column("qc_pass", pa.array([i % 10 != 0 for i in range(table.num_rows)]))
    return with_metadata(table, engine="reference", model="reference", atlas="ref.parquet",
                         genes_matched=0.987654)


def figure_ids(page: str) -> list[str]:
    return re.findall(r'<svg class="figure" id="(\w+)"', page)


def assert_self_contained(page: str) -> None:
    assert not re.search(r"https?://", page)  # no external resource of any kind
    assert not re.search(r"<script|<link|<iframe|<img|src=|url\(|@import", page, re.I)


def test_page_has_all_four_figures_and_nothing_external(matrix: CellMatrix, calls: pa.Table,
                                                         tmp_path: Path) -> None:
    path = write_report(tmp_path / "sub" / "report.html", matrix, calls, layout="pca")
    assert path == tmp_path / "sub" / "report.html"
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert figure_ids(page) == list(FIGURES)
    assert_self_contained(page)
    for label in LABELS:
        assert f">{label}<" in page
    # One dot per cell in the embedding (plus one legend dot per label).
    embedding = re.search(r'id="embedding".*?</svg>', page, re.S).group(0)
    assert embedding.count("<circle") == matrix.n_cells + len(set(calls.column("label")
                                                                  .to_pylist()))
    # Dot plot: the planted genes of each label.
    dotplot = re.search(r'id="dotplot".*?</svg>', page, re.S).group(0)
    for k in range(len(LABELS)):
        assert any(f">GENE{j}<" in dotplot for j in range(k * 8, k * 8 + 8))
    # Summary: provenance and QC from the calls.
    assert "<th>engine</th><td>reference</td>" in page
    assert "<th>genes matched</th><td>0.988</td>" in page
    assert "<th>QC pass</th><td>216 of 240</td>" in page


def test_labels_are_escaped(matrix: CellMatrix, calls: pa.Table, tmp_path: Path) -> None:
    hostile = ["<script>alert(1)</script>" if lab == "NK" else lab
               for lab in calls.column("label").to_pylist()]
    table = calls.set_column(1, "label", pa.array(hostile))
    page = write_report(tmp_path / "r.html", matrix, table, layout="pca").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_large_inputs_are_subsampled_for_the_pictures(matrix: CellMatrix, calls: pa.Table,
                                                      tmp_path: Path) -> None:
    page = write_report(tmp_path / "r.html", matrix, calls, layout="pca",
                        max_points=100).read_text()
    embedding = re.search(r'id="embedding".*?</svg>', page, re.S).group(0)
    n_labels = len(set(calls.column("label").to_pylist()))
    assert embedding.count("<circle") <= 100 + 2 * n_labels
    assert "of 240 cells" in page
    composition = re.search(r'id="composition".*?</svg>', page, re.S).group(0)
    counts = [int(n.replace(",", "")) for n in re.findall(r": ([\d,]+) cells</title>",
                                                          composition)]
    assert sum(counts) == 240  # composition still counts every cell


def test_other_label_column_partial_calls_and_no_confidence(matrix: CellMatrix,
                                                            tmp_path: Path) -> None:
    truth = matrix.obs.column("cell_type").to_pylist()
    plain = pa.table({"cell": matrix.cells.tolist()[:200], "group": truth[:200]})
    page = write_report(tmp_path / "r.html", matrix, plain, label_column="group",
                        layout="pca").read_text()
    assert figure_ids(page) == ["composition", "embedding", "dotplot"]  # nothing to box-plot
    assert "(200 with a call)" in page
    assert_self_contained(page)


def test_one_label_and_a_file_source(matrix: CellMatrix, tmp_path: Path) -> None:
    source = bridge.write(matrix, tmp_path / "m.arrow")
    one = chunk_table(matrix.cells, ChunkCalls(labels=["T cell"] * matrix.n_cells,
                                               confidence=np.full(matrix.n_cells, 0.5)))
    page = write_report(tmp_path / "r.html", source, one, layout="pca").read_text()
    assert figure_ids(page) == ["composition", "confidence", "embedding"]  # no markers of 1


def test_errors(matrix: CellMatrix, calls: pa.Table, tmp_path: Path) -> None:
    with pytest.raises(bridge.InputError, match="none of the called cells"):
        write_report(tmp_path / "r.html", matrix,
                     calls.set_column(0, "cell", pa.array([f"x{i}" for i in range(240)])))
    with pytest.raises(bridge.InputError, match="calls need columns 'cell' and 'label_smoothed'"):
        write_report(tmp_path / "r.html", matrix, calls, label_column="label_smoothed")
    with pytest.raises(bridge.InputError, match="layout method"):
        write_report(tmp_path / "r.html", matrix, calls, layout="mds")
    assert not (tmp_path / "r.html").exists()


def test_tiny_input_leaves_the_embedding_out(tmp_path: Path) -> None:
    import scipy.sparse as sp

    X = sp.csr_matrix(np.array([[3, 0, 1, 0], [0, 2, 0, 0], [1, 0, 0, 4], [0, 5, 0, 0],
                                [2, 0, 0, 0]], dtype=np.float32))
    tiny = CellMatrix(X, [f"c{i}" for i in range(5)], ["A", "B", "C", "D"])
    calls = chunk_table(tiny.cells, ChunkCalls(labels=["x", "y", "x", "y", "x"],
                                               confidence=np.full(5, 0.9)))
    page = write_report(tmp_path / "r.html", tiny, calls, layout="pca").read_text()
    assert "composition" in figure_ids(page)
    assert_self_contained(page)

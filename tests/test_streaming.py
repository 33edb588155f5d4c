"""Large single files annotated chunk by chunk, and 64-bit offsets (Arrow ``large_list``, h5ad
int64 ``indptr``) past 2**31 values, exercised by lowering the offset limit."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pytest
from _atlas import counts

import bridge
import bridge._arrow_csr as arrow_csr
from bridge.io.arrow import read_arrow, write_arrow

CALLS = ["cell", "label", "ontology_id", "confidence", "alternates", "markers"]


@pytest.fixture(scope="module")
def cells() -> bridge.CellMatrix:
    return counts(650, seed=3)


@pytest.fixture(scope="module")
def whole(cells: bridge.CellMatrix) -> pa.Table:
    """The calls of the matrix in memory: what every streamed path must give."""
    return bridge.annotate(cells, qc=False, progress=False).select(CALLS)


def _assert_same_calls(calls: pa.Table, whole: pa.Table) -> None:
    """The same labels, ids, alternates and markers; confidences and scores within float32
    rounding (the engine's sums run over blocks of other sizes)."""
    got, want = calls.select(CALLS).to_pylist(), whole.select(CALLS).to_pylist()
    assert [r["cell"] for r in got] == [r["cell"] for r in want]
    for a, b in zip(got, want, strict=True):
        assert (a["label"], a["ontology_id"], a["markers"]) == \
            (b["label"], b["ontology_id"], b["markers"])
        assert [x["label"] for x in a["alternates"]] == [x["label"] for x in b["alternates"]]
        scores = [a["confidence"], *(x["score"] for x in a["alternates"])]
        expected = [b["confidence"], *(x["score"] for x in b["alternates"])]
        np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-7)


def _schema(path: Path) -> pa.Schema:
    return pa.ipc.open_file(path).schema


def test_h5ad_is_annotated_chunk_by_chunk(cells: bridge.CellMatrix, whole: pa.Table,
                                          tmp_path: Path) -> None:
    path = tmp_path / "atlas.h5ad"
    bridge.write(cells, path)
    chunks = list(bridge.read_chunks(path, 250))
    assert [c.n_cells for c in chunks] == [250, 250, 150]
    chunks = list(bridge.read_chunks(path, 250, balanced=True))
    assert [c.n_cells for c in chunks] == [217, 217, 216]  # near-equal, at most 250
    calls = bridge.annotate(path, chunk_size=250, qc=False, progress=False)
    assert calls.select(CALLS).equals(whole)
    meta = calls.schema.metadata
    assert meta[b"scbridge.streamed_chunks"] == b"3"
    assert b"backed" in meta[b"scbridge.source"]
    assert meta[b"scbridge.n_cells"] == b"650"


def test_qc_is_computed_per_chunk_and_recorded(cells: bridge.CellMatrix, tmp_path: Path) -> None:
    path = tmp_path / "atlas.arrow"
    write_arrow(cells, path)
    calls = bridge.annotate(path, chunk_size=300, progress=False)
    # Per-cell QC metrics do not depend on the chunking; annotate leaves doublet scores to
    # bridge.qc(), and says so once for all chunks.
    expected = bridge.qc(cells)
    assert calls.column("total_counts").equals(expected.column("total_counts"))
    assert calls.column("n_genes").equals(expected.column("n_genes"))
    assert calls.column("doublet_score").null_count == calls.num_rows
    notes = json.loads(calls.schema.metadata[b"scbridge.qc_thresholds"])
    assert notes["doublets"].startswith("not computed by annotate")
    assert b"scbridge.qc_scope" not in calls.schema.metadata
    # A QC table from bridge.qc() (doublet scores of the whole matrix) is attached as it is.
    attached = bridge.annotate(path, chunk_size=300, qc=expected, progress=False)
    assert attached.column("doublet_score").equals(expected.column("doublet_score"))


def test_balanced_chunks_hold_a_bounded_number_of_values(
        cells: bridge.CellMatrix, whole: pa.Table, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import bridge.io._chunks as chunks_module

    monkeypatch.setattr(chunks_module, "MAX_CHUNK_VALUES", 27_500)  # as if the cells were deep
    assert -(-cells.nnz // 27_500) == 6
    path = tmp_path / "atlas.arrow"
    write_arrow(cells, path)
    chunks = list(bridge.read_chunks(path, 50_000, balanced=True))
    assert len(chunks) == 6 and max(c.n_cells for c in chunks) - min(c.n_cells for c in chunks) <= 1
    assert [c.n_cells for c in bridge.read_chunks(path, 50_000)] == [650]  # as asked
    calls = bridge.annotate(path, qc=False, progress=False)
    assert calls.select(CALLS).equals(whole)
    assert calls.schema.metadata[b"scbridge.streamed_chunks"] == b"6"


def test_arrow_batches_stream_as_views_on_the_memory_map(cells: bridge.CellMatrix,
                                                         whole: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "atlas.arrow"
    write_arrow(cells, path, chunk_size=200)  # four record batches
    chunks = list(bridge.read_chunks(path, 150, balanced=True))
    assert [c.n_cells for c in chunks] == [100, 100, 100, 100, 100, 100, 50]
    mapped = chunks[0].keepalive
    assert isinstance(mapped, pa.MemoryMappedFile)
    mapped.seek(0)
    whole_map = mapped.read_buffer(mapped.size())
    for chunk in chunks:
        for array in (chunk.X.data, chunk.X.indices):
            address = array.__array_interface__["data"][0]
            assert whole_map.address <= address < whole_map.address + whole_map.size
    calls = bridge.annotate(path, chunk_size=150, qc=False, progress=False)
    assert calls.select(CALLS).equals(whole)
    assert calls.schema.metadata[b"scbridge.streamed_chunks"] == b"7"


def test_a_large_list_file_streams_with_32_bit_chunk_offsets(
        cells: bridge.CellMatrix, whole: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "large.arrow"
    write_arrow(cells, path, offsets="int64")
    assert pa.types.is_large_list(_schema(path).field("indices").type)
    assert read_arrow(path).X.indptr.dtype == np.int64
    chunks = list(bridge.read_chunks(path, 200))
    assert {c.X.indptr.dtype for c in chunks} == {np.dtype(np.int32)}
    assert np.array_equal(np.concatenate([c.cells for c in chunks]), cells.cells)
    calls = bridge.annotate(path, chunk_size=200, qc=False, progress=False)
    assert calls.select(CALLS).equals(whole)


def test_past_the_offset_limit_files_and_chunks_keep_64_bit_offsets(
        cells: bridge.CellMatrix, whole: pa.Table, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    limit = 1000  # pretend 2**31 - 1 is 1,000 values: every chunk of 10 cells exceeds it
    monkeypatch.setattr(arrow_csr, "INT32_MAX", limit)
    path = tmp_path / "atlas.arrow"
    write_arrow(cells, path)  # offsets="auto"
    assert pa.types.is_large_list(_schema(path).field("values").type)
    chunks = list(bridge.read_chunks(path, 10))
    assert all(c.nnz > limit for c in chunks)
    assert {c.X.indptr.dtype for c in chunks} == {np.dtype(np.int64)}
    calls = bridge.annotate(path, chunk_size=10, qc=False, progress=False)
    _assert_same_calls(calls, whole)  # chunks of 10 cells: float32 sums in another order

    # Batches joined into one CSR past the limit get 64-bit offsets, added in 64 bits.
    monkeypatch.setattr(arrow_csr, "INT32_MAX", cells.nnz)
    write_arrow(cells, tmp_path / "batches.arrow", chunk_size=100)  # 32-bit lists
    monkeypatch.setattr(arrow_csr, "INT32_MAX", limit)
    assert pa.types.is_list(_schema(tmp_path / "batches.arrow").field("values").type)
    joined = read_arrow(tmp_path / "batches.arrow")
    assert joined.X.indptr.dtype == np.int64
    assert np.array_equal(joined.X.indptr, cells.X.indptr)

    # Streaming conversion picks large_list from the input's total values, before the
    # first batch is written; a file within the limit keeps 32-bit lists.
    from bridge.cli._convert import convert

    bridge.write(cells, tmp_path / "atlas.h5ad")
    out = convert(str(tmp_path / "atlas.h5ad"), str(tmp_path / "converted.arrow"),
                  chunk_size=100)
    assert pa.types.is_large_list(_schema(out).field("indices").type)
    assert read_arrow(out).X.nnz == cells.nnz
    monkeypatch.setattr(arrow_csr, "INT32_MAX", cells.nnz)
    out = convert(str(tmp_path / "atlas.h5ad"), str(tmp_path / "small.arrow"), chunk_size=100)
    assert pa.types.is_list(_schema(out).field("indices").type)


def _h5ad_with_int64_indptr(cells: bridge.CellMatrix, path: Path) -> None:
    adata = cells.to_anndata()
    X = adata.X.copy()
    X.indptr = X.indptr.astype(np.int64)
    X.indices = X.indices.astype(np.int64)
    adata.X = X
    adata.write_h5ad(path)
    with h5py.File(path) as handle:
        assert handle["X/indptr"].dtype == np.int64


def test_h5ad_with_int64_indptr_is_annotated_chunk_by_chunk(
        cells: bridge.CellMatrix, whole: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "int64.h5ad"
    _h5ad_with_int64_indptr(cells, path)
    chunks = list(bridge.read_chunks(path, 100))
    # Each chunk's offsets start at 0 again: 32 bits, whatever the file's indptr holds.
    assert {c.X.indptr.dtype for c in chunks} == {np.dtype(np.int32)}
    assert sum(c.nnz for c in chunks) == cells.nnz
    calls = bridge.annotate(path, chunk_size=100, qc=False, progress=False)
    assert calls.select(CALLS).equals(whole)


def test_a_cell_id_repeated_in_another_chunk_is_refused(cells: bridge.CellMatrix,
                                                        tmp_path: Path) -> None:
    ids = cells.cells.copy()
    ids[600] = ids[5]  # in different chunks: each chunk alone is fine
    copy = bridge.CellMatrix(cells.X, ids, cells.genes, validate=False)
    write_arrow(copy, tmp_path / "dup.arrow", chunk_size=300)
    with pytest.raises(bridge.InputError, match=f"cell id '{ids[5]}' appears more than once") \
            as caught:
        bridge.annotate(tmp_path / "dup.arrow", chunk_size=300, qc=False, progress=False)
    assert caught.value.code == "invalid_cells"


def test_a_csc_h5ad_is_read_whole_and_says_so(cells: bridge.CellMatrix, whole: pa.Table,
                                              tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    adata = cells.to_anndata()
    adata.X = adata.X.tocsc()
    adata.write_h5ad(tmp_path / "csc.h5ad")
    with caplog.at_level(logging.WARNING, logger="bridge.io.h5ad"):
        calls = bridge.annotate(tmp_path / "csc.h5ad", chunk_size=200, qc=False,
                                progress=False)
    assert "stored by genes (CSC)" in caplog.text
    assert calls.select(CALLS).equals(whole)


def test_cli_annotates_a_large_file_without_partitioning(
        cells: bridge.CellMatrix, whole: pa.Table, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow.parquet as pq

    from bridge.cli import main

    path = tmp_path / "atlas.h5ad"
    bridge.write(cells, path)
    out = tmp_path / "calls.parquet"
    assert main(["annotate", str(path), "--chunk-size", "200", "--no-qc", "--out",
                 str(out)]) == 0
    calls = pq.read_table(out)
    assert calls.select(CALLS).cast(whole.schema).equals(whole)
    assert calls.schema.metadata[b"scbridge.streamed_chunks"] == b"4"
    assert "650 cells" in capsys.readouterr().out
    assert main(["annotate", str(path), "--resume", "--out", str(out)]) == 2
    assert "go with a partitioned data set" in capsys.readouterr().err


@pytest.mark.needs_r
def test_r_targets_refuse_past_the_offset_limit(cells: bridge.CellMatrix, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import bridge._validate as validate
    from bridge.cli import main

    monkeypatch.setattr(validate, "INT32_MAX", cells.nnz - 1)
    write_arrow(cells, tmp_path / "atlas.arrow")
    assert main(["convert", str(tmp_path / "atlas.arrow"), str(tmp_path / "atlas.rds")]) == 2
    err = capsys.readouterr().err
    assert "error[too_large]" in err and "32-bit integers" in err
    assert not (tmp_path / "atlas.rds").exists()


# -- the plan from cells spread over the file ------------------------------------------------
@pytest.fixture(scope="module")
def blood_then_liver() -> bridge.CellMatrix:
    """3,000 blood cells, then 1,500 liver cells: a file sorted by tissue, whose first cells
    are not typical of it."""
    from test_marker_engine import synthetic_matrix

    blood, _ = synthetic_matrix(["classical monocyte", "natural killer cell", "naive B cell"],
                                n_per_type=1000, seed=6)
    liver, _ = synthetic_matrix(["hepatocyte", "Kupffer cell", "hepatic stellate cell"],
                                n_per_type=500, seed=7)
    import scipy.sparse as sp

    cells = [f"b{i}" for i in range(blood.n_cells)] + [f"l{i}" for i in range(liver.n_cells)]
    return bridge.CellMatrix(sp.vstack([blood.X, liver.X], format="csr"), cells, blood.genes)


@pytest.mark.parametrize("suffix", [".arrow", ".h5ad"])
def test_a_streamed_file_is_planned_on_cells_spread_over_it(
        blood_then_liver: bridge.CellMatrix, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"sorted{suffix}"
    if suffix == ".arrow":
        write_arrow(blood_then_liver, path, chunk_size=700)  # several batches
    else:
        bridge.write(blood_then_liver, path)
    whole = bridge.annotate(blood_then_liver, qc=False, progress=False)
    streamed = bridge.annotate(path, chunk_size=1000, qc=False, progress=False)
    assert streamed.column("cell").to_pylist() == whole.column("cell").to_pylist()
    meta = streamed.schema.metadata
    assert meta[b"scbridge.streamed_chunks"] != b"1"
    # the first 2,000 cells are all blood: planned on them, the context would be blood
    context = json.loads(meta[b"scbridge.tissue"])
    assert context == json.loads(whole.schema.metadata[b"scbridge.tissue"])
    assert "liver" in context["tissues"]
    _assert_same_calls(streamed, whole)
    # the cells the engine samples from the matrix in memory, read without the others
    sample = bridge.io.read_sample(path, 2000)
    runs = bridge.numerics.spread_runs(blood_then_liver.n_cells, 2000)
    expected = [c for a, b in runs for c in blood_then_liver.cells[a:b]]
    assert sample is not None and list(sample.cells) == expected
    assert (sample.X != blood_then_liver.X[[int(np.flatnonzero(
        blood_then_liver.cells == c)[0]) for c in expected]]).nnz == 0

"""Arrow CSR files and streams: round trips (property-based), zero copy, and bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bridge
from bridge.io.arrow import FORMAT_VERSION, read_arrow, write_arrow


def make_matrix(n_cells: int, n_genes: int, density: float, seed: int, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = sp.random(n_cells, n_genes, density=density, format="csr", random_state=rng,
                  data_rvs=lambda n: rng.integers(1, 50, n)).astype(dtype)
    cells = [f"c{i}" for i in range(n_cells)]
    genes = [f"G{j}" for j in range(n_genes)]
    return bridge.CellMatrix(X, cells, genes, validate=False)


@st.composite
def matrices(draw):
    n_cells = draw(st.integers(0, 40))
    n_genes = draw(st.integers(1, 30))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    seed = draw(st.integers(0, 2**16))
    dtype = draw(st.sampled_from([np.float64, np.float32, np.int32]))
    return make_matrix(n_cells, n_genes, density, seed, dtype)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(matrix=matrices(), offsets=st.sampled_from(["int32", "int64"]),
       stream=st.booleans(), chunk=st.sampled_from([None, 1, 7]))
def test_csr_arrow_round_trip(tmp_path_factory, matrix, offsets, stream, chunk) -> None:
    path = tmp_path_factory.mktemp("rt") / ("m.arrows" if stream else "m.arrow")
    write_arrow(matrix, path, offsets=offsets, chunk_size=chunk)
    back = read_arrow(path, validate=matrix.n_cells > 0)
    assert back.shape == matrix.shape
    assert list(back.cells) == list(matrix.cells)
    assert list(back.genes) == list(matrix.genes)
    assert back.X.dtype == matrix.X.dtype
    np.testing.assert_array_equal(back.X.toarray(), matrix.X.toarray())
    np.testing.assert_array_equal(back.X.indptr, matrix.X.indptr)
    schema = pa.ipc.open_stream(path).schema if stream else pa.ipc.open_file(path).schema
    assert pa.types.is_large_list(schema.field("indices").type) == (offsets == "int64")


def test_single_batch_file_is_memory_mapped_zero_copy(tmp_path: Path) -> None:
    matrix = make_matrix(200, 50, 0.2, 1)
    write_arrow(matrix, tmp_path / "m.arrow")
    back = read_arrow(tmp_path / "m.arrow")
    mm = back.keepalive
    assert isinstance(mm, pa.MemoryMappedFile)
    mm.seek(0)
    mapped = mm.read_buffer(mm.size())  # a zero-copy slice of the whole map
    lo, hi = mapped.address, mapped.address + mapped.size
    for array in (back.X.data, back.X.indices, back.X.indptr):
        address = array.__array_interface__["data"][0]
        assert lo <= address < hi, "CSR array is not backed by the memory map"


def test_reading_an_empty_matrix_is_an_input_error(tmp_path: Path) -> None:
    write_arrow(make_matrix(0, 5, 0.0, 0), tmp_path / "empty.arrow")
    assert read_arrow(tmp_path / "empty.arrow", validate=False).shape == (0, 5)
    with pytest.raises(bridge.InputError, match="0 cells and 5 genes"):
        bridge.read(tmp_path / "empty.arrow")


def test_chunks_are_views(tmp_path: Path) -> None:
    matrix = make_matrix(100, 20, 0.3, 2)
    chunks = list(matrix.iter_chunks(30))
    assert [c.n_cells for c in chunks] == [30, 30, 30, 10]
    for chunk in chunks:
        assert np.shares_memory(chunk.X.data, matrix.X.data)
        assert np.shares_memory(chunk.X.indices, matrix.X.indices)
    np.testing.assert_array_equal(
        sp.vstack([c.X for c in chunks]).toarray(), matrix.X.toarray())


def test_64bit_offsets_are_chosen_automatically_past_int32(monkeypatch) -> None:
    import bridge._arrow_csr as arrow_csr

    monkeypatch.setattr(arrow_csr, "INT32_MAX", 10)  # pretend 2**31 - 1 is 10 non-zeros
    assert arrow_csr.needs_large(11, "auto")
    assert not arrow_csr.needs_large(10, "auto")
    with pytest.raises(bridge.InputError, match="do not fit 32-bit offsets"):
        arrow_csr.needs_large(11, "int32")


def test_obs_columns_travel_with_the_matrix(tmp_path: Path) -> None:
    matrix = make_matrix(4, 3, 0.5, 3)
    group = pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 0], pa.int32()),
                                           pa.array(["b", "a", "unused"]))
    matrix.obs = pa.table({"group": group, "score": [1.0, 2.0, 3.0, None]})
    write_arrow(matrix, tmp_path / "m.arrow")
    back = read_arrow(tmp_path / "m.arrow")
    got = back.obs.column("group").combine_chunks()
    assert got.dictionary.to_pylist() == ["b", "a", "unused"]
    assert got.to_pylist() == ["b", "a", None, "b"]
    assert back.obs.column("score").to_pylist() == [1.0, 2.0, 3.0, None]


def test_truncated_file_is_a_format_error(tmp_path: Path) -> None:
    write_arrow(make_matrix(50, 10, 0.3, 4), tmp_path / "m.arrow")
    data = (tmp_path / "m.arrow").read_bytes()
    (tmp_path / "cut.arrow").write_bytes(data[: len(data) // 2])
    with pytest.raises(bridge.FormatError, match="truncated|ends early"):
        bridge.read(tmp_path / "cut.arrow")


def test_foreign_arrow_file_is_a_format_error(tmp_path: Path) -> None:
    table = pa.table({"x": [1, 2, 3]})
    with pa.ipc.new_file(str(tmp_path / "other.arrow"), table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(bridge.FormatError, match="not an scbridge Arrow CSR file"):
        bridge.read(tmp_path / "other.arrow")


def test_unknown_major_version_is_refused(tmp_path: Path) -> None:
    matrix = make_matrix(5, 4, 0.5, 5)
    schema = bridge.io.arrow.arrow_schema(matrix)
    meta = dict(schema.metadata)
    meta[b"scbridge.format_version"] = b"2.0"
    schema = schema.with_metadata(meta)
    batches = list(bridge.io.arrow.batches_from_matrix(matrix, schema=schema))
    bridge.io.arrow.write_batches(schema, batches, tmp_path / "v2.arrow", stream=False)
    with pytest.raises(bridge.FormatError, match="version 2.0"):
        bridge.read(tmp_path / "v2.arrow")
    # A newer minor version of the same major is read.
    meta[b"scbridge.format_version"] = f"{FORMAT_VERSION.split('.')[0]}.9".encode()
    schema = schema.with_metadata(meta)
    bridge.io.arrow.write_batches(schema, batches, tmp_path / "v19.arrow", stream=False)
    assert bridge.read(tmp_path / "v19.arrow").n_cells == 5


def test_mismatched_lists_are_a_format_error(tmp_path: Path) -> None:
    matrix = make_matrix(3, 4, 1.0, 6)
    schema = bridge.io.arrow.arrow_schema(matrix)
    batch = pa.RecordBatch.from_arrays([
        pa.array(["a", "b", "c"]),
        pa.array([[0, 1], [2], [3]], pa.list_(pa.int32())),
        pa.array([[1.0], [2.0, 3.0], [4.0]], pa.list_(pa.float64())),
    ], schema=schema)
    bridge.io.arrow.write_batches(schema, [batch], tmp_path / "bad.arrow", stream=False)
    with pytest.raises(bridge.FormatError, match="differ in length"):
        bridge.read(tmp_path / "bad.arrow")


def test_out_of_range_gene_index_is_an_input_error(tmp_path: Path) -> None:
    matrix = make_matrix(2, 3, 1.0, 7)
    schema = bridge.io.arrow.arrow_schema(matrix)
    batch = pa.RecordBatch.from_arrays([
        pa.array(["a", "b"]),
        pa.array([[0, 7], [1]], pa.list_(pa.int32())),
        pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float64())),
    ], schema=schema)
    bridge.io.arrow.write_batches(schema, [batch], tmp_path / "bad.arrow", stream=False)
    with pytest.raises(bridge.InputError, match="gene index 7 is out of range for 3 genes"):
        bridge.read(tmp_path / "bad.arrow")


def test_gene_ids_are_json_in_column_order(tmp_path: Path) -> None:
    matrix = make_matrix(3, 4, 0.5, 8)
    write_arrow(matrix, tmp_path / "m.arrow")
    meta = pa.ipc.open_file(tmp_path / "m.arrow").schema.metadata
    assert json.loads(meta[b"scbridge.genes"]) == ["G0", "G1", "G2", "G3"]
    assert meta[b"scbridge.format"] == b"scbridge.arrow-csr"

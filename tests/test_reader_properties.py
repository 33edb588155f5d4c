"""Property tests: whatever the bytes, a reader reads them correctly or raises a BridgeError,
in bounded memory.

Hypothesis builds damaged and hostile variants of every format scbridge reads from strangers
(Arrow CSR files, the JSON and Arrow request bodies, ``.h5ad``, 10x Matrix Market headers,
reference Parquet files).  For each one the reader must either return a valid result or raise
a :class:`~bridge.BridgeError`; any other exception fails.  Memory is bounded by the process's
peak resident size during the example (Linux resets it through ``/proc/self/clear_refs``), so
native allocations (pyarrow, HDF5, scipy's parser) count, not just Python's.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bridge
from bridge._contract.wire import decode_arrow_request, decode_json_request, matrix_arrow_body
from bridge.matrix import CellMatrix

PEAK_GROWTH_MB = 300  # a bomb would need gigabytes; real reads of these inputs need a few MB
# SCBRIDGE_PROPERTY_EXAMPLES=1000 for a deeper search than the test suite's default.
PROPERTY = settings(max_examples=int(os.environ.get("SCBRIDGE_PROPERTY_EXAMPLES", "40")),
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def reads_or_refuses(read: Callable[[], Any]) -> Any:
    """Run ``read``: its result, or ``None`` when it raised a BridgeError; anything else (and
    a peak memory growth beyond the bound) fails the test."""
    clear = Path("/proc/self/clear_refs")
    measured = clear.exists() and os.access(clear, os.W_OK)
    if measured:
        clear.write_text("5")  # reset VmHWM to the current resident size
    start = _status_kb("VmRSS")
    try:
        result = read()
    except bridge.BridgeError as exc:
        assert exc.code and str(exc), "a BridgeError without a code or message"
        result = None
    if measured:
        growth = (_status_kb("VmHWM") - start) / 1024
        assert growth < PEAK_GROWTH_MB, f"peak memory grew by {growth:.0f} MB"
    return result


def small_matrix(n_cells: int = 12, n_genes: int = 9, seed: int = 0) -> CellMatrix:
    rng = np.random.default_rng(seed)
    X = sp.random(n_cells, n_genes, density=0.4, format="csr", random_state=rng)
    X.data = np.ceil(X.data * 9)
    return CellMatrix(X, [f"c{i}" for i in range(n_cells)], [f"G{j}" for j in range(n_genes)],
                      source="property test")


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="scbridge-properties-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def mutate(data: bytes, draw: Any) -> bytes:
    """Truncate, overwrite or insert bytes at positions hypothesis picks."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "overwrite", "insert", "int32"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "truncate":
            del data[at:]
        elif kind == "overwrite":
            data[at:at + 1] = bytes([draw(st.integers(0, 255))])
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:  # plant a large or negative 32-bit number (lengths, offsets)
            value = draw(st.sampled_from([-1, 2**31 - 1, 2**30, 65536, 0]))
            data[at:at + 4] = int(value).to_bytes(4, "little", signed=True)
    return bytes(data)


# -- Arrow CSR files --------------------------------------------------------------------------
def _arrow_file_bytes(stream: bool) -> bytes:
    sink = pa.BufferOutputStream()
    from bridge.io.arrow import write_arrow

    write_arrow(small_matrix(), sink, stream=stream, chunk_size=5)
    return sink.getvalue().to_pybytes()


ARROW_FILE = _arrow_file_bytes(stream=False)
ARROW_STREAM = _arrow_file_bytes(stream=True)


@PROPERTY
@given(data=st.data(), stream=st.booleans())
def test_arrow_csr_files(workdir: Path, data: st.DataObject, stream: bool) -> None:
    content = mutate(ARROW_STREAM if stream else ARROW_FILE, data.draw)
    path = workdir / ("damaged.arrows" if stream else "damaged.arrow")
    path.write_bytes(content)
    matrix = reads_or_refuses(lambda: bridge.read(path))
    if matrix is not None:
        assert matrix.n_cells == len(matrix.cells) and matrix.n_genes == len(matrix.genes)
    reads_or_refuses(lambda: bridge.describe(path))


_VALUE_TYPES = [pa.float32(), pa.float64(), pa.int32(), pa.int64(), pa.float16(), pa.string(),
                pa.uint8(), pa.bool_()]


@PROPERTY
@given(value_type=st.sampled_from(_VALUE_TYPES), large=st.booleans(),
       cell_type=st.sampled_from([pa.string(), pa.int64(), pa.large_string(), pa.binary()]),
       genes=st.one_of(st.just(None), st.recursive(
           st.none() | st.booleans() | st.integers() | st.text(max_size=5),
           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3),
                                                                      inner, max_size=3),
           max_leaves=20)),
       depth=st.sampled_from([0, 0, 3, 100_000]))
def test_arrow_csr_schemas(workdir: Path, value_type: pa.DataType, large: bool,
                           cell_type: pa.DataType, genes: Any, depth: int) -> None:
    """Every column type and metadata a stranger could put in the schema."""
    m = small_matrix()
    good = pa.ipc.open_file(ARROW_FILE).read_all().combine_chunks()
    values = good.column("values").chunk(0)
    list_type = pa.LargeListArray if large else pa.ListArray
    offsets = values.offsets.to_numpy().astype(np.int64 if large else np.int32)
    cast_values = pa.array(values.values.to_numpy().astype(np.float64)).cast(
        value_type, safe=False) if value_type != pa.string() else pa.array(
        [str(v) for v in values.values.to_pylist()])
    table = good.set_column(2, "values", list_type.from_arrays(pa.array(offsets), cast_values))
    cells = pa.array([str(c) for c in m.cells]).cast(cell_type) if cell_type != pa.int64() \
        else pa.array(range(m.n_cells))
    table = table.set_column(0, "cell", cells)
    meta = dict(good.schema.metadata)
    if depth:
        meta[b"scbridge.genes"] = b"[" * depth + b"]" * depth
    elif genes is not None:
        meta[b"scbridge.genes"] = json.dumps(genes).encode()
    table = table.replace_schema_metadata(meta)
    path = workdir / "schema.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    matrix = reads_or_refuses(lambda: bridge.read(path))
    if matrix is not None:  # only the documented layout reads
        assert value_type in (pa.float32(), pa.float64(), pa.int32())
        assert cell_type == pa.string()
        assert not large  # 'indices' is a 32-bit list: 'values' must be one too
        expected = genes if genes is not None and not depth else [str(g) for g in m.genes]
        assert list(matrix.genes) == expected


# -- request bodies ---------------------------------------------------------------------------
_JSON_SCALARS = st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats() | \
    st.text(max_size=4)


@st.composite
def json_payloads(draw: Any) -> bytes:
    """The tutorial's payload with any field replaced by something else."""
    m = small_matrix(seed=draw(st.integers(0, 5)))
    payload: dict[str, Any] = {
        "genes": [str(g) for g in m.genes],
        "matrix": {"indptr": m.X.indptr.tolist(), "indices": m.X.indices.tolist(),
                   "data": m.X.data.tolist(), "shape": list(m.X.shape)},
        "model": "reference",
    }
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["genes", "indptr", "indices", "data", "shape", "top"]))
        junk = draw(st.recursive(_JSON_SCALARS, lambda inner: st.lists(inner, max_size=5),
                                 max_leaves=10))
        if not isinstance(payload, dict):  # an earlier step replaced the whole body
            break
        if where == "top":
            payload = junk if draw(st.booleans()) else {**payload, "extra": junk}
        elif where == "genes":
            payload["genes"] = junk
        else:
            big = draw(st.sampled_from([junk, [2**31] * 3, [10**12, 10**12], [-1, 0, 5]]))
            payload["matrix"][where] = big
    text = json.dumps(payload, allow_nan=True)
    if draw(st.booleans()):
        return mutate(text.encode(), draw)
    return text.encode()


@PROPERTY
@given(body=json_payloads())
def test_json_request_bodies(body: bytes) -> None:
    request = reads_or_refuses(lambda: decode_json_request(body, max_cells=1000))
    if request is not None:
        request.matrix.validate()


ARROW_BODY = matrix_arrow_body(small_matrix())


@PROPERTY
@given(data=st.data())
def test_arrow_request_bodies(data: st.DataObject) -> None:
    body = mutate(ARROW_BODY, data.draw)
    request = reads_or_refuses(lambda: decode_arrow_request(body, max_cells=1000,
                                                            label_column=None))
    if request is not None:
        request.matrix.validate()


# -- h5ad ---------------------------------------------------------------------------------------
H5AD_MUTATIONS = ["shape", "indptr", "indices", "obs_index", "encoding", "declared", "drop_x",
                  "dense_shape", "truncate", "none"]


@pytest.fixture(scope="module")
def good_h5ad(workdir: Path) -> Path:
    path = workdir / "good.h5ad"
    small_matrix().to_anndata().write_h5ad(path)
    return path


@PROPERTY
@given(mutations=st.lists(st.sampled_from(H5AD_MUTATIONS), min_size=1, max_size=3, unique=True),
       number=st.sampled_from([0, 1, 2**31, 2**40, -5]), cut=st.floats(0.0, 1.0))
def test_h5ad_files(workdir: Path, good_h5ad: Path, mutations: list[str], number: int,
                    cut: float) -> None:
    import h5py

    path = workdir / "damaged.h5ad"
    shutil.copyfile(good_h5ad, path)
    with h5py.File(path, "r+") as f:
        for mutation in mutations:
            if "X" not in f:
                break
            X = f["X"]
            if mutation == "shape" and isinstance(X, h5py.Group):
                X.attrs["shape"] = np.array([number, 9])
            elif mutation == "indptr" and isinstance(X, h5py.Group):
                indptr = X["indptr"][...]
                indptr[len(indptr) // 2] = number
                del X["indptr"]
                X["indptr"] = indptr
            elif mutation == "indices" and isinstance(X, h5py.Group):
                indices = X["indices"][...]
                if len(indices):
                    indices[0] = number
                del X["indices"]
                X["indices"] = indices
            elif mutation == "obs_index":
                del f["obs/_index"]
                f["obs/_index"] = np.array([b"a", b"b"])
            elif mutation == "encoding" and isinstance(X, h5py.Group):
                X.attrs["encoding-type"] = "csc_matrix"
            elif mutation == "declared":
                f.create_dataset("uns/bomb", shape=(max(abs(number), 1), 10**6), dtype="f8",
                                 chunks=(1, 1000), compression="gzip")
            elif mutation == "drop_x":
                del X, f["X"]
            elif mutation == "dense_shape":
                del X, f["X"]
                f.create_dataset("X", shape=(12, max(abs(number), 1) % 10**7 + 1), dtype="f4",
                                 chunks=True, compression="gzip")
    if "truncate" in mutations:
        content = path.read_bytes()
        path.write_bytes(content[: int(len(content) * cut)])
    reads_or_refuses(lambda: bridge.read(path))
    reads_or_refuses(lambda: bridge.describe(path))


# -- 10x Matrix Market headers --------------------------------------------------------------------
@PROPERTY
@given(banner=st.sampled_from(["%%MatrixMarket matrix coordinate integer general",
                               "%%MatrixMarket matrix coordinate real general",
                               "%%MatrixMarket matrix array real general",
                               "%%MatrixMarket matrix coordinate integer symmetric",
                               "%%matrixmarket matrix coordinate pattern general",
                               "not a banner", ""]),
       rows=st.sampled_from([0, 1, 3, 230, 2**31, 10**12, -1]),
       columns=st.sampled_from([0, 2, 4, 2_000_000_000, -3]),
       entries=st.sampled_from([0, 1, 2, 5, 10**9, 10**15, -1]),
       comments=st.integers(0, 3), body=st.lists(st.tuples(st.integers(-1, 300),
                                                           st.integers(-1, 5),
                                                           st.integers(-5, 10)), max_size=8),
       barcodes=st.integers(0, 5), features=st.sampled_from([0, 3, 230]),
       compressed=st.booleans(), garbage=st.binary(max_size=20))
def test_10x_mtx_headers(workdir: Path, banner: str, rows: int, columns: int, entries: int,
                         comments: int, body: list[tuple[int, int, int]], barcodes: int,
                         features: int, compressed: bool, garbage: bytes) -> None:
    folder = workdir / "tenx"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    text = banner + "\n" + "% comment\n" * comments + f"{rows} {columns} {entries}\n"
    text += "".join(f"{i} {j} {v}\n" for i, j, v in body)
    raw = text.encode() + garbage
    suffix = ".gz" if compressed else ""
    opener: Any = gzip.open if compressed else open
    with opener(folder / f"matrix.mtx{suffix}", "wb") as fh:
        fh.write(raw)
    with opener(folder / f"barcodes.tsv{suffix}", "wb") as fh:
        fh.write("".join(f"BC{i}\n" for i in range(barcodes)).encode())
    with opener(folder / f"features.tsv{suffix}", "wb") as fh:
        fh.write("".join(f"E{i}\tG{i}\tGene Expression\n" for i in range(features)).encode())
    matrix = reads_or_refuses(lambda: bridge.read(folder))
    if matrix is not None:
        assert (matrix.n_cells, matrix.n_genes) == (barcodes, features)


# -- reference Parquet ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_reference(workdir: Path) -> Path:
    from tests._server import synthetic_cells

    out = workdir / "good_reference.parquet"
    bridge.build_reference(synthetic_cells(300, n_genes=80, seed=2), label_column="label",
                           out=out, genes_per_label=10, calibrate=False)
    return out


_META_VALUES = st.one_of(
    st.just(None),
    st.recursive(_JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=12)
    .map(lambda v: json.dumps(v, allow_nan=True)),
    st.sampled_from(["[true, false, true]", "true", "1e-320", "1e400", "[1, 2, 3]",
                     "[" * 50 + "]" * 50, "[" * 5000 + "]" * 5000, "not json", '"x"']))


@PROPERTY
@given(key=st.sampled_from(["labels", "intercepts", "target_sum", "training", "ontology_ids",
                            "format_version"]),
       value=_META_VALUES,
       weight=st.sampled_from([None, 3e38, -3e38, 1e6, -1e6, 1e7, float("nan"), float("inf"),
                               0.0]),
       mean=st.sampled_from([None, -1.0, 1e4, 500.0]))
def test_reference_parquet(workdir: Path, good_reference: Path, key: str, value: str | None,
                           weight: float | None, mean: float | None) -> None:
    """Any metadata, any weights: loads and gives finite confidences in [0, 1], or refuses."""
    from bridge.engines.reference import ReferenceEngine, load_reference
    from tests._server import synthetic_cells

    table = pq.read_table(good_reference)
    meta = dict(table.schema.metadata)
    if value is not None:
        meta[f"scbridge.{key}".encode()] = value.encode()
    n_labels = table.schema.field("weight").type.list_size

    def filled(name: str, number: float) -> pa.Array:
        flat = np.full(table.num_rows * n_labels, number, dtype=np.float32)
        flat[::3] = table.column(name).combine_chunks().values.to_numpy()[::3]
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), n_labels)

    if weight is not None:
        table = table.set_column(1, "weight", filled("weight", weight))
    if mean is not None:
        table = table.set_column(2, "mean", filled("mean", mean))
    path = workdir / "reference.parquet"
    pq.write_table(table.replace_schema_metadata(meta), path)
    model = reads_or_refuses(lambda: load_reference(path))
    if model is None:
        return
    cells = synthetic_cells(50, n_genes=80, seed=9)
    calls = ReferenceEngine(model).annotate(cells, progress=False)
    confidence = calls.column("confidence").to_numpy()
    assert np.isfinite(confidence).all()
    assert ((confidence >= 0) & (confidence <= 1)).all()

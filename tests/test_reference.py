"""The reference engine: build from every container, apply, and refuse hostile files."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

import bridge
from bridge import build_reference
from bridge._contract import chunk_table, concat_calls
from bridge.engines import available_models, get_engine
from bridge.engines.reference import (
    FORMAT_NAME,
    ReferenceEngine,
    load_reference,
    ontology_for,
    save_reference,
)
from bridge.matrix import CellMatrix
from bridge.numerics import log_normalize

from conftest import run_r

LABELS = ("B cell", "CD8 T", "NK", "monocyte")


def labelled(seed: int, n_per_label: int = 60, n_genes: int = 400) -> CellMatrix:
    """Four labels; label k expresses genes k*8 .. k*8+7 about 6x higher than the others."""
    rng = np.random.default_rng(seed)
    base = 0.3 + np.random.default_rng(99).gamma(2.0, 0.5, size=n_genes)  # same genes per seed
    label = np.repeat(np.arange(len(LABELS)), n_per_label)
    rate = base[None, :].repeat(len(label), axis=0) * rng.uniform(0.5, 2.0, (len(label), 1))
    for k in range(len(LABELS)):
        rate[label == k, k * 8: k * 8 + 8] *= 6
    counts = rng.poisson(rate).astype(np.float32)
    obs = pa.table({"cell_type": pa.array([LABELS[k] for k in label]).dictionary_encode(),
                    "batch": pa.array(["a"] * len(label))})
    return CellMatrix(sp.csr_matrix(counts), [f"s{seed}_c{i}" for i in range(len(label))],
                      [f"GENE{j}" for j in range(n_genes)], obs=obs, source=f"labelled {seed}")


@pytest.fixture(scope="module")
def train() -> CellMatrix:
    return labelled(0)


@pytest.fixture(scope="module")
def query() -> CellMatrix:
    return labelled(1)


@pytest.fixture(scope="module")
def reference_path(train: CellMatrix, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref.parquet"
    build_reference(train, label_column="cell_type", out=out)
    return out


def truth(matrix: CellMatrix) -> np.ndarray:
    return np.asarray(matrix.obs.column("cell_type").to_pylist())


# -- building and applying -----------------------------------------------------------------
def test_build_save_load_apply(reference_path: Path, query: CellMatrix) -> None:
    assert pq.read_metadata(reference_path).metadata[b"scbridge.format"] == FORMAT_NAME.encode()
    assert reference_path.read_bytes()[:4] == b"PAR1"  # Parquet, not pickle
    model = load_reference(reference_path)
    assert model.labels == sorted(LABELS)
    assert model.ontology_ids == ["CL:0000236", "CL:0000625", "CL:0000623", "CL:0000576"]
    assert model.training["label_column"] == "cell_type"
    assert model.training["cells_per_label"] == dict.fromkeys(sorted(LABELS), 60)
    planted = {f"GENE{j}" for j in range(32)}
    assert planted <= set(model.genes.tolist())
    calls = ReferenceEngine(reference_path).annotate_chunk(query)
    assert (np.asarray(calls.labels) == truth(query)).mean() > 0.97
    assert ((calls.confidence >= 0) & (calls.confidence <= 1)).all()
    assert np.median(calls.confidence) > 0.8
    for row, conf in zip(calls.alternates, calls.confidence, strict=True):
        scores = [s for _, s in row]
        assert len(row) == 3 and scores == sorted(scores, reverse=True) and scores[0] <= conf
    # Markers: planted genes of the called label, expressed in that cell.
    Xn = log_normalize(query.X, query.value_kind)
    for i in (0, 70, 130, 200):
        k = LABELS.index(calls.labels[i])
        assert calls.markers[i]
        assert set(calls.markers[i]) <= {f"GENE{j}" for j in range(k * 8, k * 8 + 8)}
        expressed = set(query.genes[Xn[i].indices].tolist())
        assert set(calls.markers[i]) <= expressed


def test_saved_model_round_trips_exactly(train: CellMatrix, tmp_path: Path) -> None:
    model = build_reference(train, label_column="cell_type")
    loaded = load_reference(save_reference(model, tmp_path / "sub" / "r.parquet"))
    np.testing.assert_array_equal(loaded.weights, model.weights)
    np.testing.assert_array_equal(loaded.means, model.means)
    np.testing.assert_array_equal(loaded.intercepts, model.intercepts)
    assert loaded.genes.tolist() == model.genes.tolist()
    assert loaded.labels == model.labels


def test_confidence_is_calibrated(train: CellMatrix, query: CellMatrix) -> None:
    # Temperature scaling on held-out cells: confidences match accuracy; calls never change.
    calibrated = build_reference(train, label_column="cell_type")
    raw = build_reference(train, label_column="cell_type", calibrate=False)
    assert raw.training["temperature"] == 1.0
    assert calibrated.training["temperature"] != 1.0
    a = ReferenceEngine(calibrated).annotate_chunk(query)
    b = ReferenceEngine(raw).annotate_chunk(query)
    assert list(a.labels) == list(b.labels)
    accuracy = (np.asarray(a.labels) == truth(query)).mean()
    assert abs(float(a.confidence.mean()) - accuracy) < 0.05
    assert abs(float(a.confidence.mean()) - accuracy) < abs(float(b.confidence.mean()) - accuracy)


def test_registered_engine_and_chunking(reference_path: Path, query: CellMatrix) -> None:
    assert "reference" in available_models()
    engine = get_engine("reference", atlas=str(reference_path))
    assert engine.atlas == str(reference_path)
    assert engine.parameters()["labels"] == sorted(LABELS)
    whole = chunk_table(query.cells, engine.annotate_chunk(query))
    chunked = concat_calls([chunk_table(c.cells, engine.annotate_chunk(c))
                            for c in query.iter_chunks(17)])
    assert chunked.equals(whole)
    assert engine.gene_fraction == 1.0


def test_query_gene_order_extra_and_missing_genes(reference_path: Path,
                                                  query: CellMatrix) -> None:
    engine = ReferenceEngine(reference_path)
    expected = engine.annotate_chunk(query)
    rng = np.random.default_rng(3)
    shuffled_genes = [*rng.permutation(query.genes), "EXTRA1", "EXTRA2"]
    shuffled = query.select_genes(shuffled_genes, missing="zero")
    got = ReferenceEngine(reference_path).annotate_chunk(shuffled)
    assert list(got.labels) == list(expected.labels)
    np.testing.assert_allclose(got.confidence, expected.confidence, rtol=1e-5)
    # A quarter of the model's genes missing: still works, with a warning-level fraction.
    dropped = set(load_reference(reference_path).genes.tolist()[::4])
    kept = [g for g in query.genes if g not in dropped]
    partial = ReferenceEngine(reference_path)
    calls = partial.annotate_chunk(query.select_genes(kept))
    assert 0.5 < partial.gene_fraction < 0.95
    assert (np.asarray(calls.labels) == truth(query)).mean() > 0.8


def test_lognormalised_query_gives_the_same_calls(reference_path: Path,
                                                  query: CellMatrix) -> None:
    lognorm = CellMatrix(log_normalize(query.X, query.value_kind), query.cells, query.genes, value_kind="lognorm")
    engine = ReferenceEngine(reference_path)
    a, b = engine.annotate_chunk(query), engine.annotate_chunk(lognorm)
    assert list(a.labels) == list(b.labels)
    np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-5)


def test_too_few_genes_found_is_refused(reference_path: Path, query: CellMatrix) -> None:
    ensembl = CellMatrix(query.X, query.cells, [f"ENSG{j:011d}" for j in range(query.n_genes)])
    with pytest.raises(bridge.GeneIdError, match=r"only 0 of the reference's .* genes"):
        ReferenceEngine(reference_path).annotate(ensembl, progress=False)
    with pytest.raises(bridge.InputError, match="needs atlas=PATH"):
        ReferenceEngine(None)


def test_annotate_with_the_reference(reference_path: Path, query: CellMatrix) -> None:
    table = bridge.annotate(query, model="reference", atlas=str(reference_path), qc=False,
                            progress=False)
    assert table.column("cell").to_pylist() == query.cells.tolist()
    labels = np.asarray(table.column("label").to_pylist())
    assert (labels == truth(query)).mean() > 0.97


def test_build_options(train: CellMatrix) -> None:
    labels = truth(train).astype(object)
    labels[:5] = "Unknown"
    labels[5:8] = None
    obs = pa.table({"cell_type": pa.array(labels.tolist(), pa.string())})
    matrix = CellMatrix(train.X, train.cells, train.genes, obs=obs)
    model = build_reference(matrix, label_column="cell_type", max_cells_per_label=40,
                            genes_per_label=5, seed=1)
    assert model.training["cells_per_label"] == dict.fromkeys(sorted(LABELS), 40)
    assert len(model.genes) <= 4 * (5 + 2)
    again = build_reference(matrix, label_column="cell_type", max_cells_per_label=40,
                            genes_per_label=5, seed=1)
    np.testing.assert_array_equal(again.weights, model.weights)


def test_build_errors(train: CellMatrix) -> None:
    with pytest.raises(bridge.NotFoundError, match="no cell metadata column 'celltype'.*cell_type, batch"):
        build_reference(train, label_column="celltype")
    with pytest.raises(bridge.InputError, match="1 usable label"):
        build_reference(train, label_column="batch")
    few = train.slice_cells(0, 70)  # 60 "B cell" and 10 "CD8 T"
    with pytest.raises(bridge.InputError, match=r"too few cells per label.*CD8 T \(10\)"):
        build_reference(few, label_column="cell_type", min_cells_per_label=20)


def test_ontology_for_common_labels() -> None:
    assert ontology_for("B") == "CL:0000236"
    assert ontology_for("CD8TN") == "CL:0000900"
    assert ontology_for("CD4+/CD25 T Reg") == "CL:0000815"
    assert ontology_for("CD14+ Monocyte") == "CL:0001054"
    assert ontology_for("CD56+ NK") == "CL:0000623"
    assert ontology_for("weird cluster 7") is None


# -- every container -----------------------------------------------------------------------
def test_build_from_h5ad_and_arrow(train: CellMatrix, query: CellMatrix, tmp_path: Path) -> None:
    direct = build_reference(train, label_column="cell_type")
    adata = anndata.AnnData(
        X=train.X.copy(), obs=pd.DataFrame({"cell_type": truth(train)},
                                            index=train.cells.astype(str)),
        var=pd.DataFrame(index=train.genes.astype(str)))
    adata.write_h5ad(tmp_path / "train.h5ad")
    arrow = bridge.write(train, tmp_path / "train.arrow")
    for source in (tmp_path / "train.h5ad", arrow, adata):
        model = build_reference(source, label_column="cell_type")
        assert model.genes.tolist() == direct.genes.tolist()
        np.testing.assert_allclose(model.weights, direct.weights, rtol=1e-4, atol=1e-6)


@pytest.mark.needs_r
def test_build_from_seurat_and_sce_rds(tmp_path: Path) -> None:
    seurat, sce = tmp_path / "pbmc_small.rds", tmp_path / "pbmc_small_sce.rds"
    run_r(f"""
        suppressMessages({{library(SeuratObject); library(SingleCellExperiment)}})
        data("pbmc_small", package = "SeuratObject")
        saveRDS(pbmc_small, "{seurat}")
        counts <- GetAssayData(pbmc_small, slot = "counts", assay = "RNA")
        sce <- SingleCellExperiment(assays = list(counts = counts),
                                    colData = S4Vectors::DataFrame(pbmc_small[[]]))
        saveRDS(sce, "{sce}")
    """)
    from_seurat = build_reference(seurat, label_column="RNA_snn_res.1",
                                  out=tmp_path / "seurat_ref.parquet")
    from_sce = build_reference(sce, label_column="RNA_snn_res.1")
    assert from_seurat.labels == ["0", "1", "2"]
    assert from_seurat.training["cells_per_label"] == {"0": 36, "1": 25, "2": 19}
    assert from_seurat.genes.tolist() == from_sce.genes.tolist()
    np.testing.assert_allclose(from_seurat.weights, from_sce.weights, rtol=1e-4, atol=1e-6)
    # Applied back to the same cells, the clusters are recovered.
    matrix = bridge.read(seurat)
    calls = ReferenceEngine(tmp_path / "seurat_ref.parquet").annotate_chunk(matrix)
    clusters = np.asarray(matrix.obs.column("RNA_snn_res.1").to_pylist()).astype(str)
    assert (np.asarray(calls.labels) == clusters).mean() > 0.9


# -- hostile and malformed files -----------------------------------------------------------
def write_variant(source: Path, out: Path, *, meta: dict[str, str] | None = None,
                  table: pa.Table | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A copy of a good reference with some metadata keys replaced or columns changed."""
    good = pq.read_table(source)
    metadata = {k.decode(): v.decode() for k, v in good.schema.metadata.items()}
    metadata.update(meta or {})
    for key in drop:
        metadata.pop(key)
    body = table if table is not None else good
    pq.write_table(body.replace_schema_metadata(metadata), out)
    return out


def fixed(values: np.ndarray, width: int) -> pa.Array:
    flat = pa.array(np.asarray(values, np.float32).ravel(), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, width)


def test_refuses_files_that_are_not_references(reference_path: Path, tmp_path: Path) -> None:
    with pytest.raises(bridge.NotFoundError, match="does not exist"):
        load_reference(tmp_path / "missing.parquet")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"\x80\x04\x95 not parquet, maybe a pickle" * 10)
    with pytest.raises(bridge.FormatError, match="not a Parquet file"):
        load_reference(junk)
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"gene": ["A"]}), plain)
    with pytest.raises(bridge.FormatError, match="not an scbridge reference.*build-reference"):
        load_reference(plain)
    wrong_name = write_variant(reference_path, tmp_path / "w.parquet",
                               meta={"scbridge.format": "scbridge-arrow-csr"})
    with pytest.raises(bridge.FormatError, match="not an scbridge reference"):
        load_reference(wrong_name)
    with pytest.raises(bridge.FormatError, match="size limit"):
        load_reference(reference_path, max_bytes=100)


def test_format_versions(reference_path: Path, tmp_path: Path) -> None:
    newer_minor = write_variant(reference_path, tmp_path / "v1.parquet",
                                meta={"scbridge.format_version": "1.9"})
    assert load_reference(newer_minor).labels == sorted(LABELS)
    for version in ("2.0", "0.1", ""):
        path = write_variant(reference_path, tmp_path / f"v{version}.parquet",
                             meta={"scbridge.format_version": version})
        with pytest.raises(bridge.FormatError, match="version .* is not supported"):
            load_reference(path)


@pytest.mark.parametrize(("meta", "phrase"), [
    ({"scbridge.labels": "not json"}, "scbridge.labels is not valid JSON"),
    ({"scbridge.labels": '["only one"]'}, "list of 2 to 5000 unique"),
    ({"scbridge.labels": '["B cell", "B cell", "NK", "x"]'}, "unique"),
    ({"scbridge.labels": json.dumps([f"l{i}" for i in range(5001)])}, "list of 2 to 5000"),
    ({"scbridge.intercepts": "[1, 2]"}, "intercepts must hold 4 finite"),
    ({"scbridge.intercepts": "[1, 2, NaN, 0]"}, "intercepts must hold 4 finite"),
    ({"scbridge.intercepts": '[1, 2, "3", 0]'}, "intercepts must hold 4 finite"),
    ({"scbridge.ontology_ids": "[1, 2, 3, 4]"}, "ontology_ids must hold 4"),
    ({"scbridge.target_sum": "-5"}, "target_sum must be a positive"),
    ({"scbridge.training": "x" * (17 << 20)}, "metadata exceeds the limit"),
])
def test_refuses_bad_metadata(reference_path: Path, tmp_path: Path, meta: dict[str, str],
                              phrase: str) -> None:
    path = write_variant(reference_path, tmp_path / "bad.parquet", meta=meta)
    with pytest.raises(bridge.FormatError, match=phrase):
        load_reference(path)


def test_refuses_missing_metadata(reference_path: Path, tmp_path: Path) -> None:
    path = write_variant(reference_path, tmp_path / "bad.parquet", drop=("scbridge.intercepts",))
    with pytest.raises(bridge.FormatError, match="scbridge.intercepts is missing"):
        load_reference(path)


def test_refuses_bad_values(reference_path: Path, tmp_path: Path) -> None:
    good = pq.read_table(reference_path)
    n_genes = good.num_rows
    weights = good.column("weight").combine_chunks().values.to_numpy().reshape(n_genes, 4).copy()
    for bad_value, name in ((np.nan, "nan"), (np.inf, "inf")):
        w = weights.copy()
        w[3, 1] = bad_value
        table = good.set_column(1, "weight", fixed(w, 4))
        path = write_variant(reference_path, tmp_path / f"{name}.parquet", table=table)
        with pytest.raises(bridge.FormatError, match="'weight' has non-finite values"):
            load_reference(path)
    genes = good.column("gene").to_pylist()
    cases = {
        "duplicated": (pa.array([genes[0], *genes[:-1]]), "not unique .*appears 2 times"),
        "empty": (pa.array(["", *genes[1:]]), "non-empty"),
        "null": (pa.array([None, *genes[1:]], pa.string()), "non-empty and not null"),
    }
    for name, (column, phrase) in cases.items():
        path = write_variant(reference_path, tmp_path / f"{name}.parquet",
                             table=good.set_column(0, "gene", column))
        with pytest.raises(bridge.FormatError, match=phrase):
            load_reference(path)
    narrow = good.set_column(1, "weight", fixed(weights[:, :3], 3))
    path = write_variant(reference_path, tmp_path / "narrow.parquet", table=narrow)
    with pytest.raises(bridge.FormatError, match=r"column 'weight' must be .*\[4\] for 4 labels"):
        load_reference(path)
    path = write_variant(reference_path, tmp_path / "nomean.parquet",
                         table=good.drop_columns(["mean"]))
    with pytest.raises(bridge.FormatError, match="column 'mean' must be .* found missing"):
        load_reference(path)
    path = write_variant(reference_path, tmp_path / "empty.parquet", table=good.slice(0, 0))
    with pytest.raises(bridge.FormatError, match="non-empty"):
        load_reference(path)


def test_refuses_oversized_dimensions(reference_path: Path, tmp_path: Path) -> None:
    n = 200_001  # one gene over the limit; cheap to write with 4 labels
    table = pa.table({
        "gene": pa.array([f"g{i}" for i in range(n)]),
        "weight": fixed(np.zeros((n, 4)), 4),
        "mean": fixed(np.zeros((n, 4)), 4),
    })
    path = write_variant(reference_path, tmp_path / "big.parquet", table=table)
    with pytest.raises(bridge.FormatError, match="200,001 genes x 4 labels exceeds the limits"):
        load_reference(path)


def test_empty_cells_get_a_call_and_no_markers(reference_path: Path, query: CellMatrix) -> None:
    X = query.X[:3].toarray()
    X[1] = 0
    matrix = CellMatrix(sp.csr_matrix(X), ["a", "empty", "c"], query.genes)
    calls = ReferenceEngine(reference_path).annotate_chunk(matrix)
    assert calls.markers[1] == []
    assert calls.markers[0] and calls.markers[2]
    assert 0 < calls.confidence[1] < 1
    none = CellMatrix(sp.csr_matrix((2, query.n_genes), dtype=np.float32), ["x", "y"],
                      query.genes)
    assert ReferenceEngine(reference_path).annotate_chunk(none).markers == [[], []]

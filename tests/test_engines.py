"""The engine protocol, the registry and the catalogue of built engines."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from _server import synthetic_cells

import bridge
from bridge.engines import (
    Engine,
    available_models,
    clear_engine_cache,
    engine_parameters,
    get_engine,
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("engines") / "ref.parquet"
    bridge.build_reference(synthetic_cells(300, seed=1), label_column="label", out=out,
                           genes_per_label=20)
    return out


def test_every_registered_engine_satisfies_the_protocol(reference: Path) -> None:
    models = available_models()
    assert {"markers", "reference", "remote"} <= set(models)
    assert "remote" not in available_models(served=True)  # a client, never a service
    built = [get_engine("markers"), get_engine("reference", atlas=str(reference)),
             get_engine("remote", endpoint="http://127.0.0.1:9", cache=False)]
    for engine in built:
        assert isinstance(engine, Engine)
        described = engine.describe()
        assert set(described) == {"name", "atlas", "parameters"}
        assert described["name"] == engine.name
    assert built[2].genes is None  # the service checks genes itself
    assert len(built[1].genes) > 0


def test_unknown_engine_parameters_are_refused_never_dropped() -> None:
    matrix = synthetic_cells(20, seed=2)
    with pytest.raises(bridge.InputError, match="does not take 'groupz'") as info:
        bridge.annotate(matrix, groupz="x", progress=False)
    assert info.value.code == "unknown_parameter"
    assert "tissue" in str(info.value)  # the parameters it does take are listed
    with pytest.raises(bridge.InputError, match="does not take 'verbose'"):
        bridge.annotate(matrix, endpoint="http://127.0.0.1:9", tissue="x", verbose=True,
                        progress=False)
    with pytest.raises(bridge.InputError, match="does not take 'tissue'"):
        bridge.annotate(matrix, model="reference", atlas="unused.parquet", tissue="blood",
                        progress=False)
    assert "min_gene_fraction" in engine_parameters("markers")
    assert "min_gene_fraction" in engine_parameters("reference")
    with pytest.raises(bridge.NotFoundError, match="unknown model 'nope'") as info2:
        get_engine("nope")
    assert info2.value.code == "unknown_model"


def test_engines_are_built_once_and_rebuilt_when_the_atlas_changes(reference: Path,
                                                                   tmp_path: Path) -> None:
    clear_engine_cache()
    first = get_engine("reference", atlas=str(reference))
    assert get_engine("reference", atlas=str(reference)) is first
    assert get_engine("reference", atlas=str(reference), n_markers=2) is not first
    copy = tmp_path / "ref.parquet"
    copy.write_bytes(reference.read_bytes())
    a = get_engine("reference", atlas=str(copy))
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    b = get_engine("reference", atlas=str(copy))
    assert b is not a  # a replaced file is read again
    assert get_engine("markers") is get_engine("markers")


def test_genes_found_check_runs_once_with_the_fraction_in_provenance(reference: Path) -> None:
    matrix = synthetic_cells(50, seed=3)
    calls = bridge.call_cells(matrix, model="reference", atlas=str(reference), progress=False)
    meta = calls.schema.metadata
    assert float(meta[b"scbridge.genes_matched"]) == 1.0
    renamed = bridge.CellMatrix(matrix.X, matrix.cells,
                                [f"ENSG{j:011d}" for j in range(matrix.n_genes)])
    with pytest.raises(bridge.GeneIdError, match="min_gene_fraction") as info:
        bridge.call_cells(renamed, model="reference", atlas=str(reference), progress=False)
    assert info.value.code == "gene_ids"
    # The bar is one parameter every local engine honours.
    lowered = bridge.call_cells(renamed, model="reference", atlas=str(reference),
                                min_gene_fraction=0.0, progress=False)
    assert lowered.num_rows == 50


def test_a_shared_engine_gives_each_thread_its_own_matrix_layout(reference: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    engine = get_engine("reference", atlas=str(reference))
    a = synthetic_cells(200, seed=4)
    rng = np.random.default_rng(0)
    order = rng.permutation(a.n_genes)
    b = bridge.CellMatrix(a.X[:, order].tocsr(), a.cells, a.genes[order])
    expected = engine.annotate(a, progress=False).column("label").to_pylist()

    def run(matrix: bridge.CellMatrix) -> list[str]:
        time.sleep(0)
        return engine.annotate(matrix, chunk_size=7, progress=False).column("label").to_pylist()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, [a, b] * 6))
    assert all(r == expected for r in results)

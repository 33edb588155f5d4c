"""Partitioned Arrow CSR data sets annotated on a real Dask LocalCluster (worker processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _atlas import local_dask_client

import bridge
from bridge._partitioned import annotate_partitions, partition_paths, write_partitions

distributed = pytest.importorskip("distributed")

CALL_COLUMNS = ["cell", "label", "ontology_id", "confidence", "alternates", "markers"]


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    with local_dask_client() as dask_client:
        yield dask_client


@pytest.fixture(scope="module")
def pbmc(shared_data: Path) -> bridge.CellMatrix:
    return bridge.read(shared_data / "sorted_pbmc_seurat.rds")


@pytest.fixture(scope="module")
def parts(pbmc: bridge.CellMatrix, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_partitions(pbmc, tmp_path_factory.mktemp("parts"), cells_per_partition=1300)


@pytest.mark.needs_r
def test_partitions_hold_the_cells_in_order(pbmc: bridge.CellMatrix, parts: list[Path]) -> None:
    assert [p.name for p in parts] == ["part-00000.arrow", "part-00001.arrow", "part-00002.arrow"]
    back = [bridge.read(p) for p in parts]
    assert [m.n_cells for m in back] == [1300, 1300, pbmc.n_cells - 2600]
    assert np.array_equal(np.concatenate([m.cells for m in back]), pbmc.cells)
    for m, start in zip(back, (0, 1300, 2600), strict=True):
        assert (m.X != pbmc.X[start:start + m.n_cells]).nnz == 0
        assert m.obs.column_names == pbmc.obs.column_names and m.obs.num_columns > 0


@pytest.mark.needs_r
def test_calls_are_those_of_the_whole_data_set(
    pbmc: bridge.CellMatrix, parts: list[Path], client: distributed.Client
) -> None:
    gathered = annotate_partitions(parts[0].parent, client=client, progress=False)
    whole = bridge.annotate(pbmc, progress=False)
    assert gathered.num_rows == pbmc.n_cells
    assert gathered.select(CALL_COLUMNS).cast(whole.select(CALL_COLUMNS).schema).equals(
        whole.select(CALL_COLUMNS))
    # Doublet scores are computed within each partition: same columns, same per-cell counts.
    assert set(whole.column_names) == set(gathered.column_names)
    assert gathered.column("total_counts").equals(whole.column("total_counts"))
    meta = gathered.schema.metadata
    assert meta[b"scbridge.n_cells"] == str(pbmc.n_cells).encode()
    assert b"part-00002.arrow" in meta[b"scbridge.partitions"]
    assert gathered.to_pandas().shape[0] == pbmc.n_cells


@pytest.mark.needs_r
def test_a_list_of_partitions_keeps_its_order(parts: list[Path], client: distributed.Client
                                              ) -> None:
    table = annotate_partitions([parts[2], parts[0]], client=client, qc=False, progress=False)
    expected = np.concatenate([bridge.read(parts[2]).cells, bridge.read(parts[0]).cells])
    assert np.array_equal(table.column("cell").to_numpy(zero_copy_only=False), expected)


@pytest.mark.needs_r
def test_errors_name_the_partition(parts: list[Path], client: distributed.Client,
                                   tmp_path: Path) -> None:
    bad = tmp_path / "part-00001.arrow"
    bad.write_bytes(parts[1].read_bytes()[:5000])  # truncated
    with pytest.raises(bridge.FormatError, match=r"partition .*part-00001\.arrow"):
        annotate_partitions([parts[0], bad], client=client, qc=False, progress=False)

    copy = tmp_path / "copy.arrow"
    copy.write_bytes(parts[0].read_bytes())
    with pytest.raises(bridge.InputError, match=r"'[^']+' appears in more than one partition"):
        annotate_partitions([parts[0], copy], client=client, qc=False, progress=False)


def test_bad_partition_sets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(bridge.InputError, match="no Arrow CSR partitions in folder"):
        partition_paths(tmp_path)
    with pytest.raises(bridge.InputError, match="no Arrow CSR partitions in pattern"):
        partition_paths(str(tmp_path / "*.arrow"))
    with pytest.raises(bridge.InputError, match="do not exist: .*nope.arrow"):
        partition_paths([tmp_path / "nope.arrow"])
    with pytest.raises(bridge.UnsupportedError, match="smoothing"):
        annotate_partitions(tmp_path, groups="seurat_clusters")


def test_write_partitions_refuses_to_mix_data_sets(tmp_path: Path) -> None:
    import scipy.sparse as sp

    matrix = bridge.CellMatrix(
        sp.random(10, 4, density=0.5, format="csr", random_state=0, dtype=np.float64).ceil(),
        cells=[f"c{i}" for i in range(10)], genes=["CD3E", "MS4A1", "LYZ", "NKG7"])
    first = write_partitions(matrix, tmp_path, cells_per_partition=4)
    assert len(first) == 3
    with pytest.raises(bridge.InputError, match="already holds 3 Arrow file"):
        write_partitions(matrix, tmp_path, cells_per_partition=5)
    second = write_partitions(matrix, tmp_path, cells_per_partition=5, overwrite=True)
    assert sorted(tmp_path.iterdir()) == second
    with pytest.raises(bridge.InputError, match="cells_per_partition must be >= 1"):
        write_partitions(matrix, tmp_path / "x", cells_per_partition=0)
    assert pa.ipc.open_file(second[0]).schema.metadata[b"scbridge.format"] == \
        b"scbridge.arrow-csr"


@pytest.mark.needs_r
def test_cli_annotates_partitions_on_a_scheduler(
    parts: list[Path], client: distributed.Client, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bridge.cli import main

    out = tmp_path / "calls.parquet"
    assert main(["annotate", str(parts[0].parent), "--partitions", "--scheduler",
                 client.scheduler.address, "--no-qc", "--out", str(out)]) == 0
    calls = pq.read_table(out)
    expected = annotate_partitions(parts, client=client, qc=False, progress=False)
    assert calls.column("label").to_pylist() == expected.column("label").to_pylist()
    assert "3,500 cells" in capsys.readouterr().out

    assert main(["annotate", str(parts[0].parent), "--partitions", "--groups", "x",
                 "--out", str(out)]) == 2
    assert "--groups cannot be used with --partitions" in capsys.readouterr().err
    assert main(["annotate", str(parts[0]), "--workers", "2", "--out", str(out)]) == 2
    assert "go with a partitioned data set" in capsys.readouterr().err


def test_h5ad_is_partitioned_as_a_stream(tmp_path: Path) -> None:
    import anndata
    import scipy.sparse as sp

    X = sp.random(25, 6, density=0.4, format="csr", random_state=1, dtype=np.float64).ceil()
    adata = anndata.AnnData(X, obs={"sample": ["a"] * 12 + ["b"] * 13})
    adata.obs_names = [f"cell{i}" for i in range(25)]
    adata.var_names = ["CD3E", "MS4A1", "LYZ", "NKG7", "CD8A", "GNLY"]
    adata.write_h5ad(tmp_path / "in.h5ad")
    parts = write_partitions(tmp_path / "in.h5ad", tmp_path / "parts", cells_per_partition=10)
    back = [bridge.read(p) for p in parts]
    assert [m.n_cells for m in back] == [10, 10, 5]
    whole = bridge.read(tmp_path / "in.h5ad")
    assert np.array_equal(np.concatenate([m.cells for m in back]), whole.cells)
    assert (sp.vstack([m.X for m in back]) != whole.X).nnz == 0
    assert back[2].obs.column("sample").to_pylist() == ["b"] * 5


def test_local_cluster_workers_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker of the local cluster scores its blocks on its share of the cores (no
    oversubscription), unless the user capped the threads already."""
    import os

    from bridge._partitioned import _dask_client
    from bridge.engines._blocks import ENV_THREADS, worker_count

    def seen(client: distributed.Client) -> set[str | None]:
        return set(client.run(lambda: os.environ.get(ENV_THREADS)).values())

    monkeypatch.delenv(ENV_THREADS, raising=False)
    with _dask_client(None, 2) as client:
        assert seen(client) == {str(max(1, worker_count() // 2))}
    monkeypatch.setenv(ENV_THREADS, "3")
    with _dask_client(None, 2) as client:
        assert seen(client) == {"3"}

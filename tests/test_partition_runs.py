"""Partitioned data sets as inputs of their own (annotate, inspect, convert; folders, globs,
fsspec URLs) and resumable runs: per-partition calls files, --resume, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _atlas import counts, end, environment, local_dask_client, wait_for

import bridge
from bridge._partition_calls import (
    cells_checksum,
    check_partition_calls,
    options_fingerprint,
    remove_temporaries,
)
from bridge._partitioned import (
    _options,
    annotate_partitions,
    write_partition_calls_dir,
    write_partitions,
)
from bridge.cli import main
from bridge.io._files import TEMP_MARK, stale_temporaries

distributed = pytest.importorskip("distributed")

CALLS = ["cell", "label", "ontology_id", "confidence", "alternates", "markers"]


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    with local_dask_client() as dask_client:
        yield dask_client


@pytest.fixture(scope="module")
def atlas() -> bridge.CellMatrix:
    return counts(1200, seed=7)


@pytest.fixture(scope="module")
def parts(atlas: bridge.CellMatrix, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("atlas") / "parts"
    write_partitions(atlas, folder, cells_per_partition=300)
    return folder


@pytest.fixture(scope="module")
def whole(atlas: bridge.CellMatrix) -> pa.Table:
    return bridge.annotate(atlas, qc=False, progress=False).select(CALLS)


def _rows(table: pa.Table) -> list[dict[str, object]]:
    """The calls row by row (labels decoded: dictionaries may differ between chunks)."""
    return table.select(CALLS).to_pylist()


def _fingerprint(**options: object) -> str:
    defaults = {"model": "markers", "atlas": None, "min_confidence": None, "qc": False,
                "chunk_size": None, "value_kind": None, "engine_params": {}}
    return options_fingerprint(_options(**{**defaults, **options}))  # type: ignore[arg-type]


def test_a_folder_or_glob_of_partitions_is_an_input(
        atlas: bridge.CellMatrix, parts: Path, whole: pa.Table, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    info = bridge.describe(parts)
    assert info["kind"] == "partitions" and info["cells"] == 1200 and info["nnz"] == atlas.nnz
    assert len(info["partitions"]) == 4
    assert main(["inspect", str(parts)]) == 0
    shown = capsys.readouterr().out
    assert "partitions: 4" in shown and "1,200 cells" in shown
    assert main(["inspect", str(parts / "part-*.arrow"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["default"]["cells"] == 1200

    # In-process, a folder streams partition by partition like any large file.
    calls = bridge.annotate(parts, qc=False, progress=False)
    assert _rows(calls) == _rows(whole)
    assert calls.schema.metadata[b"scbridge.streamed_chunks"] == b"4"

    assert main(["convert", str(parts), str(tmp_path / "one.arrow")]) == 0
    back = bridge.read(tmp_path / "one.arrow")
    assert np.array_equal(back.cells, atlas.cells) and (back.X != atlas.X).nnz == 0
    assert pa.ipc.open_file(tmp_path / "one.arrow").num_record_batches == 4  # one a partition
    bridge.write(atlas, tmp_path / "atlas.h5ad")
    assert main(["convert", str(tmp_path / "atlas.h5ad"), str(tmp_path / "again") + "/",
                 "--cells-per-partition", "500"]) == 0
    assert [bridge.read(p).n_cells for p in sorted((tmp_path / "again").iterdir())] == \
        [500, 500, 200]


def test_cli_recognises_the_folder_and_writes_calls_per_partition(
        parts: Path, whole: pa.Table, client: distributed.Client, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "calls.parquet"
    assert main(["annotate", str(parts), "--scheduler", client.scheduler.address,
                 "--no-qc", "--out", str(out)]) == 0  # no --partitions: recognised
    calls = pq.read_table(out)
    assert _rows(calls) == _rows(whole)
    meta = calls.schema.metadata
    assert meta[b"scbridge.n_cells"] == b"1200" and b"part-00003.arrow" in \
        meta[b"scbridge.partitions"]
    assert b"scbridge.partition_checksum" not in meta
    printed = capsys.readouterr()
    assert "1,200 cells" in printed.out and "calls.parts" in printed.err

    files = sorted((tmp_path / "calls.parts").iterdir())
    assert [f.name for f in files] == [f"part-{i:05d}.parquet" for i in range(4)]
    for i, file in enumerate(files):
        cells = bridge.read(parts / f"part-{i:05d}.arrow").cells
        checksum = cells_checksum(pa.array(cells.tolist(), pa.string()))
        assert check_partition_calls(file, n_cells=300, checksum=checksum,
                                     fingerprint=_fingerprint()) is None
    # The per-partition files are a Parquet data set of their own.
    assert _rows(pq.read_table(tmp_path / "calls.parts")) == _rows(whole)

    # Every output format is assembled by streaming, with one label dictionary.
    for suffix in (".arrow", ".csv", ".json"):
        other = tmp_path / f"calls{suffix}"
        assert main(["annotate", str(parts), "--partitions", "--scheduler",
                     client.scheduler.address, "--no-qc", "--calls-dir",
                     str(tmp_path / "calls.parts"), "--resume", "--quiet", "--out",
                     str(other)]) == 0
    arrow = pa.ipc.open_file(tmp_path / "calls.arrow").read_all()
    assert _rows(arrow) == _rows(whole)
    labels = arrow.column("label")
    assert labels.num_chunks == 4  # one record batch a partition, one dictionary for all
    assert all(c.dictionary.equals(labels.chunk(0).dictionary) for c in labels.chunks)
    import pyarrow.csv as pcsv

    csv = pcsv.read_csv(tmp_path / "calls.csv")
    assert csv.column("cell").to_pylist() == whole.column("cell").to_pylist()
    assert csv.column("label").to_pylist() == \
        whole.column("label").cast(pa.string()).to_pylist()
    payload = json.loads((tmp_path / "calls.json").read_text())
    assert [c["cell"] for c in payload["calls"]] == whole.column("cell").to_pylist()
    assert payload["metadata"]["n_cells"] == 1200


def test_resume_reuses_only_complete_matching_calls(
        atlas: bridge.CellMatrix, parts: Path, whole: pa.Table, client: distributed.Client,
        tmp_path: Path) -> None:
    calls_dir = tmp_path / "calls"
    first = write_partition_calls_dir(parts, calls_dir, client=client, qc=False,
                                      progress=False)
    assert [d.reused for d in first] == [False] * 4
    kept = calls_dir / "part-00000.parquet"
    before = kept.stat()

    # Partition 1's file is cut short, partition 2's is gone, partition 3's cells changed.
    cut = calls_dir / "part-00001.parquet"
    cut.write_bytes(cut.read_bytes()[:200])
    (calls_dir / "part-00002.parquet").unlink()
    changed = tmp_path / "parts"
    changed.mkdir()
    for i in range(3):
        (changed / f"part-{i:05d}.arrow").write_bytes((parts / f"part-{i:05d}.arrow").read_bytes())
    renamed = bridge.read(parts / "part-00003.arrow")
    renamed = bridge.CellMatrix(renamed.X, [f"x{c}" for c in renamed.cells], renamed.genes)
    bridge.write(renamed, changed / "part-00003.arrow")

    again = write_partition_calls_dir(changed, calls_dir, client=client, qc=False,
                                      resume=True, progress=False)
    assert [d.reused for d in again] == [True, False, False, False]
    assert kept.stat().st_mtime_ns == before.st_mtime_ns and kept.stat().st_ino == before.st_ino
    table = annotate_partitions(changed, client=client, qc=False, calls_dir=calls_dir,
                                resume=True, progress=False)
    expected = [*atlas.cells[:900], *(f"x{c}" for c in atlas.cells[900:])]
    assert table.column("cell").to_pylist() == expected
    assert [{k: v for k, v in r.items() if k != "cell"} for r in _rows(table)] == \
        [{k: v for k, v in r.items() if k != "cell"} for r in _rows(whole)]

    # Other options (a confidence threshold) make every file stale.
    third = write_partition_calls_dir(changed, calls_dir, client=client, qc=False,
                                      min_confidence=0.5, resume=True, progress=False)
    assert [d.reused for d in third] == [False] * 4
    assert not [p for p in calls_dir.iterdir() if p.name.startswith(".")]


def test_a_killed_writers_temporary_file_is_removed_and_never_reused(
        parts: Path, client: distributed.Client, tmp_path: Path) -> None:
    calls_dir = tmp_path / "calls"
    write_partition_calls_dir(parts, calls_dir, client=client, qc=False, progress=False)
    # What a writer killed by SIGKILL leaves: atomic_output's hidden temporary file.
    stale = calls_dir / f".part-00001{TEMP_MARK}999-dead.parquet"
    stale.write_bytes(b"PAR1 half a file")
    assert stale_temporaries(calls_dir, name="part-00001.parquet") == [stale]
    assert remove_temporaries(calls_dir) == 1
    assert not stale.exists() and len(list(calls_dir.iterdir())) == 4
    again = write_partition_calls_dir(parts, calls_dir, client=client, qc=False, resume=True,
                                      progress=False)
    assert [d.reused for d in again] == [True] * 4


def test_the_calls_folder_cannot_be_the_partitions(parts: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["annotate", str(parts), "--calls-dir", str(parts), "--out",
                 str(tmp_path / "calls.parquet")]) == 2
    assert "error[same_file]" in capsys.readouterr().err
    assert sorted(p.suffix for p in parts.iterdir()) == [".arrow"] * 4


def test_resume_needs_a_calls_folder(parts: Path) -> None:
    with pytest.raises(bridge.InputError, match="resume=True needs calls_dir") as caught:
        annotate_partitions(parts, resume=True)
    assert caught.value.code == "invalid_parameter"


def test_ctrl_c_leaves_only_complete_calls_files_and_resume_finishes(
        tmp_path: Path, client: distributed.Client, capsys: pytest.CaptureFixture[str]) -> None:
    atlas = counts(2400, seed=11)
    parts = tmp_path / "parts"
    write_partitions(atlas, parts, cells_per_partition=300)  # 8 partitions, QC on: slow-ish
    out, calls_dir = tmp_path / "calls.parquet", tmp_path / "calls.parts"
    command = [sys.executable, "-m", "bridge", "annotate", str(parts), "--workers", "1",
               "--out", str(out)]
    # A new session, so that SIGINT reaches the CLI and its workers as Ctrl-C in a terminal does.
    process = subprocess.Popen(command, env=environment(), start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (calls_dir.is_dir() and any(calls_dir.glob("part-*.parquet")))
                 or process.poll() is not None, timeout=300, what="a first calls file")
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        end(process)
    assert process.returncode == 130, err
    assert "scbridge annotate: interrupted" in err
    assert not out.exists()
    files = sorted(p.name for p in calls_dir.iterdir())
    assert files and all(name.startswith("part-") for name in files), files
    assert len(files) < 8, "the run ended before it was interrupted"
    fingerprint = _fingerprint(qc=True)
    for name in files:
        part = bridge.read(parts / name.replace(".parquet", ".arrow"))
        checksum = cells_checksum(pa.array(part.cells.tolist(), pa.string()))
        assert check_partition_calls(calls_dir / name, n_cells=part.n_cells, checksum=checksum,
                                     fingerprint=fingerprint) is None

    assert main(["annotate", str(parts), "--scheduler", client.scheduler.address, "--resume",
                 "--out", str(out)]) == 0
    assert f"resumed: {len(files)} of 8 partitions" in capsys.readouterr().out
    calls = pq.read_table(out)
    assert calls.column("cell").to_pylist() == atlas.cells.tolist()


def test_partitions_behind_fsspec_urls(parts: Path, whole: pa.Table, client: distributed.Client,
                                       tmp_path: Path) -> None:
    archive = tmp_path / "atlas.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(parts.iterdir()):
            handle.write(path, f"atlas/{path.name}")
    url = f"zip://atlas::{archive}"
    info = bridge.describe(url)
    assert info["cells"] == 1200
    assert info["partitions"][0] == f"zip://atlas/part-00000.arrow::{archive}"
    table = annotate_partitions(url, client=client, qc=False, progress=False)
    assert _rows(table) == _rows(whole)
    glob_url = f"zip://atlas/part-0000[12].arrow::{archive}"
    assert bridge.annotate(glob_url, qc=False, progress=False).num_rows == 600
    local = annotate_partitions(f"file://{parts}", client=client, qc=False, progress=False)
    assert _rows(local) == _rows(whole)

    with pytest.raises(bridge.InputError, match="no Arrow CSR partitions in pattern"):
        bridge.annotate(f"zip://atlas/*.h5ad::{archive}")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(bridge.MissingDependencyError, match="s3://bucket/atlas/"):
            annotate_partitions("s3://bucket/atlas/", client=client)


def test_cells_in_two_partitions_are_refused_when_assembling(
        parts: Path, client: distributed.Client, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    twice = tmp_path / "twice"
    twice.mkdir()
    for name in ("part-00000.arrow", "part-00001.arrow"):
        (twice / name).write_bytes((parts / "part-00000.arrow").read_bytes())
    out = tmp_path / "calls.parquet"
    assert main(["annotate", str(twice), "--scheduler", client.scheduler.address, "--no-qc",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error[invalid_cells]" in err and "part-00001.arrow" in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]


def test_an_unreachable_scheduler_is_a_clear_error(parts: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    import dask

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"  # nothing listens there
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        assert main(["annotate", str(parts), "--scheduler", address, "--out",
                     str(tmp_path / "calls.parquet")]) == 2
    err = capsys.readouterr().err
    assert "error[remote_unreachable]" in err and f"Dask scheduler at {address}" in err

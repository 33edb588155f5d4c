"""Blocks of a chunk scored on several threads: same calls, same order, whatever the split."""

from __future__ import annotations

import threading
from itertools import pairwise

import pytest
from test_marker_engine import synthetic_matrix

import bridge
import bridge.engines.markers as markers
from bridge.engines._blocks import ENV_THREADS, block_bounds, map_blocks, worker_count


@pytest.mark.parametrize(("n_cells", "block", "workers"),
                         [(1, 16, 1), (50_000, 16_384, 1), (50_000, 16_384, 2),
                          (10_000, 16_384, 4), (5_000, 16_384, 8), (37, 5, 3)])
def test_block_bounds_cover_the_cells_in_order(n_cells: int, block: int, workers: int) -> None:
    bounds = block_bounds(n_cells, block, workers=workers, min_block=1000)
    assert bounds[0][0] == 0 and bounds[-1][1] == n_cells
    assert all(a[1] == b[0] for a, b in pairwise(bounds))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) <= block and min(sizes) > 0
    assert max(sizes) - min(sizes) <= 1  # equal blocks, no small tail
    assert len(bounds) >= min(workers, n_cells // 1000)


def test_block_bounds_of_no_cells() -> None:
    assert block_bounds(0, 100, workers=4) == [(0, 0)]


def test_map_blocks_keeps_the_order_of_the_blocks() -> None:
    bounds = block_bounds(1000, 10)
    seen: set[int] = set()

    def score(b: tuple[int, int]) -> tuple[int, int]:
        seen.add(threading.get_ident())
        return b

    assert map_blocks(score, bounds, workers=4) == bounds
    assert map_blocks(score, bounds, workers=1) == bounds
    assert worker_count() >= 1


def test_calls_do_not_depend_on_blocks_or_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    types = ["pancreatic acinar cell", "type B pancreatic cell", "classical monocyte",
             "natural killer cell", "fibroblast", "B cell"]
    matrix, _ = synthetic_matrix(types, n_per_type=15, marker_rate=0.02)
    monkeypatch.setattr(markers, "worker_count", lambda: 1)
    whole = bridge.annotate(matrix, qc=False, progress=False)
    monkeypatch.setattr(markers, "_BLOCK", 7)
    monkeypatch.setattr(markers, "worker_count", lambda: 3)
    threaded = bridge.annotate(matrix, qc=False, progress=False)
    assert threaded.num_rows == matrix.n_cells
    assert whole.equals(threaded)
    assert len(set(whole.column("label").to_pylist())) > 2  # the cells were really called


def test_scbridge_threads_caps_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_THREADS, raising=False)
    cores = worker_count()
    monkeypatch.setenv(ENV_THREADS, "1")
    assert worker_count() == 1
    monkeypatch.setenv(ENV_THREADS, "999")
    assert worker_count() == cores  # never more than the cores
    for ignored in ("0", "", "two"):
        monkeypatch.setenv(ENV_THREADS, ignored)
        assert worker_count() == cores

"""Blocks of cells scored side by side: how a chunk is split, and the threads that score it.

Layer: engines.  An engine whose calls are per cell (a cell's result never depends on the
other cells of its block) can score the blocks of a chunk in any order and on any thread;
:func:`map_blocks` keeps their order.  The heavy parts (numpy on large arrays, scipy's sparse
products) release the GIL, so the threads run truly side by side.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import TypeVar

__all__ = ["ENV_THREADS", "block_bounds", "map_blocks", "worker_count"]

T = TypeVar("T")


#: Environment variable capping the threads an engine scores a chunk with (as OMP_NUM_THREADS
#: does for BLAS): set it to 1 where processes already share the cores (Dask workers, a
#: server with several compute threads).
ENV_THREADS = "SCBRIDGE_THREADS"


def worker_count() -> int:
    """The CPU cores this process may run on (its affinity where the platform says), at most
    ``$SCBRIDGE_THREADS`` when that is a positive integer."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        cores = max(1, os.cpu_count() or 1)
    cap = os.environ.get(ENV_THREADS, "").strip()
    if cap.isdigit() and int(cap) > 0:
        return min(cores, int(cap))
    return cores


def block_bounds(n_cells: int, block: int, *, workers: int = 1, min_block: int = 4096
                 ) -> list[tuple[int, int]]:
    """``(start, stop)`` of equal blocks of at most ``block`` cells covering ``n_cells``; at
    least ``workers`` blocks where each still holds ``min_block`` cells (so every worker has
    one), and one empty block for no cells."""
    if n_cells <= 0:
        return [(0, 0)]
    count = max(-(-n_cells // block), min(workers, n_cells // min_block), 1)
    edges = [n_cells * k // count for k in range(count + 1)]
    return list(pairwise(edges))


def map_blocks(score: Callable[[tuple[int, int]], T], bounds: list[tuple[int, int]], *,
               workers: int = 1) -> list[T]:
    """``score`` of every block, in order, on up to ``workers`` threads."""
    workers = min(workers, len(bounds))
    if workers <= 1:
        return [score(b) for b in bounds]
    with ThreadPoolExecutor(workers, thread_name_prefix="scbridge-block") as pool:
        return list(pool.map(score, bounds))

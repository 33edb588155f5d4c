"""How a run of cells is cut into chunks for streaming."""

from __future__ import annotations

__all__ = ["MAX_CHUNK_VALUES", "chunk_bounds"]

#: Values (non-zeros) a balanced chunk holds at most: what bounds an engine's working memory
#: (a few hundred MB) whatever the depth of the cells; 50,000 cells of 2,500 values would be
#: 125M values and over a gigabyte of temporaries.
MAX_CHUNK_VALUES = 1 << 25


def chunk_bounds(n_cells: int, chunk_size: int | None, *, balanced: bool = False,
                 n_values: int = 0) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of at most ``chunk_size`` cells covering
    ``n_cells`` (one chunk when ``chunk_size`` is ``None``).

    Full chunks and a remainder by default (partitions of exactly the size asked for).
    ``balanced=True`` is for computing: as few chunks of near-equal sizes as keep each
    within ``chunk_size`` cells and (given the ``n_values`` of the cells) about
    :data:`MAX_CHUNK_VALUES` values, so that memory does not grow with the depth of the
    cells and per-chunk QC (doublet scores need 100 cells) never meets a tail of a handful
    of cells (650 cells by 300 -> 217, 217, 216).
    """
    if n_cells <= 0:
        return []
    size = chunk_size or n_cells
    count = -(-n_cells // size)
    if not balanced:
        return [(start, min(start + size, n_cells)) for start in range(0, n_cells, size)]
    count = min(n_cells, max(count, -(-n_values // MAX_CHUNK_VALUES)))
    step, extra = divmod(n_cells, count)
    bounds, start = [], 0
    for k in range(count):
        stop = start + step + (1 if k < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds

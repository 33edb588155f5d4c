"""How a run of cells is cut into chunks for streaming."""

from __future__ import annotations

__all__ = ["chunk_bounds"]


def chunk_bounds(n_cells: int, chunk_size: int | None, *, balanced: bool = False
                 ) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of at most ``chunk_size`` cells covering
    ``n_cells`` (one chunk when ``chunk_size`` is ``None``).

    Full chunks and a remainder by default (partitions of exactly the size asked for);
    ``balanced=True`` gives as few chunks of near-equal sizes, so that per-chunk QC (doublet
    scores need 100 cells) never meets a tail of a handful of cells (650 cells by 300 ->
    217, 217, 216).
    """
    if n_cells <= 0:
        return []
    size = chunk_size or n_cells
    count = -(-n_cells // size)
    if not balanced:
        return [(start, min(start + size, n_cells)) for start in range(0, n_cells, size)]
    step, extra = divmod(n_cells, count)
    bounds, start = [], 0
    for k in range(count):
        stop = start + step + (1 if k < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds

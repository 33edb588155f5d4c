"""The companion tables of the contract: marker genes per label, and per-cell embeddings."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

__all__ = ["MARKERS_SCHEMA", "embedding_array", "embedding_table"]

#: ``rank_marker_genes`` / ``POST /v1/singlecell/markers``: one row per (label, gene).
MARKERS_SCHEMA = pa.schema([
    pa.field("label", pa.string()),
    pa.field("gene", pa.string()),
    pa.field("score", pa.float32()),
    pa.field("log2_fold_change", pa.float32()),
    pa.field("p_value", pa.float64()),
    pa.field("p_value_adjusted", pa.float64()),
    pa.field("fraction_in_label", pa.float32()),
    pa.field("fraction_in_rest", pa.float32()),
])


def embedding_table(cells: list[str], scores: NDArray[Any],
                    metadata: dict[bytes, bytes] | None = None) -> pa.Table:
    """``cell`` (utf8) and ``embedding`` (``fixed_size_list<float32>[n_components]``)."""
    n_components = scores.shape[1] if scores.ndim == 2 else 0
    flat = pa.array(np.ascontiguousarray(scores, dtype=np.float32).ravel(), pa.float32())
    table = pa.table({
        "cell": pa.array(cells, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, n_components),
    })
    return table.replace_schema_metadata(metadata or {})


def embedding_array(table: pa.Table, column: str = "embedding") -> NDArray[Any]:
    """A fixed-size-list column of an embedding table as a cells x components float32 array."""
    values = table.column(column).combine_chunks()
    width = values.type.list_size
    return values.values.to_numpy(zero_copy_only=False).reshape(-1, width)

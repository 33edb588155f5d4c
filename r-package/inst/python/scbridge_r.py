"""The Python side of the R package's ``python`` engine (loaded by reticulate).

R passes a genes x cells ``dgCMatrix`` as its slots ``p``, ``i``, ``x``: they are the
``indptr``, ``indices`` and ``data`` of the cells x genes CSR, so the matrix is built without a
transpose.  R sends them as 1-d arrays, which reticulate hands over as read-only NumPy views on
R's memory (a plain R vector would become a Python list, element by element).  Results go
back as flat columns that reticulate converts to R vectors (strings as dictionary codes, lists
of runner-ups and markers as flat values plus per-cell counts).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _strings(values: Any) -> list[str]:
    # reticulate turns a length-1 character vector into a plain str.
    return [values] if isinstance(values, str) else [str(v) for v in values]


def _matrix(p: Any, i: Any, x: Any, n_genes: int, n_cells: int, genes: Any, cells: Any,
            source: str) -> Any:
    from bridge import CellMatrix
    from bridge.matrix import csr_view
    from bridge.numerics import detect_value_kind

    indptr = np.atleast_1d(np.asarray(p, dtype=np.int32))
    indices = np.atleast_1d(np.asarray(i, dtype=np.int32))
    data = np.atleast_1d(np.asarray(x, dtype=np.float64))
    X = csr_view(data, indices, indptr, (int(n_cells), int(n_genes)))
    kind = detect_value_kind(data)
    return CellMatrix(X, _strings(cells), _strings(genes), value_kind=kind, source=source)


def _codes(array: Any) -> tuple[np.ndarray, list[str]]:
    """Strings as dictionary codes (int32, -1 for null) plus levels: cheap to carry into R."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not pa.types.is_dictionary(array.type):
        array = pc.cast(array, pa.string()).dictionary_encode()
    codes = array.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
    return codes, [str(v) for v in array.dictionary.to_pylist()]


def calls_columns(table: Any) -> dict[str, Any]:
    """A Calls table as flat columns R rebuilds into its calls data.frame.

    Strings travel as dictionary codes + levels (a few hundred distinct labels and genes for
    many cells), list columns as flat values plus per-cell lengths.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    table = table.combine_chunks()
    n = table.num_rows
    empty_list = pa.array([[]] * 0, pa.list_(pa.string()))
    alternates = table.column("alternates").chunk(0) if n else None
    markers = table.column("markers").chunk(0) if n else None
    out: dict[str, Any] = {
        "n": n,
        "label": _codes(table.column("label")),
        "ontology_id": _codes(table.column("ontology_id")),
        "confidence": table.column("confidence").to_numpy().astype(np.float64),
    }
    if alternates is None:
        zeros = np.zeros(0, np.int32)
        out.update(alt_n=zeros, alt_label=_codes(empty_list.flatten()), alt_score=np.zeros(0),
                   marker_n=zeros, marker_gene=_codes(empty_list.flatten()))
    else:
        flat = pc.list_flatten(alternates)
        out["alt_n"] = pc.list_value_length(alternates).fill_null(0).to_numpy().astype(np.int32)
        out["alt_label"] = _codes(flat.field("label"))
        out["alt_score"] = flat.field("score").to_numpy(zero_copy_only=False).astype(np.float64)
        out["marker_n"] = pc.list_value_length(markers).fill_null(0).to_numpy().astype(np.int32)
        out["marker_gene"] = _codes(pc.list_flatten(markers))
    extra: dict[str, Any] = {}
    core = {"cell", "label", "ontology_id", "confidence", "alternates", "markers"}
    for name in table.column_names:
        if name in core:
            continue
        column = table.column(name)
        kind = column.type
        na = np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if pa.types.is_dictionary(kind) or pa.types.is_string(kind):
            extra[name] = {"codes": _codes(column), "na": na}
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
            values = np.nan_to_num(column.to_numpy(zero_copy_only=False).astype(np.float64))
            extra[name] = {"values": values, "na": na}
        elif pa.types.is_boolean(kind):
            values = np.asarray(column.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
            extra[name] = {"values": values, "na": na}
        # nested extras stay with the Python API; they are not carried into R
    out["extra"] = extra
    return out


def _check_cells(table: Any, cells: list[str]) -> None:
    if table.column("cell").to_pylist() != cells:
        msg = "the core returned calls for other cells, or in another order, than it was given"
        raise RuntimeError(msg)


def annotate(p: Any, i: Any, x: Any, n_genes: int, n_cells: int, genes: Any, cells: Any,
             source: str, model: str, atlas: str | None, chunk_size: int,
             params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Raw calls (no QC, no threshold: R applies ``min_confidence`` for every engine alike)."""
    from bridge import call_cells

    matrix = _matrix(p, i, x, n_genes, n_cells, genes, cells, source)
    table = call_cells(matrix, model=model, atlas=atlas, chunk_size=int(chunk_size),
                       progress=False, **(params or {}))
    _check_cells(table, _strings(cells))
    return calls_columns(table)


def embed(p: Any, i: Any, x: Any, n_genes: int, n_cells: int, genes: Any, cells: Any,
          source: str, n_components: int, params: dict[str, Any] | None = None) -> dict[str, Any]:
    from bridge import embed as embed_cells
    from bridge._contract import embedding_array

    matrix = _matrix(p, i, x, n_genes, n_cells, genes, cells, source)
    table = embed_cells(matrix, n_components=int(n_components), **(params or {}))
    return {"cell": table.column("cell").to_pylist(),
            "embedding": np.asarray(embedding_array(table), dtype=np.float64)}


def markers(p: Any, i: Any, x: Any, n_genes: int, n_cells: int, genes: Any, cells: Any,
            source: str, labels: Any, top_n: int, method: str,
            params: dict[str, Any] | None = None) -> dict[str, Any]:
    import pyarrow as pa

    from bridge import rank_marker_genes as find_markers

    matrix = _matrix(p, i, x, n_genes, n_cells, genes, cells, source)
    labelled = pa.table({"cell": pa.array(_strings(cells), pa.string()),
                         "label": pa.array([None if v is None else str(v) for v in labels],
                                           pa.string())})
    table = find_markers(matrix, labelled, top_n=int(top_n), method=method, **(params or {}))
    return {name: table.column(name).to_pylist() for name in table.column_names}

"""The Python side of the R package's ``python`` engine (loaded by reticulate).

R passes a genes x cells ``dgCMatrix`` as its slots ``p``, ``i``, ``x``: they are the
``indptr``, ``indices`` and ``data`` of the cells x genes CSR, so the matrix is built without a
transpose.  R sends them as 1-d arrays, which reticulate hands over as read-only NumPy views on
R's memory (a plain R vector would become a Python list, element by element).  Results go
back as flat columns that reticulate converts to R vectors (strings as dictionary codes, lists
of runner-ups and markers as flat values plus per-cell counts).

Every entry point runs through :func:`_call`, which hands R the core's warnings and log
records (``{"value": ..., "conditions": [...]}``) so that R re-raises them as R conditions,
and keeps the details of a failure (a ``BridgeError``'s ``code``, ``family``, ``message`` and
``hint``, which reticulate's error does not carry) for :func:`last_error`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

_LAST_ERROR: dict[str, Any] = {}


class _Records(logging.Handler):
    """Keeps the ``bridge`` loggers' records (INFO and above) for R."""

    def __init__(self, records: list[dict[str, str]]) -> None:
        super().__init__(logging.INFO)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno >= logging.WARNING else "info"
        self.records.append({"level": level, "message": record.getMessage(),
                             "category": record.name})


@contextmanager
def _capturing(records: list[dict[str, str]]) -> Iterator[None]:
    """Warnings and ``bridge`` log records go to ``records`` instead of the console."""
    logger = logging.getLogger("bridge")
    saved = (logger.level, logger.propagate)
    handler = _Records(records)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            # Every warning each time (R decides what to show), except the deprecation
            # notices of libraries, which Python itself hides from users.
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            try:
                yield
            finally:
                records.extend({"level": "warning", "message": str(w.message),
                                "category": w.category.__name__} for w in caught)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    from bridge import BridgeError

    _LAST_ERROR.clear()
    records: list[dict[str, str]] = []
    try:
        with _capturing(records):
            value = fn(*args, **kwargs)
    except BridgeError as exc:
        _LAST_ERROR.update(bridge=True, code=exc.code, family=exc.family, message=exc.message,
                           hint=exc.hint or "", type=type(exc).__name__, conditions=records)
        raise
    except Exception as exc:
        _LAST_ERROR.update(bridge=False, code="engine_failure", family="error",
                           message=str(exc), hint="", type=type(exc).__name__,
                           conditions=records)
        raise
    return {"value": value, "conditions": records}


def last_error() -> dict[str, Any]:
    """What the last failed call raised (empty when it did not fail)."""
    return dict(_LAST_ERROR)


def _strings(values: Any) -> list[str]:
    # reticulate turns a length-1 character vector into a plain str.
    if values is None:
        return []
    return [values] if isinstance(values, str) else [str(v) for v in values]


def _matrix(p: Any, i: Any, x: Any, n_genes: int, n_cells: int, genes: Any, cells: Any,
            source: str, value_kind: str | None = None, obs: dict[str, Any] | None = None
            ) -> Any:
    import pyarrow as pa

    from bridge import CellMatrix
    from bridge.matrix import csr_view
    from bridge.numerics import detect_value_kind

    indptr = np.atleast_1d(np.asarray(p, dtype=np.int32))
    indices = np.atleast_1d(np.asarray(i, dtype=np.int32))
    data = np.atleast_1d(np.asarray(x, dtype=np.float64))
    X = csr_view(data, indices, indptr, (int(n_cells), int(n_genes)))
    kind = value_kind or detect_value_kind(data)
    table = None
    if obs:
        table = pa.table({name: pa.array([None if v is None else str(v) for v in _strings(col)],
                                         pa.string()) for name, col in obs.items()})
    return CellMatrix(X, _strings(cells), _strings(genes), obs=table, value_kind=kind,
                      source=source)


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


def _extra_columns(table: Any, skip: set[str]) -> dict[str, Any]:
    """Flat columns (strings as codes, numbers, logicals) with their nulls; nested ones stay
    with the Python API."""
    import pyarrow as pa

    extra: dict[str, Any] = {}
    for name in table.column_names:
        if name in skip:
            continue
        column = table.column(name)
        kind = column.type
        na = np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if pa.types.is_dictionary(kind) or pa.types.is_string(kind):
            extra[name] = {"codes": _codes(column), "na": na}
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
            values = np.nan_to_num(column.to_numpy(zero_copy_only=False).astype(np.float64))
            extra[name] = {"values": values, "na": na, "integer": pa.types.is_integer(kind)}
        elif pa.types.is_boolean(kind):
            values = np.asarray(column.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
            extra[name] = {"values": values, "na": na}
    return extra


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
    core = {"cell", "label", "ontology_id", "confidence", "alternates", "markers"}
    out["extra"] = _extra_columns(table, core)
    return out


def _check_cells(table: Any, cells: list[str]) -> None:
    if table.column("cell").to_pylist() != cells:
        msg = "the core returned calls for other cells, or in another order, than it was given"
        raise RuntimeError(msg)


def annotate(p: Any, i: Any, x: Any, n_genes: int, n_cells: int, genes: Any, cells: Any,
             source: str, model: str, atlas: str | None, chunk_size: int,
             value_kind: str | None = None, params: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """Raw calls (no QC, no threshold, no smoothing: R applies those for every engine alike)."""

    def run() -> dict[str, Any]:
        from bridge import call_cells

        matrix = _matrix(p, i, x, n_genes, n_cells, genes, cells, source, value_kind)
        table = call_cells(matrix, model=model, atlas=atlas, chunk_size=int(chunk_size),
                           progress=False, **(params or {}))
        _check_cells(table, _strings(cells))
        return calls_columns(table)

    return _call(run)


def qc(p: Any, i: Any, x: Any, n_genes: int, n_cells: int, genes: Any, cells: Any,
       source: str, value_kind: str | None = None, doublets: Any = False,
       thresholds: dict[str, Any] | None = None) -> dict[str, Any]:
    """The QC table of ``bridge.qc`` as flat columns (``cell`` left out: R has the cells)."""

    def run() -> dict[str, Any]:
        from bridge import QCThresholds
        from bridge import qc as qc_table

        matrix = _matrix(p, i, x, n_genes, n_cells, genes, cells, source, value_kind)
        limits = QCThresholds(**(thresholds or {}))
        table = qc_table(matrix, thresholds=limits,
                         doublets="builtin" if doublets is True else doublets)
        notes = (table.schema.metadata or {}).get(b"scbridge.qc_thresholds", b"{}").decode()
        return {"columns": _extra_columns(table, {"cell"}), "names": table.column_names[1:],
                "notes": notes}

    return _call(run)


def build_reference(p: Any, i: Any, x: Any, n_genes: int, n_cells: int, genes: Any,
                    cells: Any, source: str, labels: Any, label_column: str, out: str,
                    value_kind: str | None = None, params: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """``bridge.build_reference`` on the cells with ``labels``, written to ``out``."""

    def run() -> dict[str, Any]:
        from bridge import build_reference as build

        matrix = _matrix(p, i, x, n_genes, n_cells, genes, cells, source, value_kind,
                         obs={label_column: labels})
        model = build(matrix, label_column=label_column, out=out, **(params or {}))
        return {"labels": list(model.labels), "n_genes": len(model.genes)}

    return _call(run)


def embed(p: Any, i: Any, x: Any, n_genes: int, n_cells: int, genes: Any, cells: Any,
          source: str, n_components: int, value_kind: str | None = None,
          params: dict[str, Any] | None = None) -> dict[str, Any]:

    def run() -> dict[str, Any]:
        from bridge import embed as embed_cells
        from bridge._contract import embedding_array

        matrix = _matrix(p, i, x, n_genes, n_cells, genes, cells, source, value_kind)
        table = embed_cells(matrix, n_components=int(n_components), **(params or {}))
        return {"cell": table.column("cell").to_pylist(),
                "embedding": np.asarray(embedding_array(table), dtype=np.float64)}

    return _call(run)


def markers(p: Any, i: Any, x: Any, n_genes: int, n_cells: int, genes: Any, cells: Any,
            source: str, labels: Any, top_n: int, method: str, value_kind: str | None = None,
            params: dict[str, Any] | None = None) -> dict[str, Any]:

    def run() -> dict[str, Any]:
        import pyarrow as pa

        from bridge import rank_marker_genes

        matrix = _matrix(p, i, x, n_genes, n_cells, genes, cells, source, value_kind)
        labelled = pa.table({"cell": pa.array(_strings(cells), pa.string()),
                             "label": pa.array([None if v is None else str(v) for v in labels],
                                               pa.string())})
        table = rank_marker_genes(matrix, labelled, top_n=int(top_n), method=method,
                                  **(params or {}))
        return {name: table.column(name).to_pylist() for name in table.column_names}

    return _call(run)


def gene_symbols(genes: Any) -> dict[str, Any]:
    """Human gene symbols for ``genes`` (Ensembl ids, mouse symbols ...), as the core maps them
    for annotation; ids it cannot map stay as they are."""

    def run() -> list[str]:
        from bridge.genes import map_to_human_symbols

        return [str(g) for g in map_to_human_symbols(_strings(genes)).genes]

    return _call(run)

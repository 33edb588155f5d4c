"""One PCA, one kNN graph and one 2-D layout per data set, shared by everything that needs them.

Layer: public API (beside ``embed``, ``report``); uses ``embed``'s PCA and the numerics
layer's :mod:`bridge._layout`.

``bridge.embed(..., layout=...)``, kNN smoothing (``annotate(smooth="knn")``), the HTML report
and ``--write-back`` all ask here.  Results are remembered per :class:`~bridge.CellMatrix`
object (weakly: they go when the matrix goes) and per parameters, so a CLI run that
annotates, smooths, reports and writes back computes the PCA, the graph and the layout once.
The matrix is assumed not to change in place while it is in use (scbridge never changes it).

Layout methods:

``"umap-fast"``
    UMAP's objective on the shared kNN graph, optimised in parallel and deterministically
    (:func:`bridge._layout.umap_layout`); needs numba (the ``layout`` extra).
``"umap"``
    umap-learn itself (its own kNN search; single-threaded when seeded).
``"tsne"``
    scikit-learn's t-SNE.
``"pca"``
    The first two principal components.
``"auto"``
    ``"umap-fast"`` when numba is installed and there are more than 15 cells, else ``"pca"``
    (with a warning that says how to get the better picture).
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from ._errors import InputError, MissingDependencyError

if TYPE_CHECKING:
    import pyarrow as pa

    from ._layout import KnnGraph
    from .matrix import CellMatrix

__all__ = ["LAYOUT_METHODS", "LayoutMethod", "layout", "layout_points", "layout_table",
           "neighbours", "pca_scores"]

logger = logging.getLogger(__name__)

LayoutMethod = Literal["auto", "umap-fast", "umap", "tsne", "pca"]
LAYOUT_METHODS = ("auto", "umap-fast", "umap", "tsne", "pca")
DISPLAY_NAMES = {"umap-fast": "UMAP", "umap": "UMAP (umap-learn)", "tsne": "t-SNE",
                 "pca": "PC 1 / PC 2"}
DEFAULT_K = 15


@dataclass
class _Results:
    pca: dict[tuple[int, int, int], tuple[NDArray[Any], int]] = field(default_factory=dict)
    graphs: dict[tuple[Any, ...], KnnGraph] = field(default_factory=dict)
    layouts: dict[tuple[Any, ...], tuple[NDArray[Any], str]] = field(default_factory=dict)


_RESULTS: dict[int, _Results] = {}
_LOCK = threading.RLock()


def _results(matrix: CellMatrix) -> _Results:
    key = id(matrix)
    with _LOCK:
        found = _RESULTS.get(key)
        if found is None:
            found = _RESULTS[key] = _Results()
            # The id is free again once the matrix is gone: forget its results then.
            weakref.finalize(matrix, _RESULTS.pop, key, None)
        return found


def pca_scores(matrix: CellMatrix, *, n_components: int = 30, n_top_genes: int = 2000,
               seed: int = 0, clip: bool = False) -> tuple[NDArray[Any], int]:
    """The PCA scores of ``bridge.embed`` (cells x components, float32) and the number of
    variable genes used, computed once per matrix and parameters.

    ``clip=True`` quietly asks for fewer components where the input cannot give that many
    (``embed`` itself raises :class:`~bridge.InputError` instead).
    """
    from ._embed import _pca_scores

    key = (n_components, n_top_genes, seed)
    store = _results(matrix)
    with _LOCK:
        if key in store.pca:
            return store.pca[key]
    result = _pca_scores(matrix, n_components, n_top_genes, seed, clip=clip)
    with _LOCK:
        store.pca[key] = result
    return result


def neighbours(matrix: CellMatrix, k: int = DEFAULT_K, *, n_components: int = 30,
               n_top_genes: int = 2000, seed: int = 0) -> KnnGraph:
    """Each cell's ``k`` nearest cells (itself first) in the PCA space, computed once per
    matrix: a smaller ``k`` is cut from the graph already found."""
    from ._layout import nearest_neighbours

    store = _results(matrix)
    pca_key = (n_components, n_top_genes, seed)
    with _LOCK:
        known = [g for (key, _), g in store.graphs.items() if key == pca_key and g.k >= k]
    if known:
        return known[0].head(min(k, known[0].k))
    scores = _scores_or_none(matrix, n_components, n_top_genes, seed)
    if scores is None:  # too few cells or genes for a PCA: each cell its own neighbour
        indices = np.arange(matrix.n_cells, dtype=np.int32)[:, None]
        from ._layout import KnnGraph

        return KnnGraph(indices, np.zeros(indices.shape, np.float32), True)
    graph = nearest_neighbours(scores, max(k, DEFAULT_K), seed=seed)
    with _LOCK:
        store.graphs[(pca_key, graph.k)] = graph
    return graph.head(min(k, graph.k))


def _scores_or_none(matrix: CellMatrix, n_components: int, n_top_genes: int, seed: int
                    ) -> NDArray[Any] | None:
    if matrix.n_cells < 3:
        return None
    try:
        scores, _ = pca_scores(matrix, n_components=n_components, n_top_genes=n_top_genes,
                               seed=seed, clip=True)
    except InputError as exc:  # e.g. no expressed gene at all
        logger.warning("no PCA for the kNN graph: %s", exc)
        return None
    return scores


def resolve_method(method: str, n_cells: int) -> str:
    """The method ``"auto"`` stands for here, or a clear error for an unknown one."""
    if method not in LAYOUT_METHODS:
        msg = (f"layout method must be one of {', '.join(LAYOUT_METHODS)}, got {method!r}; "
               "'auto' picks the fastest one installed.")
        raise InputError(msg)
    if method != "auto":
        return method
    if n_cells <= DEFAULT_K:
        return "pca"
    from ._layout import has_numba

    if has_numba():
        return "umap-fast"
    logger.warning("numba is not installed, so the 2-D layout is the first two principal "
                   "components; pip install 'scbridge[layout]' for a UMAP-style layout")
    return "pca"


def layout(matrix: CellMatrix, *, method: str = "auto", seed: int = 0, n_components: int = 30,
           n_top_genes: int = 2000, progress: bool = False) -> tuple[NDArray[Any], str] | None:
    """Two coordinates per cell of ``matrix`` (float32) and the method that made them,
    computed once per matrix, method and seed; ``None`` when the input is too small for a
    PCA of two components."""
    resolved = resolve_method(method, matrix.n_cells)
    store = _results(matrix)
    key = (n_components, n_top_genes, seed, resolved)
    with _LOCK:
        if key in store.layouts:
            return store.layouts[key]
    scores = _scores_or_none(matrix, n_components, n_top_genes, seed)
    if scores is None or scores.shape[1] < 2:
        return None
    graph = None
    if resolved == "umap-fast":
        graph = neighbours(matrix, DEFAULT_K, n_components=n_components,
                           n_top_genes=n_top_genes, seed=seed)
    coords, used = layout_points(scores, method=resolved, seed=seed, graph=graph,
                                 progress=progress)
    with _LOCK:
        store.layouts[key] = (coords, used)
    return coords, used


def layout_table(matrix: CellMatrix, *, method: str = "auto", seed: int = 0,
                 progress: bool = False) -> pa.Table | None:
    """``cell`` and ``layout`` (``fixed_size_list<float32>[2]``, the column group of
    ``bridge.embed(layout=...)``, method in ``scbridge.layout``) for every cell of ``matrix``,
    from the shared layout; ``None`` when the input is too small for one."""
    import pyarrow as pa

    laid_out = layout(matrix, method=method, seed=seed, progress=progress)
    if laid_out is None:
        return None
    coords, used = laid_out
    table = pa.table({
        "cell": pa.array(matrix.cells.astype(str).tolist(), pa.string()),
        "layout": pa.FixedSizeListArray.from_arrays(pa.array(coords.ravel(), pa.float32()), 2),
    })
    return table.replace_schema_metadata({b"scbridge.layout": used.encode(),
                                          b"scbridge.seed": str(seed).encode()})


def layout_points(points: Any, *, method: str = "auto", seed: int = 0,
                  graph: KnnGraph | None = None, progress: bool = False
                  ) -> tuple[NDArray[Any], str]:
    """A 2-D layout of cells given as points (PCA scores): coordinates and the method used
    (one of ``"umap-fast"``, ``"umap"``, ``"tsne"``, ``"pca"``)."""
    X = np.asarray(points, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] < 1:
        msg = f"points must be cells x components with at least one component, got {X.shape}."
        raise InputError(msg)
    n_cells = X.shape[0]
    resolved = resolve_method(method, n_cells)
    if resolved == "pca" or n_cells < 3:
        if X.shape[1] < 2:
            X = np.column_stack([X[:, 0], np.zeros(n_cells, np.float32)])
        return np.ascontiguousarray(X[:, :2], dtype=np.float32), "pca"
    init = X[:, :2] if X.shape[1] >= 2 else np.column_stack([X[:, 0], np.zeros(n_cells)])
    if resolved == "umap-fast":
        from ._layout import nearest_neighbours, umap_layout

        if graph is None:
            graph = nearest_neighbours(X, DEFAULT_K, seed=seed)
        return umap_layout(graph, init, seed=seed, progress=progress), "umap-fast"
    if resolved == "umap":
        if find_spec("umap") is None:
            msg = ("layout method 'umap' needs umap-learn (pip install umap-learn); "
                   "'umap-fast' (or 'auto') needs only numba.")
            raise MissingDependencyError(msg)
        import umap

        reducer = umap.UMAP(n_neighbors=min(DEFAULT_K, n_cells - 1), random_state=seed,
                            n_jobs=1)
        return np.asarray(reducer.fit_transform(X), dtype=np.float32), "umap"
    if find_spec("sklearn") is None:
        msg = "layout method 'tsne' needs scikit-learn (pip install 'scbridge[reference]')."
        raise MissingDependencyError(msg)
    from sklearn.manifold import TSNE

    perplexity = min(30.0, max(2.0, (n_cells - 1) / 3))
    coords = TSNE(2, perplexity=perplexity, random_state=seed, init="pca",
                  n_jobs=1).fit_transform(X)
    return coords.astype(np.float32), "tsne"



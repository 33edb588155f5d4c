"""``panel_block`` (the columns an engine reads) against scipy's own column indexing."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from bridge.engines._marker_scoring import row_view
from bridge.numerics import panel_block


def _expected(X: sp.csr_matrix, columns: np.ndarray, dtype: type) -> sp.csr_matrix:
    out = sp.csr_matrix(X.toarray()[:, columns].astype(dtype))
    return out


@pytest.mark.parametrize("offsets", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sorted_columns", [True, False])
def test_panel_block_matches_dense_selection(offsets: type, dtype: type,
                                             sorted_columns: bool) -> None:
    rng = np.random.default_rng(7)
    X = sp.random(300, 500, density=0.05, format="csr", random_state=3, dtype=np.float64)
    X.data[::5] = 0.0  # explicit zeros stay (an engine may read them as measured zeros)
    X.indptr = X.indptr.astype(offsets)
    columns = rng.choice(500, size=60, replace=False)
    if sorted_columns:
        columns = np.sort(columns)
    before = (X.data.copy(), X.indices.copy(), X.indptr.copy())
    block = panel_block(X, columns, dtype=dtype)
    assert block.dtype == dtype and block.shape == (300, 60)
    assert block.has_sorted_indices
    expected = _expected(X, columns, dtype)
    assert np.array_equal(block.toarray(), expected.toarray())
    kept_zeros = int((np.isin(X.indices, columns) & (X.data == 0)).sum())
    assert block.nnz == expected.nnz + kept_zeros
    for a, b in zip(before, (X.data, X.indices, X.indptr), strict=True):  # input untouched
        assert np.array_equal(a, b)


def test_panel_block_of_a_row_view_reads_only_its_rows() -> None:
    X = sp.random(1000, 200, density=0.1, format="csr", random_state=1, dtype=np.float32)
    view = row_view(X, 600, 650)
    assert np.shares_memory(view.data, X.data)  # a view, not scipy's pruned copy
    columns = np.arange(0, 200, 3)
    block = panel_block(view, columns, dtype=np.float32)
    assert np.array_equal(block.toarray(), X.toarray()[600:650, columns])


def test_panel_block_of_nothing() -> None:
    X = sp.csr_matrix((4, 10), dtype=np.float32)
    assert panel_block(X, np.array([1, 2])).shape == (4, 2)
    assert panel_block(sp.random(4, 10, density=0.5, format="csr"), np.array([], int)
                       ).shape == (4, 0)

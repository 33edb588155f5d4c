"""Expected values written by tests/r/make_fixtures.R (R's own p / i / x and names)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp


def expected_csr(folder: Path, name: str) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """(cells x genes CSR, cells, genes) exactly as R reported them."""
    p = np.fromfile(folder / f"{name}.p.bin", dtype="<i4")
    i = np.fromfile(folder / f"{name}.i.bin", dtype="<i4")
    x = np.fromfile(folder / f"{name}.x.bin", dtype="<f8")
    cells = (folder / f"{name}.cells.txt").read_text().splitlines()
    genes = (folder / f"{name}.genes.txt").read_text().splitlines()
    return sp.csr_matrix((x, i, p), shape=(len(cells), len(genes))), cells, genes


def assert_same(matrix, X: sp.csr_matrix, cells: list[str], genes: list[str]) -> None:
    """Exact equality of a CellMatrix with R's values: structure and every value, bit for bit."""
    assert list(matrix.cells) == cells
    assert list(matrix.genes) == genes
    got = matrix.X
    assert got.shape == X.shape
    np.testing.assert_array_equal(got.indptr, X.indptr)
    np.testing.assert_array_equal(got.indices, X.indices)
    np.testing.assert_array_equal(got.data, X.data)

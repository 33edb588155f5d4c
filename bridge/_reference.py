"""``bridge.build_reference``: a reference model from any labelled data set.

Reading the labelled cells is this module's; the fit and the file format live in
:mod:`bridge.engines.reference`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .matrix import CellMatrix

if TYPE_CHECKING:
    from pathlib import Path

    from .engines.reference import ReferenceModel

__all__ = ["build_reference"]


def build_reference(
    source: Any,
    *,
    label_column: str,
    out: str | Path | None = None,
    assay: str | None = None,
    layer: str | None = None,
    genes_per_label: int = 200,
    regularization: float = 0.03,
    min_cells_per_label: int = 10,
    max_cells_per_label: int | None = 5_000,
    drop_labels: Sequence[str] = ("", "NA", "nan", "None", "Unknown"),
    calibrate: bool = True,
    seed: int = 0,
) -> ReferenceModel:
    """Build a reference model from labelled cells and optionally write it.

    Parameters
    ----------
    source
        Anything :func:`bridge.read` accepts (Seurat / SCE ``.rds``, ``.h5ad``, Arrow CSR,
        AnnData, ``CellMatrix``) with a cell metadata column of labels.
    label_column
        The metadata column holding the cell-type labels (``obs`` / ``meta.data``).
    out
        Where to write the reference (Parquet).  ``None`` keeps it in memory only.
    assay, layer
        Passed to :func:`bridge.read`.
    genes_per_label
        Informative genes kept per label (one-vs-rest Welch t); the union is the model.
    regularization
        Inverse L2 strength ``C`` of the logistic regression (smaller = smoother).
    min_cells_per_label
        Labels with fewer cells are refused (:class:`~bridge.InputError`) because a model
        cannot learn them.
    max_cells_per_label
        Larger labels are subsampled (fixed ``seed``) to keep building fast and balanced.
    drop_labels
        Label values treated as "no label" and left out.
    calibrate
        Scale the model so its confidences match its accuracy on held-out cells
        (temperature scaling; costs a second fit, never changes the calls).
    seed
        Seed for subsampling.

    Returns
    -------
    ReferenceModel
        The model (also written to ``out`` when given); use it with
        ``bridge.annotate(..., model="reference", atlas=out)``.
    """
    from .engines.reference import fit_reference
    from .io import read
    from .io._files import refuse_same_file

    if out is not None and isinstance(source, str | os.PathLike):
        refuse_same_file(out, [source], what="the reference")  # before any work
    matrix = source if isinstance(source, CellMatrix) else read(source, assay=assay, layer=layer)
    return fit_reference(
        matrix, label_column=label_column, out=out, genes_per_label=genes_per_label,
        regularization=regularization, min_cells_per_label=min_cells_per_label,
        max_cells_per_label=max_cells_per_label, drop_labels=drop_labels, calibrate=calibrate,
        seed=seed)

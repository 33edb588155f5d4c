"""scbridge: Seurat, SingleCellExperiment, AnnData and Arrow into one zero-copy CSR matrix,
annotated locally, through a reference, or by a remote service.

The public surface is this module: every name in ``__all__`` is re-exported from the
private module that defines it (``bridge._annotate``, ``bridge.io``, ...).  Importing
``bridge`` is cheap: readers, engines and R load only when first used.

One verb per job:

=========================  =============================================================
``read`` / ``read_chunks``  any container -> :class:`CellMatrix` (cells x genes CSR)
``describe``                what a file holds, without converting it
``qc``                      per-cell QC metrics and pass / fail
``annotate``                cell-type calls (Arrow table); ``call_cells`` is the bare engine run
``build_reference``         a reference model from labelled cells
``rank_marker_genes``       marker genes per label (one-vs-rest DE)
``embed``                   a PCA embedding per cell
``write`` / ``write_back``  a matrix to a file; calls back into the user's object
``write_report``            the HTML report
``write_partitions`` /      a partitioned data set, annotated on a Dask cluster
``annotate_partitions``
=========================  =============================================================
"""

# No ``from __future__`` import and only underscored helpers: every public name in this
# namespace is in ``__all__`` (tests/test_public_api.py checks it).
import importlib as _importlib
import typing as _typing

from ._errors import (
    BridgeError,
    CapacityError,
    FormatError,
    GeneIdError,
    InputError,
    MissingDependencyError,
    NotFoundError,
    RemoteError,
    RError,
    UnsupportedError,
)
from ._version import __version__
from .matrix import CellMatrix

if _typing.TYPE_CHECKING:
    from ._annotate import annotate, call_cells
    from ._embed import embed
    from ._partitioned import annotate_partitions, write_partitions
    from ._qc import QCThresholds, qc
    from ._rank_markers import rank_marker_genes
    from ._reference import build_reference
    from ._report import write_report
    from .engines.remote import RemoteClient
    from .io import describe, read, read_chunks, write
    from .io.write_back import write_back

# Public name -> private module that defines it; imported on first attribute access.
_LAZY = {
    "QCThresholds": "bridge._qc",
    "RemoteClient": "bridge.engines.remote",
    "annotate": "bridge._annotate",
    "annotate_partitions": "bridge._partitioned",
    "build_reference": "bridge._reference",
    "call_cells": "bridge._annotate",
    "describe": "bridge.io",
    "embed": "bridge._embed",
    "qc": "bridge._qc",
    "rank_marker_genes": "bridge._rank_markers",
    "read": "bridge.io",
    "read_chunks": "bridge.io",
    "write": "bridge.io",
    "write_back": "bridge.io.write_back",
    "write_partitions": "bridge._partitioned",
    "write_report": "bridge._report",
}

__all__ = [
    "BridgeError",
    "CapacityError",
    "CellMatrix",
    "FormatError",
    "GeneIdError",
    "InputError",
    "MissingDependencyError",
    "NotFoundError",
    "QCThresholds",
    "RError",
    "RemoteClient",
    "RemoteError",
    "UnsupportedError",
    "__version__",
    "annotate",
    "annotate_partitions",
    "build_reference",
    "call_cells",
    "describe",
    "embed",
    "qc",
    "rank_marker_genes",
    "read",
    "read_chunks",
    "write",
    "write_back",
    "write_partitions",
    "write_report",
]


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    msg = f"module 'bridge' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return list(__all__)

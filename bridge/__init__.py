"""scbridge: Seurat, SingleCellExperiment, AnnData and Arrow into one zero-copy CSR matrix,
annotated locally, through a reference, or by a remote service.

Importing ``bridge`` is cheap: readers, engines and R load only when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
from .matrix import CellMatrix

if TYPE_CHECKING:
    from .io import describe, read, read_chunks, write
    from .io.write_back import write_back

__version__ = "0.1.0"

# Public name -> module that defines it; resolved on first attribute access.
_LAZY = {
    "RemoteClient": "bridge.engines.remote",
    "annotate": "bridge.annotate",
    "annotate_partitions": "bridge.partitioned",
    "call_cells": "bridge.annotate",
    "describe": "bridge.io",
    "embed": "bridge.embed",
    "markers": "bridge.markers_export",
    "read": "bridge.io",
    "read_chunks": "bridge.io",
    "write": "bridge.io",
    "write_back": "bridge.io.write_back",
    "write_partitions": "bridge.partitioned",
}

__all__ = sorted([
    "BridgeError",
    "CapacityError",
    "CellMatrix",
    "FormatError",
    "GeneIdError",
    "InputError",
    "MissingDependencyError",
    "NotFoundError",
    "RError",
    "RemoteError",
    "UnsupportedError",
    "__version__",
    *_LAZY,
])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    msg = f"module 'bridge' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return __all__

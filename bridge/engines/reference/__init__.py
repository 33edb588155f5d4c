"""The reference engine: a linear model learned from any labelled data set.

``_format`` is the file (Parquet, validated on load), ``_build`` the fit, ``_engine`` the
engine that applies it.  Build one with :func:`bridge.build_reference`.
"""

from __future__ import annotations

from .. import register_engine
from ._build import fit_reference
from ._engine import ReferenceEngine
from ._format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ReferenceModel,
    load_reference,
    ontology_for,
    save_reference,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ReferenceEngine",
    "ReferenceModel",
    "fit_reference",
    "load_reference",
    "ontology_for",
    "save_reference",
]

register_engine("reference", ReferenceEngine,
                "logistic model built from your own labelled data (scbridge build-reference)",
                needs_atlas=True)

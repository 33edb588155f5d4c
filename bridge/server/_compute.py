"""What the endpoints compute: calls, embeddings and markers for one decoded request.

The server offers a fixed catalogue: the registered engines (or those named at start-up) and,
per model, the atlases given at start-up by name.  A request names a model and an atlas; it
can never make the server open a path of its choosing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._problems import ApiError
from ._settings import Settings

if TYPE_CHECKING:
    import pyarrow as pa

    from ..matrix import CellMatrix

__all__ = ["Catalog", "annotate", "embed", "markers"]

logger = logging.getLogger(__name__)


class Catalog:
    """Models and atlases this server offers."""

    def __init__(self, settings: Settings) -> None:
        from ..engines import available_models

        registered = available_models()
        wanted = settings.models or tuple(registered)
        unknown = [m for m in wanted if m not in registered]
        if unknown:
            from .._errors import NotFoundError

            msg = (f"unknown model(s) {', '.join(unknown)}; registered models: "
                   f"{', '.join(registered)}.")
            raise NotFoundError(msg)
        self.atlases: dict[str, dict[str, str | None]] = {m: {} for m in wanted}
        for model, named in settings.atlases.items():
            if model in self.atlases:
                self.atlases[model].update(named)
        # Built-in databases, named as the engines name them (never a path from a client).
        if "markers" in self.atlases:
            self.atlases["markers"].setdefault("default", None)
        # The reference engine has nothing to apply without a reference file.
        if "reference" in self.atlases and not self.atlases["reference"]:
            del self.atlases["reference"]
        self.descriptions = {m: registered[m] for m in self.atlases}
        self.default_model = (settings.default_model if settings.default_model in self.atlases
                              else next(iter(self.atlases), ""))

    def needs_atlas(self, model: str) -> bool:
        return model == "reference"

    def resolve(self, model: Any, atlas: Any) -> tuple[str, str | None, str | None]:
        """``(model, atlas value for the engine, atlas name)``, or a 422 listing the choices."""
        model = self.default_model if model is None else model
        if not isinstance(model, str) or model not in self.atlases:
            raise ApiError(422, "unknown_model",
                           f"unknown model {str(model)[:100]!r}; this server offers: "
                           f"{', '.join(self.atlases) or 'none'}.",
                           "GET /v1/models lists the models and atlases; pick one of them")
        named = self.atlases[model]
        if atlas is None:
            if not self.needs_atlas(model):
                return model, None, None
            if len(named) == 1:
                name = next(iter(named))
                return model, named[name], name
        if not isinstance(atlas, str) or atlas not in named:
            choices = ", ".join(named) or "none (leave reference_atlas out)"
            raise ApiError(422, "unknown_atlas",
                           f"unknown reference_atlas {str(atlas)[:100]!r} for model {model!r}; "
                           f"available: {choices}.",
                           "set reference_atlas to one of the names GET /v1/models lists")
        return model, named[atlas], atlas

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": m, "description": self.descriptions[m], "atlases": sorted(self.atlases[m]),
             "atlas_required": self.needs_atlas(m) and len(self.atlases[m]) != 1}
            for m in self.atlases
        ]


def _call_cells(matrix: CellMatrix, model: str, atlas: str | None) -> pa.Table:
    try:
        from ..annotate import call_cells
    except ImportError:
        # bridge.annotate not there yet: the same steps, straight from the engine registry.
        from ..calls import chunk_table, concat_calls, with_metadata
        from ..engines import get_engine

        engine = get_engine(model, atlas=atlas)
        tables = [chunk_table(c.cells, engine.annotate_chunk(c))
                  for c in matrix.iter_chunks(50_000)]
        return with_metadata(concat_calls(tables), engine=engine.name, model=model,
                             atlas=engine.atlas, parameters=engine.parameters())
    return call_cells(matrix, model=model, atlas=atlas, progress=False)


def annotate(matrix: CellMatrix, model: str, atlas: str | None, atlas_name: str | None
             ) -> pa.Table:
    """The Calls table for ``matrix`` (runs in a worker thread)."""
    from ..calls import with_metadata

    table = _call_cells(matrix, model, atlas)
    if atlas_name is None:
        return table
    # Provenance names the atlas as clients know it, never the server's file path.
    return with_metadata(table, atlas=atlas_name)


def embed(matrix: CellMatrix, *, n_components: int, n_top_genes: int, seed: int) -> pa.Table:
    from ..embed import embed as embed_cells

    return embed_cells(matrix, n_components=n_components, n_top_genes=n_top_genes, seed=seed)


def markers(matrix: CellMatrix, labels: list[Any], *, top_n: int, method: str) -> pa.Table:
    import pyarrow as pa

    from ..markers_export import markers as find_markers

    calls = pa.table({"cell": pa.array([str(c) for c in matrix.cells], pa.string()),
                      "label": pa.array([None if v is None else str(v) for v in labels],
                                        pa.string())})
    return find_markers(matrix, calls, top_n=top_n, method=method)  # type: ignore[arg-type]

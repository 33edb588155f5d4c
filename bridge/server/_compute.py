"""What the endpoints compute: calls, embeddings and markers for one decoded request.

The server offers a fixed catalogue: the registered engines a server may offer (or those named
at start-up) and, per model, the atlases given at start-up by name.  A request names a model
and an atlas; it can never make the server open a path of its choosing.  Every engine of the
catalogue is built (its reference read and validated) when the server starts, so a broken
reference stops the start, and requests reuse the built engines.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .._errors import BridgeError, NotFoundError
from ._problems import ApiError
from ._settings import Settings

if TYPE_CHECKING:
    import pyarrow as pa

    from ..engines import Engine
    from ..matrix import CellMatrix

__all__ = ["Catalog", "annotate", "embed", "rank_marker_genes"]

logger = logging.getLogger(__name__)


class Catalog:
    """Models and atlases this server offers, with their engines built once."""

    def __init__(self, settings: Settings) -> None:
        from ..engines import available_models

        registered = available_models(served=True)
        wanted = settings.models or tuple(registered)
        unknown = [m for m in wanted if m not in registered]
        if unknown:
            msg = (f"unknown model(s) {', '.join(unknown)}; registered models: "
                   f"{', '.join(registered)}.")
            raise NotFoundError(msg, code="unknown_model")
        self.atlases: dict[str, dict[str, str | None]] = {m: {} for m in wanted}
        for model, named in settings.atlases.items():
            if model in self.atlases:
                self.atlases[model].update(named)
        # Engines that need an atlas have nothing to apply without one; the others offer
        # their built-in database as "default" (never a path from a client).
        for model in list(self.atlases):
            if registered[model].needs_atlas:
                if not self.atlases[model]:
                    del self.atlases[model]
            else:
                self.atlases[model].setdefault("default", None)
        self.info = {m: registered[m] for m in self.atlases}
        self.default_model = (settings.default_model if settings.default_model in self.atlases
                              else next(iter(self.atlases), ""))
        self.engines: dict[tuple[str, str], Engine] = {}
        for model, entries in self.atlases.items():
            for name, value in entries.items():
                self.engines[model, name] = self._build(model, name, value)

    @staticmethod
    def _build(model: str, name: str, value: str | None) -> Engine:
        """The engine for one catalogue entry; a broken atlas stops the server's start."""
        from ..engines import get_engine

        try:
            return get_engine(model, atlas=value)
        except BridgeError as exc:
            msg = f"model {model!r}, atlas {name!r} cannot be loaded: {exc}"
            raise type(exc)(msg, code=exc.code) from None

    def needs_atlas(self, model: str) -> bool:
        return self.info[model].needs_atlas

    def resolve(self, model: Any, atlas: Any) -> tuple[str, str]:
        """``(model, atlas name)``, or a 422 listing the choices."""
        model = self.default_model if model is None else model
        if not isinstance(model, str) or model not in self.atlases:
            raise ApiError(422, "unknown_model",
                           f"unknown model {str(model)[:100]!r}; this server offers: "
                           f"{', '.join(self.atlases) or 'none'}.",
                           "GET /v1/models lists the models and atlases; pick one of them")
        named = self.atlases[model]
        if atlas is None:
            if not self.needs_atlas(model):
                return model, "default"
            if len(named) == 1:
                return model, next(iter(named))
        if not isinstance(atlas, str) or atlas not in named:
            choices = ", ".join(named) or "none (leave reference_atlas out)"
            raise ApiError(422, "unknown_atlas",
                           f"unknown reference_atlas {str(atlas)[:100]!r} for model {model!r}; "
                           f"available: {choices}.",
                           "set reference_atlas to one of the names GET /v1/models lists")
        return model, atlas

    def engine(self, model: str, atlas: str, **params: Any) -> Engine:
        """The built engine of a catalogue entry (``params``: per-request engine options)."""
        if not params:
            return self.engines[model, atlas]
        from ..engines import get_engine

        return get_engine(model, atlas=self.atlases[model][atlas], **params)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": m, "description": self.info[m].description,
             "atlases": sorted(self.atlases[m]),
             "atlas_required": self.needs_atlas(m) and len(self.atlases[m]) != 1}
            for m in self.atlases
        ]


def annotate(matrix: CellMatrix, catalog: Catalog, model: str, atlas: str,
             **params: Any) -> pa.Table:
    """The Calls table for ``matrix`` (runs in a worker thread)."""
    from .._annotate import call_cells
    from .._contract import with_metadata

    engine = catalog.engine(model, atlas, **params)
    table = call_cells(matrix, model=model, engine=engine, progress=False)
    # Provenance names the atlas as clients know it, never the server's file path.
    return with_metadata(table, atlas=atlas)


def embed(matrix: CellMatrix, *, n_components: int, n_top_genes: int, seed: int) -> pa.Table:
    from .._embed import embed as embed_cells

    return embed_cells(matrix, n_components=n_components, n_top_genes=n_top_genes, seed=seed)


def rank_marker_genes(matrix: CellMatrix, labels: list[Any], *, top_n: int,
                      method: str) -> pa.Table:
    import pyarrow as pa

    from .._rank_markers import rank_marker_genes as rank

    calls = pa.table({"cell": pa.array([str(c) for c in matrix.cells], pa.string()),
                      "label": pa.array([None if v is None else str(v) for v in labels],
                                        pa.string())})
    return rank(matrix, calls, top_n=top_n, method=method)  # type: ignore[arg-type]

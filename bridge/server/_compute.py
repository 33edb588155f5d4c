"""What the endpoints compute: calls, embeddings and markers for one decoded request.

The server offers a fixed catalogue: the registered engines a server may offer (or those named
at start-up) and, per model, the atlases given at start-up by name.  A request names a model
and an atlas; it can never make the server open a path of its choosing.  Every engine of the
catalogue is built (its reference read and validated) when the server starts, so a broken
reference stops the start, and requests reuse the built engines.

A reference file that changes on disk (size, modification time or inode) is loaded and
validated again when the next request asks for it; only a valid new version replaces the
engine in use.  A broken or missing replacement is logged (once per version) and the loaded
engine keeps serving, so a half-copied file never turns into failed requests, and a request
that started keeps the engine it started with.  Clients never see a server path: replies name
atlases, and :meth:`Catalog.scrub` removes any path from error messages.
"""

from __future__ import annotations

import json
import logging
import os
import threading
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
        self._stamps: dict[tuple[str, str], Any] = {}
        self._refused: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        for model, entries in self.atlases.items():
            for name, value in entries.items():
                self._stamps[model, name] = _file_stamp(value)
                self.engines[model, name] = self._build(model, name, value)
        self._paths = sorted({p for entries in self.atlases.values() for v in entries.values()
                              if v for p in _spellings(v)}, key=len, reverse=True)

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
        """The built engine of a catalogue entry (``params``: per-request engine options),
        reloaded first when its atlas file changed."""
        self._reload_if_changed(model, atlas)
        if not params:
            return self.engines[model, atlas]
        from ..engines import get_engine

        return get_engine(model, atlas=self.atlases[model][atlas], **params)

    def _reload_if_changed(self, model: str, atlas: str) -> None:
        value = self.atlases[model][atlas]
        if not value:
            return
        stamp = _file_stamp(value)
        key = (model, atlas)
        if stamp == self._stamps[key] or stamp == self._refused.get(key):
            return
        with self._lock:
            if stamp == self._stamps[key] or stamp == self._refused.get(key):
                return
            if stamp is None:
                logger.warning("atlas %r of model %r: its file is gone; the loaded version "
                               "keeps serving", atlas, model)
                self._refused[key] = stamp
                return
            try:
                engine = self._build(model, atlas, value)
            except BridgeError as exc:
                logger.error("atlas %r of model %r changed on disk but cannot be loaded (%s); "
                             "the loaded version keeps serving", atlas, model, exc)
                self._refused[key] = stamp
                return
            self.engines[key], self._stamps[key] = engine, stamp
            self._refused.pop(key, None)
            logger.info("atlas %r of model %r changed on disk: reloaded", atlas, model)

    def scrub(self, text: str) -> str:
        """``text`` with every server path of the catalogue replaced by ``<server path>``."""
        for path in self._paths:
            if path in text:
                text = text.replace(path, "<server path>")
        return text

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
    from .._contract import metadata_dict, with_metadata

    engine = catalog.engine(model, atlas, **params)
    table = call_cells(matrix, model=model, engine=engine, progress=False)
    # Provenance names the atlas as clients know it, never the server's file path (nor the
    # path of the data a reference was built from).
    parameters = metadata_dict(table).get("parameters")
    if isinstance(parameters, dict):
        training = parameters.get("training")
        if isinstance(training, dict) and isinstance(training.get("source"), str):
            training["source"] = os.path.basename(training["source"])
        return with_metadata(table, atlas=atlas,
                             parameters=json.loads(catalog.scrub(json.dumps(parameters))))
    return with_metadata(table, atlas=atlas)


def _file_stamp(value: str | None) -> Any:
    """What identifies one version of an atlas file (``None``: not a file, or gone)."""
    if not value:
        return None
    try:
        stat = os.stat(value)
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _spellings(value: str) -> list[str]:
    """The ways a server path can appear in a message: as given, resolved, and their folders
    (a folder is at least two levels deep, so ``/`` or ``/data`` alone are left alone)."""
    out = set()
    for path in (value, os.path.realpath(value)):
        if os.sep in path:
            out.add(path)
            folder = os.path.dirname(path)
            if folder.count(os.sep) >= 2:
                out.add(folder)
    return sorted(out)


def embed(matrix: CellMatrix, *, n_components: int, n_top_genes: int, seed: int) -> pa.Table:
    from .._embed import embed as embed_cells

    return embed_cells(matrix, n_components=n_components, n_top_genes=n_top_genes, seed=seed)


def rank_marker_genes(matrix: CellMatrix, labels: list[Any], *, top_n: int, method: str,
                      min_cells: int, max_labels: int) -> pa.Table:
    import pyarrow as pa

    from .._rank_markers import rank_marker_genes as rank

    calls = pa.table({"cell": pa.array([str(c) for c in matrix.cells], pa.string()),
                      "label": pa.array([None if v is None else str(v) for v in labels],
                                        pa.string())})
    return rank(matrix, calls, top_n=top_n, method=method,  # type: ignore[arg-type]
                min_cells=min_cells, max_labels=max_labels)

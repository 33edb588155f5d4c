"""Annotation engines, looked up by model name in one registry.

An engine turns one chunk of cells into :class:`~bridge.calls.ChunkCalls`.  Adding an engine
is one module and one :func:`register_engine` call; ``bridge.annotate`` and the server find
it here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .._errors import NotFoundError

if TYPE_CHECKING:
    from ..calls import ChunkCalls
    from ..matrix import CellMatrix

__all__ = ["Engine", "available_models", "get_engine", "register_engine"]


class Engine(Protocol):
    """What every engine provides."""

    name: str  # engine family, e.g. "markers", "reference"
    model: str  # the model name users pass, e.g. "markers", "reference"
    atlas: str | None  # marker database / reference it uses

    def annotate_chunk(self, matrix: CellMatrix) -> ChunkCalls:
        """Calls for the cells of ``matrix`` (a chunk), in its cell order."""
        ...

    def parameters(self) -> dict[str, Any]:
        """Parameters recorded in the Calls table's provenance."""
        ...


EngineFactory = Callable[..., Engine]
_ENGINES: dict[str, tuple[EngineFactory, str]] = {}


def register_engine(model: str, factory: EngineFactory, description: str) -> None:
    """Make ``model`` available to ``annotate(model=...)`` and the server."""
    _ENGINES[model] = (factory, description)


def _load_builtin() -> None:
    # Import the built-in engine modules so they register themselves (lazily, once).
    import importlib

    for name in ("bridge.engines.markers", "bridge.engines.reference"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def available_models() -> dict[str, str]:
    """Model name -> one-line description."""
    _load_builtin()
    return {name: desc for name, (_, desc) in sorted(_ENGINES.items())}


def get_engine(model: str, *, atlas: str | None = None, **params: Any) -> Engine:
    """An engine instance for ``model`` (and ``atlas``), or a clear error listing the models."""
    _load_builtin()
    if model not in _ENGINES:
        msg = f"unknown model {model!r}; available models: {', '.join(sorted(_ENGINES))}."
        raise NotFoundError(msg)
    factory, _ = _ENGINES[model]
    return factory(atlas=atlas, **params)

"""Annotation engines: one protocol, one registry, one catalogue of built engines.

Every engine, local or remote, satisfies :class:`Engine`: it names the ``genes`` it reads
(for the genes-found check, which :func:`bridge.annotate` runs once, before the engine),
turns a :class:`~bridge.CellMatrix` into a Calls table with :meth:`Engine.annotate`, and
:meth:`Engine.describe`\\ s itself for the calls' provenance and ``GET /v1/models``.

Adding an engine is one module and one :func:`register_engine` call.  :func:`get_engine`
refuses parameters an engine does not take (listing the ones it does) and keeps each built
engine for the life of the process, keyed by model, parameters and the atlas file's
modification time, so a reference is read and validated once, not per call or request, and
re-read when the file changes.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .._errors import InputError, NotFoundError

if TYPE_CHECKING:
    import pyarrow as pa

    from ..matrix import CellMatrix

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "Engine",
    "EngineInfo",
    "available_models",
    "clear_engine_cache",
    "engine_parameters",
    "get_engine",
    "register_engine",
]

DEFAULT_CHUNK_SIZE = 50_000
DEFAULT_MIN_GENE_FRACTION = 0.1


@runtime_checkable
class Engine(Protocol):
    """What every engine provides."""

    #: The registered model name (``"markers"``, ``"reference"``, ``"remote"``).
    name: str
    #: The database or reference in use, as users name it (never a server path in replies).
    atlas: str | None
    #: Refuse inputs in which fewer of :attr:`genes` are found than this fraction.
    min_gene_fraction: float

    @property
    def genes(self) -> Sequence[str] | None:
        """The genes the engine reads, or ``None`` where it cannot say (a remote service
        checks them itself)."""
        ...

    def annotate(self, matrix: CellMatrix, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 progress: bool = True) -> pa.Table:
        """The core Calls columns for every cell of ``matrix``, in its order."""
        ...

    def describe(self) -> dict[str, Any]:
        """``name``, ``atlas`` and ``parameters`` (recorded in the calls' provenance)."""
        ...


EngineFactory = Callable[..., Engine]


@dataclass(frozen=True)
class EngineInfo:
    """A registered engine: how to build it and what it is."""

    name: str
    factory: EngineFactory
    description: str
    #: Whether a server may offer it (the remote client is an engine, but not a service).
    serve: bool = True
    #: Whether it needs an atlas (a reference file) to be built.
    needs_atlas: bool = False


_ENGINES: dict[str, EngineInfo] = {}
_BUILTIN = ("bridge.engines.markers", "bridge.engines.reference", "bridge.engines.remote")


def register_engine(name: str, factory: EngineFactory, description: str, *,
                    serve: bool = True, needs_atlas: bool = False) -> None:
    """Make ``name`` available to ``annotate(model=...)`` (and to the server if ``serve``)."""
    _ENGINES[name] = EngineInfo(name, factory, description, serve, needs_atlas)


def _load_builtin() -> None:
    # Import the built-in engine modules so they register themselves (lazily, once).
    import importlib

    for module in _BUILTIN:
        importlib.import_module(module)


def available_models(*, served: bool = False) -> dict[str, EngineInfo]:
    """Registered engines by name (``served=True``: only those a server may offer)."""
    _load_builtin()
    return {name: info for name, info in sorted(_ENGINES.items()) if info.serve or not served}


def _info(model: str) -> EngineInfo:
    _load_builtin()
    if model not in _ENGINES:
        msg = f"unknown model {model!r}; available models: {', '.join(sorted(_ENGINES))}."
        raise NotFoundError(msg, code="unknown_model")
    return _ENGINES[model]


def engine_parameters(model: str) -> list[str]:
    """The keyword parameters engine ``model`` takes (besides ``atlas``)."""
    signature = inspect.signature(_info(model).factory)
    return [name for name, p in signature.parameters.items()
            if name != "atlas" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_parameters(model: str, params: dict[str, Any]) -> None:
    """Refuse parameters engine ``model`` does not take, naming the ones it does."""
    accepted = engine_parameters(model)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        msg = (f"model {model!r} does not take {', '.join(repr(u) for u in unknown)}; its "
               f"parameters are: {', '.join(accepted) or 'none'}.")
        raise InputError(msg, code="unknown_parameter",
                         hint="check the spelling, or pass the option to annotate() itself")


# -- the catalogue of built engines ----------------------------------------------------------
_CACHE_SIZE = 16
_cache: OrderedDict[tuple[Any, ...], Engine] = OrderedDict()
_cache_lock = threading.Lock()


def _atlas_stamp(atlas: Any) -> Any:
    """What identifies an atlas: a file by path, size and modification time; other values by
    themselves (an in-memory reference is never cached)."""
    if atlas is None or (isinstance(atlas, str) and not os.path.isfile(atlas)):
        return atlas
    if isinstance(atlas, str | os.PathLike):
        stat = os.stat(atlas)
        return (os.path.realpath(atlas), stat.st_size, stat.st_mtime_ns)
    return None  # not cacheable


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def get_engine(model: str, /, *, atlas: Any = None, cache: bool = True,
               **params: Any) -> Engine:
    """The engine for ``model`` with ``atlas`` and ``params``, built once per process.

    ``model`` is positional-only, so an engine may itself take a ``model`` parameter (the
    remote engine: the model to ask the service for).

    Raises
    ------
    NotFoundError
        ``model`` is not registered (the message lists the models).
    InputError
        ``params`` holds a parameter the engine does not take (code ``unknown_parameter``).
    """
    info = _info(model)
    check_parameters(model, params)
    stamp = _atlas_stamp(atlas)
    key: tuple[Any, ...] | None = None
    if cache and (atlas is None or stamp is not None):
        try:
            key = (model, stamp, _freeze(params))
            hash(key)
        except TypeError:
            key = None
    if key is not None:
        with _cache_lock:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key]
    engine = info.factory(atlas=atlas, **params)
    if key is not None:
        with _cache_lock:
            _cache[key] = engine
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    return engine


def clear_engine_cache() -> None:
    """Forget every built engine (the next :func:`get_engine` builds anew)."""
    with _cache_lock:
        _cache.clear()

"""The embedded R session: started lazily, helpers sourced once, R memory exposed to numpy.

Nothing here runs at import time; reading an Arrow or h5ad file never starts R.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from importlib import resources
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._errors import (
    CODES,
    BridgeError,
    InputError,
    MissingDependencyError,
    NotFoundError,
    RError,
    UnsupportedError,
)

logger = logging.getLogger(__name__)

__all__ = ["RVectorMemory", "call", "is_r_object", "r_available", "r_vector_view", "session"]


def r_available() -> bool:
    """Whether R and rpy2 can be used here (without starting R)."""
    try:
        import rpy2  # noqa: F401
    except ImportError:
        return False
    return shutil.which("R") is not None or bool(os.environ.get("R_HOME"))


@functools.cache
def session() -> Any:
    """The R environment holding scbridge's helper functions (starts R on first use)."""
    # rpy2 starts R on import and prepends R's library folders (and the system's) to
    # LD_LIBRARY_PATH, too late to matter for this process (its own comment says so) but
    # inherited by every child process: a Python with a RUNPATH to its own libpython (pyenv,
    # conda) started from here, a Dask or multiprocessing worker, then loads the system's
    # libpython / libssl and dies ("undefined symbol"). When R starts here, the variable is
    # put back as it was.
    embedded = sys.modules.get("rpy2.rinterface_lib.embedded")
    starts_r = embedded is None or not embedded.isinitialized()
    ld_path_before = os.environ.get("LD_LIBRARY_PATH")
    try:
        import rpy2.robjects as ro
    except ImportError as exc:
        msg = (
            "Reading R objects needs R and rpy2 3.5 (`pip install 'scbridge[r]'`; on Debian "
            "`apt-get install r-base-core r-cran-seuratobject r-bioc-singlecellexperiment`). "
            f"Import failed with: {exc}"
        )
        raise MissingDependencyError(msg) from None
    if starts_r:
        _restore_env("LD_LIBRARY_PATH", ld_path_before)
    with r_console_to_log():
        env = ro.r("new.env()")
        code = resources.files("bridge.io").joinpath("r", "helpers.R").read_text()
        ro.r["eval"](ro.r["parse"](text=code), envir=env)
        ro.r("suppressPackageStartupMessages(requireNamespace('Matrix', quietly = TRUE))")
    return env


@contextlib.contextmanager
def r_console_to_log() -> Iterator[None]:
    """Route R's console output to the log while our own R code runs (and only then): a
    user's own rpy2 session keeps its console as it was."""
    import rpy2.rinterface_lib.callbacks as callbacks

    def to_log(text: str) -> None:
        logger.debug("R: %s", text.rstrip())

    saved = callbacks.consolewrite_print, callbacks.consolewrite_warnerror
    callbacks.consolewrite_print = callbacks.consolewrite_warnerror = to_log
    try:
        yield
    finally:
        callbacks.consolewrite_print, callbacks.consolewrite_warnerror = saved


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@functools.cache
def _helper(name: str) -> Any:
    # Looking a closure up wraps it in a new rpy2 function object (~0.2 ms): once per helper.
    return session()[name]


# helpers.R refuses with stop("scbridge[CODE]: message"): a user's error with its code.
_OUR_STOP = re.compile(r"scbridge(?:\[([a-z_]+)\])?: ", re.S)
_CLASS_OF_FAMILY: dict[str, type[BridgeError]] = {
    "not_found": NotFoundError, "unsupported": UnsupportedError,
    "missing_dependency": MissingDependencyError,
}


def call(name: str, *args: Any, **kwargs: Any) -> Any:
    """Call helper ``name`` from helpers.R.

    Our own refusals (``stop("scbridge[CODE]: ...")`` in helpers.R) become the error of their
    code's family (:class:`InputError`, :class:`NotFoundError`, ...); any other R error is R
    failing, an :class:`RError`.
    """
    from rpy2.rinterface_lib.embedded import RRuntimeError

    function = _helper(name)
    try:
        with r_console_to_log():
            return function(*args, **kwargs)
    except RRuntimeError as exc:
        text = str(exc).strip().removeprefix("Error in").strip()
        ours = _OUR_STOP.search(text)
        if ours:
            # The message is already the user-facing one.
            msg = text[ours.end():].strip()
            code = ours.group(1) if ours.group(1) in CODES else "invalid_input"
            cls = _CLASS_OF_FAMILY.get(CODES[code][0], InputError)
            raise cls(msg, code=code) from None
        msg = f"R failed in {name}: {text}"
        raise RError(msg) from None


def is_r_object(obj: object) -> bool:
    """Whether ``obj`` is an rpy2 R object (checked without importing rpy2)."""
    module = type(obj).__module__
    return module.startswith("rpy2.")


class RVectorMemory:
    """Exposes an R vector's memory to numpy and keeps the R vector alive.

    numpy arrays built on this object hold it as their ``base``; it holds the rpy2 object,
    which protects the R vector from R's garbage collector.  The views are read-only so that
    nothing in Python can modify the user's R object in place.
    """

    def __init__(self, rvector: Any, dtype: np.dtype[Any]) -> None:
        from rpy2.rinterface_lib import openrlib

        sexp = rvector.__sexp__._cdata
        address = int(openrlib.ffi.cast("uintptr_t", rvector._R_GET_PTR(sexp)))
        self.rvector = rvector
        self.__array_interface__ = {
            "data": (address, True),
            "shape": (len(rvector),),
            "typestr": np.dtype(dtype).str,
            "version": 3,
        }


# R SEXP types REALSXP, INTSXP, LGLSXP
_R_TYPES: dict[int, np.dtype[Any]] = {
    14: np.dtype("float64"), 13: np.dtype("int32"), 10: np.dtype("int32")}


def r_vector_view(rvector: Any) -> NDArray[Any]:
    """A read-only numpy view on an R double / integer / logical vector (no copy)."""
    typeof = rvector.typeof
    dtype = _R_TYPES.get(int(typeof))
    if dtype is None:
        msg = f"cannot view an R vector of type {typeof} as numbers"
        raise RError(msg)
    if len(rvector) == 0:
        return np.empty(0, dtype=dtype)
    return np.asarray(RVectorMemory(rvector, dtype))


def r_strings(rvector: Any) -> NDArray[Any]:
    """An R character vector as a numpy object array (NA becomes None)."""
    import rpy2.rinterface as ri

    if rvector is ri.NULL or rvector is None:
        return np.empty(0, dtype=object)
    if len(rvector) > 64 and not ri.baseenv["anyNA"](rvector)[0]:
        # One raw vector of NUL-terminated UTF-8 strings crosses the boundary instead of one
        # rpy2 object per element: ~15x faster for the 20,000 barcodes of a typical object.
        utf8 = ri.baseenv["enc2utf8"](rvector)
        raw = ri.baseenv["writeBin"](utf8, ri.baseenv["raw"]())
        text = np.asarray(RVectorMemory(raw, np.dtype(np.uint8))).tobytes().decode("utf-8")
        parts = text.split("\0")
        parts.pop()  # after the last terminator
        if len(parts) == len(rvector):
            return np.array(parts, dtype=object)
    return np.array([None if v is ri.NA_Character else str(v) for v in rvector], dtype=object)


def r_class(obj: Any) -> list[str]:
    return [str(c) for c in obj.rclass]


def r_null(obj: Any) -> bool:
    import rpy2.rinterface as ri

    return obj is ri.NULL or obj is None or type(obj).__name__ == "NULLType"

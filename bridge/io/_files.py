"""Safe writes: never onto an input, and never a half-written target.

Every writer in scbridge (``bridge.write``, ``write_back``, the CLI's tables and calls, the
report, ``build-reference``) goes through this module:

- :func:`refuse_same_file` refuses an output that *is* one of the inputs: the same path, a
  symbolic link to it, or a hard link to it (compared by device and inode, so every spelling
  of one file is caught), with an :class:`~bridge.InputError` of code ``same_file``.
- :func:`atomic_output` hands the writer a temporary file in the target's folder and renames
  it over the target only once it is complete (``os.replace``: atomic on POSIX and Windows).
  An interrupt, a crash or an error leaves the old target (or none) and never a partial one.
  While it runs, SIGTERM (left at its default) raises :class:`SystemExit` instead of killing
  the process at once, so the temporary file is removed on the way out too.

A symbolic link as target is followed: the file it points to is replaced and the link stays.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from .._errors import InputError

__all__ = [
    "TEMP_MARK",
    "atomic_output",
    "is_same_file",
    "refuse_clashes",
    "refuse_same_file",
    "stale_temporaries",
]

logger = logging.getLogger(__name__)

#: Part of every temporary file's name (``.NAME.scbridge-tmp-XXXX.SUFFIX``), so leftovers of a
#: killed process (SIGKILL cannot be caught) are easy to recognise.
TEMP_MARK = ".scbridge-tmp-"

PathLike = str | os.PathLike[str]


def is_same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file (through symbolic and hard links); ``False`` when
    either does not exist."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_same_file(output: PathLike, inputs: Iterable[PathLike | None], *,
                     what: str = "the output") -> None:
    """Raise ``InputError(code="same_file")`` when ``output`` is one of ``inputs``.

    Parameters
    ----------
    output
        The file about to be written.
    inputs
        Files (or folders) being read; ``None`` entries are skipped.
    what
        How the message names the output (``"--out"``, ``"the reference"``, ...).
    """
    out = Path(output)
    for given in inputs:
        if given is None:
            continue
        source = Path(given)
        if is_same_file(out, source) or os.path.realpath(out) == os.path.realpath(source):
            msg = (f"{what} {out} is the input {source} (the same file or a link to it); "
                   "writing it would destroy the input. Write to another path.")
            raise InputError(msg, code="same_file",
                             hint="choose an output path that is not one of the inputs")


def _target(path: PathLike) -> Path:
    """The file a write to ``path`` replaces: a symbolic link is followed to its target."""
    p = Path(path)
    return Path(os.path.realpath(p)) if p.is_symlink() else p


@contextlib.contextmanager
def _signals_tracked() -> Iterator[list[int]]:
    """While writing, let SIGTERM unwind the stack (so ``finally`` blocks clean up) instead of
    ending the process on the spot, and note every SIGINT / SIGTERM that arrives (the list
    yielded): a library that swallows the interrupt (rpy2 "ignores" an exception raised in its
    C callbacks, then fails on its own) must not turn Ctrl-C into its error.  Handlers are only
    replaced where they have their defaults and only in the main thread (signal handlers can
    only be set there)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    try:
        previous_term = signal.getsignal(signal.SIGTERM)
        previous_int = signal.getsignal(signal.SIGINT)
    except (ValueError, OSError):  # pragma: no cover - no signals here
        yield received
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise SystemExit(128 + signum)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    replaced: list[tuple[signal.Signals, Any]] = []
    if previous_term is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, terminate)
        replaced.append((signal.SIGTERM, previous_term))
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt)
        replaced.append((signal.SIGINT, previous_int))
    try:
        yield received
    finally:
        for signum, handler in replaced:
            signal.signal(signum, handler)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: PathLike, *, inputs: Iterable[PathLike | None] = (),
                  what: str = "the output") -> Iterator[Path]:
    """A temporary path to write, renamed over ``path`` when the block completes.

    Parameters
    ----------
    path
        The target.  Its folder is created if needed.
    inputs
        Files the write reads from; a target that is one of them is refused before anything
        is written (see :func:`refuse_same_file`).
    what
        How messages name the target.

    Yields
    ------
    pathlib.Path
        A new, empty file in the target's folder with the target's suffix (writers that choose
        a format by suffix keep working).  Write it completely; on any exception (including
        KeyboardInterrupt and SIGTERM) it is removed and the target is left as it was.
    """
    refuse_same_file(path, inputs, what=what)
    target = _target(path)
    if target.is_dir():
        msg = f"{what} {path} is a folder; give a file name."
        raise InputError(msg, code="invalid_parameter")
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{target.stem}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{target.suffix}"
    # SIGTERM raises from before the temporary file exists until it is renamed or removed.
    with _signals_tracked() as received:
        try:
            # Created with the process's umask (as a plain open() would), not mkstemp's 0600.
            os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            yield temp
            if target.exists():
                with contextlib.suppress(OSError):
                    os.chmod(temp, target.stat().st_mode & 0o7777)
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except BaseException as error:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            interrupt = _interrupt_behind(error, received)
            if interrupt is not None:
                # A library turned the interrupt into its own error (h5py raises TypeError when
                # Ctrl-C lands inside an attribute write; rpy2 swallows it in a callback, then
                # fails): the user pressed Ctrl-C / sent SIGTERM, so that is what propagates.
                raise interrupt from error
            raise
    _fsync_folder(folder)
    logger.debug("wrote %s", target)


def _interrupt_behind(error: BaseException, received: list[int]) -> BaseException | None:
    """The interrupt behind another error: a KeyboardInterrupt / SystemExit in its context
    chain, or a SIGINT / SIGTERM received during the write whose exception a library
    swallowed."""
    if isinstance(error, KeyboardInterrupt | SystemExit):
        return None
    if received:
        signum = received[0]
        return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)
    seen: set[int] = set()
    cause = error.__context__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return KeyboardInterrupt()
        if isinstance(cause, SystemExit):
            return SystemExit(cause.code)
        seen.add(id(cause))
        cause = cause.__context__
    return None


def stale_temporaries(folder: PathLike, *, name: str) -> list[Path]:
    """Temporary files a killed writer (SIGKILL) left for target ``name`` in ``folder``;
    listed, not deleted."""
    stem = Path(name).stem
    return sorted(Path(folder).glob(f".{stem}{TEMP_MARK}*"))


def refuse_clashes(outputs: Mapping[str, PathLike | None],
                   inputs: Iterable[PathLike | None]) -> None:
    """Refuse (``same_file``) any output that is an input, or that is another output.

    ``outputs`` maps how each output is named (``"--out"``, ``"--report"``) to its path
    (``None``: not written).  Checked before any work starts, so a clash costs nothing.
    """
    given = [(name, path) for name, path in outputs.items() if path is not None]
    sources = [Path(p) for p in inputs if p is not None]
    for k, (name, path) in enumerate(given):
        refuse_same_file(path, sources, what=name)
        for other, other_path in given[k + 1:]:
            if (os.path.realpath(path) == os.path.realpath(other_path)
                    or is_same_file(path, other_path)):
                msg = (f"{name} and {other} are the same file ({path}); each output needs its "
                       "own path.")
                raise InputError(msg, code="same_file",
                                 hint="give every output a different path")

"""The exceptions scbridge raises.

Every error a user can cause is a :class:`BridgeError`; its message says what was wrong,
where, and what to do about it.  The tree::

    BridgeError
    ├── InputError (ValueError)          the data itself is unusable as given
    │   ├── GeneIdError                  gene ids of the wrong kind, or too few matched
    │   └── CapacityError                too large for the target (nnz beyond int32 in R, ...)
    ├── FormatError (ValueError)         a file is not what it claims (truncated, foreign, version)
    ├── UnsupportedError (TypeError)     a container, class or option we do not read
    ├── NotFoundError (KeyError)         a named assay, layer, model or column that is not there
    ├── MissingDependencyError (ImportError)
    │                                    an optional dependency (R, rpy2, ...) is not installed
    ├── RError                           R itself failed while reading or writing an object
    └── RemoteError                      an annotation service answered with an error
"""

from __future__ import annotations

__all__ = [
    "BridgeError",
    "CapacityError",
    "FormatError",
    "GeneIdError",
    "InputError",
    "MissingDependencyError",
    "NotFoundError",
    "RError",
    "RemoteError",
    "UnsupportedError",
]


class BridgeError(Exception):
    """Base class of every error scbridge raises on purpose."""


class InputError(BridgeError, ValueError):
    """The data given cannot be used as it is (duplicated ids, NaN, non-integer counts, ...)."""


class GeneIdError(InputError):
    """Gene identifiers are of the wrong kind, or too few of them match what is needed."""


class CapacityError(InputError):
    """The data is too large for the requested target (for example nnz >= 2**31 for R)."""


class FormatError(BridgeError, ValueError):
    """A file or payload is not in the format it claims to be."""


class UnsupportedError(BridgeError, TypeError):
    """A container, R class or option that scbridge does not handle."""


class NotFoundError(BridgeError, KeyError):
    """A named assay, layer, model, atlas or column does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(BridgeError, ImportError):
    """An optional dependency needed for this input or feature is not installed."""


class RError(BridgeError):
    """R raised an error while scbridge read or wrote an R object."""


class RemoteError(BridgeError):
    """An annotation service returned an error or could not be reached.

    Attributes
    ----------
    status
        The HTTP status code, or ``None`` when no response arrived.
    code
        The machine-readable error code from the service's JSON body, when present.
    hint
        The service's advice on what to change, when present.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.hint = hint

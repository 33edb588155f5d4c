"""The exceptions scbridge raises, and their stable error codes.

Every error a user can cause is a :class:`BridgeError`; its message says what was wrong,
where, and what to do about it.  Every error also carries a stable, machine-readable
``code`` (snake_case): the server maps codes to HTTP statuses in one table
(``bridge/server/_problems.py``), the CLI prints ``error[CODE]``, and the R package turns a
code into the condition class ``scbridge_error_<code>``.  Programs should test codes or
classes, never the wording of messages.  The tree, with each class's default code::

    BridgeError                    error
    ├── InputError (ValueError)          invalid_input       the data is unusable as given
    │   ├── GeneIdError                  gene_ids            gene ids of the wrong kind / too few
    │   └── CapacityError                too_large           too large for the target
    ├── FormatError (ValueError)         invalid_format      a file or body is not what it claims
    ├── UnsupportedError (TypeError)     unsupported         a container, class or option we lack
    ├── NotFoundError (KeyError)         not_found           a named assay, layer, model, column
    ├── MissingDependencyError (ImportError)
    │                                    missing_dependency  an optional dependency is missing
    ├── RError                           r_failure           R itself failed
    └── RemoteError                      remote_error        a service answered with an error

A raise site may give a more specific code (``InputError(msg, code="duplicate_ids")``);
:data:`CODES` lists every code in use with its family (the class's default code), so the
vocabulary stays closed and documented.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CODES",
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
    """Base class of every error scbridge raises on purpose.

    Parameters
    ----------
    message
        What was wrong, where, and what to do.
    code
        A specific code from :data:`CODES`; default: the class's own code.
    hint
        Optional advice kept apart from the message (the service sends it as ``hint``).

    Attributes
    ----------
    code
        The stable error code.
    family
        The class's default code (``invalid_input`` for every :class:`InputError`), which the
        R package adds as a second condition class.
    """

    default_code: ClassVar[str] = "error"

    def __init__(self, message: str = "", *, code: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        if code is not None and code not in CODES:
            msg = f"unknown error code {code!r}: add it to bridge._errors.CODES"
            raise ValueError(msg)
        self.code: str = code or self.default_code
        self.hint: str | None = hint

    @property
    def family(self) -> str:
        """The default code of the exception's class."""
        return self.default_code

    @property
    def message(self) -> str:
        """The message alone (``str(exc)`` without the class name)."""
        return str(self.args[0]) if self.args else ""


class InputError(BridgeError, ValueError):
    """The data given cannot be used as it is (duplicated ids, NaN, non-integer counts, ...)."""

    default_code = "invalid_input"


class GeneIdError(InputError):
    """Gene identifiers are of the wrong kind, or too few of them match what is needed."""

    default_code = "gene_ids"


class CapacityError(InputError):
    """The data is too large for the requested target (for example nnz >= 2**31 for R)."""

    default_code = "too_large"


class FormatError(BridgeError, ValueError):
    """A file or payload is not in the format it claims to be."""

    default_code = "invalid_format"


class UnsupportedError(BridgeError, TypeError):
    """A container, R class or option that scbridge does not handle."""

    default_code = "unsupported"


class NotFoundError(BridgeError, KeyError):
    """A named assay, layer, model, atlas or column does not exist."""

    default_code = "not_found"

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return self.message


class MissingDependencyError(BridgeError, ImportError):
    """An optional dependency needed for this input or feature is not installed."""

    default_code = "missing_dependency"


class RError(BridgeError):
    """R raised an error while scbridge read or wrote an R object."""

    default_code = "r_failure"


class RemoteError(BridgeError):
    """An annotation service returned an error or could not be reached.

    Attributes
    ----------
    status
        The HTTP status code, or ``None`` when no response arrived.
    code
        The service's own error code (from its JSON body) when it sent one, else
        ``remote_error`` (or ``remote_unreachable`` when no reply came).
    hint
        The service's advice on what to change, when present.
    """

    default_code = "remote_error"

    def __init__(self, message: str = "", *, status: int | None = None,
                 code: str | None = None, hint: str | None = None) -> None:
        # The service's codes are its own vocabulary: kept as they come, not checked here.
        super().__init__(message, hint=hint)
        self.code = code or self.default_code
        self.status = status


#: Every error code in use -> (family, what it means).  The family is the default code of
#: the class that raises it; the server's status table and the R package's classes use both.
CODES: dict[str, tuple[str, str]] = {
    "error": ("error", "an scbridge error without a more specific code"),
    # -- input -------------------------------------------------------------------------------
    "invalid_input": ("invalid_input", "the data cannot be used as given"),
    "invalid_parameter": ("invalid_input", "an argument is out of range or of the wrong type"),
    "invalid_payload": ("invalid_input", "a request body does not have the contract's form"),
    "unknown_parameter": ("invalid_input", "an engine was given a parameter it does not take"),
    "unknown_tissue": ("invalid_input", "a tissue context names no tissue the knowledge base "
                       "knows"),
    "invalid_cells": ("invalid_input", "cell ids are empty, missing or duplicated"),
    "invalid_genes": ("invalid_input", "gene ids are empty, missing or duplicated"),
    "invalid_shape": ("invalid_input", "the matrix has no cells or no genes, or a bad shape"),
    "genes_mismatch": ("invalid_input", "the number of gene ids differs from the columns"),
    "indptr_length": ("invalid_input", "indptr does not have n_cells + 1 entries"),
    "indptr_not_monotone": ("invalid_input", "indptr does not start at 0 or decreases"),
    "shape_mismatch": ("invalid_input", "indices, values and indptr disagree in length"),
    "index_out_of_range": ("invalid_input", "a gene index lies outside [0, n_genes)"),
    "duplicate_indices": ("invalid_input", "a cell lists the same gene twice"),
    "non_finite_values": ("invalid_input", "NaN or infinite expression values"),
    "invalid_values": ("invalid_input", "negative or non-numeric expression values"),
    "non_integer_counts": ("invalid_input", "a counts layer holds non-integer values"),
    "empty_cells": ("invalid_input", "cells without any expression"),
    "same_file": ("invalid_input", "an output would overwrite an input"),
    "ambiguous_object": ("invalid_input", "a file or list holds several objects scbridge can "
                                          "read, and none is named"),
    "invalid_labels": ("invalid_input", "labels for marker genes are missing or too few"),
    "too_many_labels": ("invalid_input", "more labels than marker ranking takes at once"),
    "gene_ids": ("gene_ids", "gene ids of the wrong kind, or too few of them found"),
    "too_large": ("too_large", "too large for the target (e.g. nnz beyond 32-bit in R)"),
    "too_many_cells": ("too_large", "more cells than a service accepts per request"),
    # -- formats -----------------------------------------------------------------------------
    "invalid_format": ("invalid_format", "a file or body is not in the format it claims"),
    "unsupported_version": ("invalid_format", "a format version this scbridge cannot read"),
    "invalid_reference": ("invalid_format", "a reference file is malformed"),
    "invalid_arrow": ("invalid_format", "an Arrow CSR file or stream is malformed"),
    "compressed_arrow": ("invalid_format", "a compressed Arrow body, which is refused"),
    "invalid_json": ("invalid_format", "a request body is not valid JSON"),
    # -- other families ----------------------------------------------------------------------
    "unsupported": ("unsupported", "a container, class or option scbridge does not handle"),
    "not_found": ("not_found", "a named assay, layer, column, file or model does not exist"),
    "unknown_model": ("not_found", "no engine of that name is registered"),
    "missing_dependency": ("missing_dependency", "an optional dependency is not installed"),
    "r_failure": ("r_failure", "R failed while reading or writing an object"),
    "remote_error": ("remote_error", "an annotation service answered with an error"),
    "remote_unreachable": ("remote_error", "an annotation service could not be reached"),
    "remote_reply": ("remote_error", "a service's reply broke the contract"),
    "worker_lost": ("error", "a Dask worker died each time it ran a partition"),
}

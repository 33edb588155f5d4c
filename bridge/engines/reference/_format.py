"""The reference file: ``scbridge-reference`` 1.x, a Parquet file (never pickle).

Loading runs no code from the file and validates every field before use, so a reference
from a stranger is safe to load::

    gene      utf8                                   one row per model gene, unique
    weight    fixed_size_list<float32>[n_labels]     log-odds per unit of log1p(CP10k)
    mean      fixed_size_list<float32>[n_labels]     mean log1p(CP10k) per label (for markers)

    schema metadata:
    scbridge.format          "scbridge-reference"
    scbridge.format_version  "1.0"
    scbridge.labels          JSON list of label names (column order of weight / mean)
    scbridge.intercepts      JSON list of floats, one per label
    scbridge.ontology_ids    JSON list of Cell Ontology ids or null, one per label
    scbridge.target_sum      normalisation total (10000)
    scbridge.training        JSON: source, label column, cells per label, parameters,
                             temperature
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from ..._errors import FormatError, NotFoundError
from ...numerics import TARGET_SUM

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ReferenceModel",
    "load_reference",
    "ontology_for",
    "save_reference",
]

FORMAT_NAME = "scbridge-reference"
FORMAT_VERSION = "1.0"
# Limits a well-formed reference never reaches; a file beyond them is refused before its
# data are read, so a stranger's file cannot exhaust memory (a decompression bomb included).
_MAX_LABELS = 5_000
_MAX_GENES = 200_000
_MAX_WEIGHTS = 50_000_000  # genes x labels (200 MB per float32 matrix)
_MAX_FILE_BYTES = 2 << 30
_MAX_METADATA_BYTES = 16 << 20
# Sane ranges: a fitted logistic model's weights and intercepts are a few units (regularised,
# on unit-variance features); these bounds leave orders of magnitude of room and keep every
# score (at most 200,000 genes x log1p(1e9) x weight) finite in float32 and float64, so the
# confidences are always finite.
_MAX_ABS_WEIGHT = 1e6
_MAX_ABS_INTERCEPT = 1e6
_MAX_MEAN = 1e3  # mean log1p-normalised expression (log1p(1e9) is 21)
_TARGET_SUM_RANGE = (1.0, 1e9)
_MAX_NAME_CHARS = 500
_MAX_JSON_DEPTH = 16

# Common label spellings -> Cell Ontology ids (recorded when a reference label matches).
_ONTOLOGY_PATTERNS: list[tuple[str, str]] = [
    (r"treg|t ?reg|regulatory t|cd25", "CL:0000815"),
    (r"cd4.*(naive|tn\b|cd45ra)|cd4tn|naive cd4", "CL:0000895"),
    (r"cd4.*(memory|tcm|tem|cd45ro)|cd4tcm|cd4tem", "CL:0000897"),
    (r"cd8.*(naive|tn\b|cd45ra)|cd8tn|naive cd8", "CL:0000900"),
    (r"cd8", "CL:0000625"),
    (r"cd4", "CL:0000624"),
    (r"\bnk\b|natural killer|cd56", "CL:0000623"),
    (r"cd14.*mono|classical mono", "CL:0001054"),
    (r"cd16.*mono|fcgr3a.*mono|non-?classical mono", "CL:0002396"),
    (r"mono", "CL:0000576"),
    (r"plasma", "CL:0000786"),
    (r"\bb\b|b cell|cd19|b_cell|^b[ _-]", "CL:0000236"),
    (r"pdc|plasmacytoid", "CL:0000784"),
    (r"dendritic|\bdc\b|cdc", "CL:0000451"),
    (r"cd34|progenitor|hspc|stem", "CL:0008001"),
    (r"platelet|megakaryocyte", "CL:0000233"),
    (r"erythro", "CL:0000232"),
    (r"\bt\b|t cell", "CL:0000084"),
]


def ontology_for(label: str) -> str | None:
    """The Cell Ontology id of a common cell-type label, or ``None``."""
    text = label.lower()
    for pattern, cl in _ONTOLOGY_PATTERNS:
        if re.search(pattern, text):
            return cl
    return None


# -- the model ---------------------------------------------------------------------------------
@dataclass
class ReferenceModel:
    """A loaded reference: genes x labels weights, intercepts and per-label mean expression."""

    genes: NDArray[Any]
    labels: list[str]
    weights: NDArray[Any]  # genes x labels, float32
    intercepts: NDArray[Any]  # labels, float64
    means: NDArray[Any]  # genes x labels, float32
    ontology_ids: list[str | None]
    target_sum: float = TARGET_SUM
    training: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    def to_table(self) -> pa.Table:
        n_labels = self.n_labels
        meta = {
            "scbridge.format": FORMAT_NAME,
            "scbridge.format_version": FORMAT_VERSION,
            "scbridge.labels": json.dumps(self.labels),
            "scbridge.intercepts": json.dumps([float(b) for b in self.intercepts]),
            "scbridge.ontology_ids": json.dumps(self.ontology_ids),
            "scbridge.target_sum": json.dumps(self.target_sum),
            "scbridge.training": json.dumps(self.training, default=str),
        }

        def fixed(values: NDArray[Any]) -> pa.Array:
            flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).ravel(), pa.float32())
            return pa.FixedSizeListArray.from_arrays(flat, n_labels)

        table = pa.table({
            "gene": pa.array([str(g) for g in self.genes], pa.string()),
            "weight": fixed(self.weights),
            "mean": fixed(self.means),
        })
        return table.replace_schema_metadata(meta)


def save_reference(model: ReferenceModel, out: str | Path, *,
                   inputs: Iterable[str | Path | None] = ()) -> Path:
    """Write ``model`` as a ``scbridge-reference`` Parquet file (under a temporary name renamed
    when complete; an ``out`` that is one of ``inputs`` is refused with code ``same_file``)."""
    import pyarrow.parquet as pq

    from ...io._files import atomic_output

    path = Path(out)
    with atomic_output(path, inputs=inputs, what="the reference") as temp:
        pq.write_table(model.to_table(), temp, compression="zstd")
    return path


def _meta_json(meta: dict[bytes, bytes], key: str, where: str) -> Any:
    raw = meta.get(f"scbridge.{key}".encode())
    if raw is None:
        msg = f"{where}: not a valid scbridge reference (metadata key scbridge.{key} is missing)."
        raise FormatError(msg, code="invalid_reference")
    too_deep = f"{where}: scbridge.{key} is nested more than {_MAX_JSON_DEPTH} levels deep."
    try:
        value = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"{where}: scbridge.{key} is not valid JSON ({exc})."
        raise FormatError(msg, code="invalid_reference") from None
    except RecursionError:
        raise FormatError(too_deep, code="invalid_reference") from None
    if _depth(value) > _MAX_JSON_DEPTH:
        raise FormatError(too_deep, code="invalid_reference")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON (iterative: a deep document cannot exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > _MAX_JSON_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item \
            if isinstance(item, list) else ()
        stack.extend((child, level + 1) for child in children)
    return deepest


def _is_number(value: Any) -> bool:
    """A JSON number (``true`` / ``false`` are not numbers, though Python's bool is an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_reference_schema(schema: pa.Schema, where: str) -> tuple[list[str], Any, Any]:
    """Validate the format stamp and label metadata; returns labels, intercepts, ontology."""
    meta = schema.metadata or {}
    fmt = meta.get(b"scbridge.format", b"").decode(errors="replace")
    if fmt != FORMAT_NAME:
        msg = (f"{where} is not an scbridge reference (format {fmt or 'missing'!r}); build one "
               "with `scbridge build-reference IN --label-column COL --out REF.parquet`.")
        raise FormatError(msg, code="invalid_reference")
    version = meta.get(b"scbridge.format_version", b"").decode(errors="replace")
    if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        msg = (f"{where}: reference format version {version!r} is not supported (this scbridge "
               f"reads {FORMAT_VERSION.split('.')[0]}.x); rebuild it with this version.")
        raise FormatError(msg, code="invalid_reference")
    labels = _meta_json(meta, "labels", where)
    if (not isinstance(labels, list) or not 2 <= len(labels) <= _MAX_LABELS
            or not all(isinstance(x, str) and 0 < len(x) <= _MAX_NAME_CHARS for x in labels)
            or len(set(labels)) != len(labels)):
        msg = (f"{where}: scbridge.labels must be a list of 2 to {_MAX_LABELS} unique, "
               f"non-empty names of at most {_MAX_NAME_CHARS} characters.")
        raise FormatError(msg, code="invalid_reference")
    intercepts = _meta_json(meta, "intercepts", where)
    ontology = _meta_json(meta, "ontology_ids", where)
    return labels, intercepts, ontology


def load_reference(path: str | Path, *, max_bytes: int = _MAX_FILE_BYTES) -> ReferenceModel:
    """Read and validate a ``scbridge-reference`` file.

    Loading runs no code from the file (Parquet, never pickle).  The format stamp, version,
    every dimension and every value are checked before use; sizes are checked before the
    data are read.

    Parameters
    ----------
    path
        The reference ``.parquet`` file.
    max_bytes
        Refuse files larger than this.

    Raises
    ------
    NotFoundError
        The file does not exist.
    FormatError
        Anything about the file is wrong: not Parquet, not a reference, an unsupported major
        version, sizes over the limits, duplicated or missing genes, non-finite values.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    where = str(path)
    if not path.is_file():
        msg = f"reference {where} does not exist; build one with `scbridge build-reference`."
        raise NotFoundError(msg)
    size = path.stat().st_size
    if size > max_bytes:
        msg = f"{where}: {size:,} bytes exceeds the reference size limit of {max_bytes:,}."
        raise FormatError(msg, code="invalid_reference")
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        msg = f"{where} is not a Parquet file, so not an scbridge reference ({exc})."
        raise FormatError(msg, code="invalid_reference") from None
    metadata_bytes = sum(len(k) + len(v) for k, v in (parquet.schema_arrow.metadata or {}).items())
    if metadata_bytes > _MAX_METADATA_BYTES:
        msg = f"{where}: {metadata_bytes:,} bytes of metadata exceeds the limit."
        raise FormatError(msg, code="invalid_reference")
    labels, intercepts, ontology = _check_reference_schema(parquet.schema_arrow, where)
    n_labels = len(labels)
    n_rows = parquet.metadata.num_rows
    if n_rows > _MAX_GENES or n_rows * n_labels > _MAX_WEIGHTS:
        msg = (f"{where}: {n_rows:,} genes x {n_labels:,} labels exceeds the limits "
               f"({_MAX_GENES:,} genes, {_MAX_WEIGHTS:,} weights).")
        raise FormatError(msg, code="invalid_reference")
    stored = sum(parquet.metadata.row_group(i).total_byte_size
                 for i in range(parquet.metadata.num_row_groups))
    # Two float32 matrices plus gene names, with room for Parquet's own levels and headers.
    if stored > 2 * (8 * n_rows * n_labels + 1024 * n_rows) + (1 << 20):
        msg = f"{where}: {stored:,} bytes when decompressed is more than a reference can hold."
        raise FormatError(msg, code="invalid_reference")
    expected = {"gene": pa.string(), "weight": pa.list_(pa.float32(), n_labels),
                "mean": pa.list_(pa.float32(), n_labels)}
    schema = parquet.schema_arrow
    for name, typ in expected.items():
        if schema.get_field_index(name) < 0 or schema.field(name).type != typ:
            found = schema.field(name).type if schema.get_field_index(name) >= 0 else "missing"
            msg = f"{where}: column {name!r} must be {typ} for {n_labels} labels, found {found}."
            raise FormatError(msg, code="invalid_reference")
    try:
        table = parquet.read(columns=list(expected))
    except (pa.ArrowException, OSError) as exc:
        msg = f"{where}: the reference file is damaged ({exc})."
        raise FormatError(msg, code="invalid_reference") from None
    genes_col = table.column("gene")
    if genes_col.null_count or table.num_rows == 0:
        msg = f"{where}: gene ids must be non-empty and not null."
        raise FormatError(msg, code="invalid_reference")
    genes = np.asarray(genes_col.to_pylist(), dtype=object)
    if not all(genes):
        msg = f"{where}: gene ids must be non-empty and not null."
        raise FormatError(msg, code="invalid_reference")
    if len(set(genes.tolist())) != len(genes):
        _, first, counts = np.unique(genes.astype(str), return_index=True, return_counts=True)
        msg = (f"{where}: gene ids are not unique (e.g. {genes[first[counts > 1][0]]!r} "
               f"appears {counts[counts > 1][0]} times).")
        raise FormatError(msg, code="invalid_reference")

    def matrix(name: str, low: float, high: float) -> NDArray[Any]:
        col = table.column(name).combine_chunks()
        if col.null_count or col.values.null_count:
            msg = f"{where}: column {name!r} has missing values."
            raise FormatError(msg, code="invalid_reference")
        values = col.values.to_numpy(zero_copy_only=False).reshape(len(genes), n_labels)
        if not np.isfinite(values).all():
            msg = f"{where}: column {name!r} has non-finite values."
            raise FormatError(msg, code="invalid_reference")
        if values.size and (values.min() < low or values.max() > high):
            msg = (f"{where}: column {name!r} holds values from {float(values.min()):g} to "
                   f"{float(values.max()):g}, outside the sane range [{low:g}, {high:g}]; the "
                   "reference is damaged or was not built by scbridge.")
            raise FormatError(msg, code="invalid_reference")
        return values

    weights = matrix("weight", -_MAX_ABS_WEIGHT, _MAX_ABS_WEIGHT)
    means = matrix("mean", 0.0, _MAX_MEAN)
    if (not isinstance(intercepts, list) or len(intercepts) != n_labels
            or not all(_is_number(b) and math.isfinite(b) and abs(b) <= _MAX_ABS_INTERCEPT
                       for b in intercepts)):
        msg = (f"{where}: scbridge.intercepts must hold {n_labels} finite numbers within "
               f"+-{_MAX_ABS_INTERCEPT:g}.")
        raise FormatError(msg, code="invalid_reference")
    if (not isinstance(ontology, list) or len(ontology) != n_labels
            or not all(o is None or (isinstance(o, str) and len(o) <= _MAX_NAME_CHARS)
                       for o in ontology)):
        msg = f"{where}: scbridge.ontology_ids must hold {n_labels} strings or nulls."
        raise FormatError(msg, code="invalid_reference")
    meta = parquet.schema_arrow.metadata or {}
    target_sum = _meta_json(meta, "target_sum", where)
    low, high = _TARGET_SUM_RANGE
    if not _is_number(target_sum) or not low <= target_sum <= high:
        msg = (f"{where}: scbridge.target_sum must be a positive number from {low:g} to "
               f"{high:g} (the per-cell normalisation total, 10000), got "
               f"{json.dumps(target_sum)[:40]}.")
        raise FormatError(msg, code="invalid_reference")
    training = _meta_json(meta, "training", where)
    return ReferenceModel(
        genes=genes, labels=labels, weights=weights, intercepts=np.asarray(intercepts, float),
        means=means, ontology_ids=ontology, target_sum=float(target_sum),
        training=training if isinstance(training, dict) else {}, path=where,
    )



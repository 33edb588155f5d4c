"""The reference engine: a linear model learned from any labelled data set.

``build_reference`` reads labelled cells (Seurat, SingleCellExperiment, AnnData, Arrow),
log-normalises each cell, keeps the genes that tell one label from the rest (one-vs-rest
Welch t statistics) and fits a label-balanced multinomial logistic regression on them,
then scales it so confidences match held-out accuracy (temperature scaling).  The model is a
genes x labels weight matrix plus one intercept per label, stored as a Parquet file
(never pickle: loading a stranger's file runs no code, and :func:`load_reference`
validates every field before use).

Applying it is one sparse x dense product per chunk.  Each cell is normalised by its own
total, so the calls never depend on how the cells were chunked.

Reference file layout (``scbridge-reference`` 1.x, Parquet)::

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
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from .._errors import FormatError, GeneIdError, InputError, MissingDependencyError, NotFoundError
from ..calls import ChunkCalls
from . import register_engine

if TYPE_CHECKING:
    from ..matrix import CellMatrix

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ReferenceEngine",
    "ReferenceModel",
    "build_reference",
    "load_reference",
    "log_normalize",
    "save_reference",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "scbridge-reference"
FORMAT_VERSION = "1.0"
TARGET_SUM = 1e4
# Limits a well-formed reference never reaches; a file beyond them is refused before its
# data are read, so a stranger's file cannot exhaust memory (a decompression bomb included).
_MAX_LABELS = 5_000
_MAX_GENES = 200_000
_MAX_WEIGHTS = 50_000_000  # genes x labels (200 MB per float32 matrix)
_MAX_FILE_BYTES = 2 << 30
_MAX_METADATA_BYTES = 16 << 20
# Gradient tolerance of the solver: 1e-3 gives the same calls as scikit-learn's 1e-4 on the
# benchmarks (accuracy.py) in a third of the steps.
_SOLVER_TOL = 1e-3

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


# -- normalisation ------------------------------------------------------------------------------
def log_normalize(matrix: CellMatrix, *, target_sum: float = TARGET_SUM,
                  columns: np.ndarray | None = None) -> sp.csr_matrix:
    """``log1p`` of counts scaled to ``target_sum`` per cell (float32 CSR; a new matrix).

    Log-normalised input (``value_kind == "lognorm"``) is used as it is.  Only the cell's own
    total is used, so any chunking of the cells gives identical values.  ``columns`` keeps
    only those genes (in that order), still scaled by each cell's total over all genes.
    """
    X = matrix.X
    sub = X if columns is None else X[:, columns]
    if matrix.value_kind == "lognorm":
        return sp.csr_matrix((sub.data.astype(np.float32, copy=False), sub.indices, sub.indptr),
                             shape=sub.shape)
    # float64 totals: the same values whatever the input dtype (float32 / float64 / int).
    totals = (np.add.reduceat(X.data, X.indptr[:-1], dtype=np.float64) if X.nnz
              else np.zeros(X.shape[0]))
    totals = np.where(np.diff(X.indptr) > 0, totals, 1.0)  # reduceat misreads empty rows
    scale = (target_sum / np.maximum(totals, 1e-12)).astype(np.float64)
    per_value = np.repeat(scale, np.diff(sub.indptr))
    data = np.log1p((sub.data * per_value).astype(np.float32))
    return sp.csr_matrix((data, sub.indices, sub.indptr), shape=sub.shape)


def group_moments(Xn: sp.csr_matrix, codes: np.ndarray, n_groups: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group cell counts, means and variances of every gene (sparse, no densifying)."""
    n_cells = Xn.shape[0]
    G = sp.csr_matrix((np.ones(n_cells), (codes, np.arange(n_cells))), shape=(n_groups, n_cells))
    counts = np.asarray(G.sum(axis=1)).ravel()
    sums = np.asarray((G @ Xn).todense(), dtype=np.float64)
    sq = Xn.copy()
    sq.data = sq.data.astype(np.float64) ** 2
    sumsq = np.asarray((G @ sq).todense())
    denom = np.maximum(counts, 1)[:, None]
    mean = sums / denom
    var = np.maximum(sumsq / denom - mean**2, 0.0)
    return counts, mean, var


def one_vs_rest_t(counts: np.ndarray, mean: np.ndarray, var: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Welch t statistics (groups x genes) of each group against all other cells.

    Returns ``(t, rest_mean, df)``.  The rest's moments come from the group moments, so
    nothing is recomputed over the cells.
    """
    total = counts.sum()
    sums = mean * counts[:, None]
    sumsq = (var + mean**2) * counts[:, None]
    n_rest = np.maximum(total - counts, 1)[:, None]
    rest_mean = (sums.sum(0)[None, :] - sums) / n_rest
    rest_var = np.maximum((sumsq.sum(0)[None, :] - sumsq) / n_rest - rest_mean**2, 0.0)
    n_in = np.maximum(counts, 1)[:, None]
    # Bessel-corrected variances for the test.
    v_in = var * n_in / np.maximum(n_in - 1, 1)
    v_rest = rest_var * n_rest / np.maximum(n_rest - 1, 1)
    se2 = v_in / n_in + v_rest / n_rest
    t = (mean - rest_mean) / np.sqrt(se2 + 1e-12)
    df = se2**2 / ((v_in / n_in) ** 2 / np.maximum(n_in - 1, 1)
                   + (v_rest / n_rest) ** 2 / np.maximum(n_rest - 1, 1) + 1e-300)
    return t, rest_mean, df


# -- the model ---------------------------------------------------------------------------------
@dataclass
class ReferenceModel:
    """A loaded reference: genes x labels weights, intercepts and per-label mean expression."""

    genes: np.ndarray
    labels: list[str]
    weights: np.ndarray  # genes x labels, float32
    intercepts: np.ndarray  # labels, float64
    means: np.ndarray  # genes x labels, float32
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

        def fixed(values: np.ndarray) -> pa.Array:
            flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).ravel(), pa.float32())
            return pa.FixedSizeListArray.from_arrays(flat, n_labels)

        table = pa.table({
            "gene": pa.array([str(g) for g in self.genes], pa.string()),
            "weight": fixed(self.weights),
            "mean": fixed(self.means),
        })
        return table.replace_schema_metadata(meta)


def save_reference(model: ReferenceModel, out: str | Path) -> Path:
    """Write ``model`` as a ``scbridge-reference`` Parquet file."""
    import pyarrow.parquet as pq

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(model.to_table(), path, compression="zstd")
    return path


def _meta_json(meta: dict[bytes, bytes], key: str, where: str) -> Any:
    raw = meta.get(f"scbridge.{key}".encode())
    if raw is None:
        msg = f"{where}: not a valid scbridge reference (metadata key scbridge.{key} is missing)."
        raise FormatError(msg)
    try:
        return json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"{where}: scbridge.{key} is not valid JSON ({exc})."
        raise FormatError(msg) from None


def _check_reference_schema(schema: pa.Schema, where: str) -> tuple[list[str], Any, Any]:
    """Validate the format stamp and label metadata; returns labels, intercepts, ontology."""
    meta = schema.metadata or {}
    fmt = meta.get(b"scbridge.format", b"").decode(errors="replace")
    if fmt != FORMAT_NAME:
        msg = (f"{where} is not an scbridge reference (format {fmt or 'missing'!r}); build one "
               "with `scbridge build-reference IN --label-column COL --out REF.parquet`.")
        raise FormatError(msg)
    version = meta.get(b"scbridge.format_version", b"").decode(errors="replace")
    if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        msg = (f"{where}: reference format version {version!r} is not supported (this scbridge "
               f"reads {FORMAT_VERSION.split('.')[0]}.x); rebuild it with this version.")
        raise FormatError(msg)
    labels = _meta_json(meta, "labels", where)
    if (not isinstance(labels, list) or not 2 <= len(labels) <= _MAX_LABELS
            or not all(isinstance(x, str) and x for x in labels)
            or len(set(labels)) != len(labels)):
        msg = (f"{where}: scbridge.labels must be a list of 2 to {_MAX_LABELS} unique, "
               "non-empty names.")
        raise FormatError(msg)
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
        raise FormatError(msg)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        msg = f"{where} is not a Parquet file, so not an scbridge reference ({exc})."
        raise FormatError(msg) from None
    metadata_bytes = sum(len(k) + len(v) for k, v in (parquet.schema_arrow.metadata or {}).items())
    if metadata_bytes > _MAX_METADATA_BYTES:
        msg = f"{where}: {metadata_bytes:,} bytes of metadata exceeds the limit."
        raise FormatError(msg)
    labels, intercepts, ontology = _check_reference_schema(parquet.schema_arrow, where)
    n_labels = len(labels)
    n_rows = parquet.metadata.num_rows
    if n_rows > _MAX_GENES or n_rows * n_labels > _MAX_WEIGHTS:
        msg = (f"{where}: {n_rows:,} genes x {n_labels:,} labels exceeds the limits "
               f"({_MAX_GENES:,} genes, {_MAX_WEIGHTS:,} weights).")
        raise FormatError(msg)
    stored = sum(parquet.metadata.row_group(i).total_byte_size
                 for i in range(parquet.metadata.num_row_groups))
    # Two float32 matrices plus gene names, with room for Parquet's own levels and headers.
    if stored > 2 * (8 * n_rows * n_labels + 1024 * n_rows) + (1 << 20):
        msg = f"{where}: {stored:,} bytes when decompressed is more than a reference can hold."
        raise FormatError(msg)
    expected = {"gene": pa.string(), "weight": pa.list_(pa.float32(), n_labels),
                "mean": pa.list_(pa.float32(), n_labels)}
    schema = parquet.schema_arrow
    for name, typ in expected.items():
        if schema.get_field_index(name) < 0 or schema.field(name).type != typ:
            found = schema.field(name).type if schema.get_field_index(name) >= 0 else "missing"
            msg = f"{where}: column {name!r} must be {typ} for {n_labels} labels, found {found}."
            raise FormatError(msg)
    try:
        table = parquet.read(columns=list(expected))
    except (pa.ArrowException, OSError) as exc:
        msg = f"{where}: the reference file is damaged ({exc})."
        raise FormatError(msg) from None
    genes_col = table.column("gene")
    if genes_col.null_count or table.num_rows == 0:
        msg = f"{where}: gene ids must be non-empty and not null."
        raise FormatError(msg)
    genes = np.asarray(genes_col.to_pylist(), dtype=object)
    if not all(genes):
        msg = f"{where}: gene ids must be non-empty and not null."
        raise FormatError(msg)
    if len(set(genes.tolist())) != len(genes):
        _, first, counts = np.unique(genes.astype(str), return_index=True, return_counts=True)
        msg = (f"{where}: gene ids are not unique (e.g. {genes[first[counts > 1][0]]!r} "
               f"appears {counts[counts > 1][0]} times).")
        raise FormatError(msg)

    def matrix(name: str) -> np.ndarray:
        col = table.column(name).combine_chunks()
        if col.null_count or col.values.null_count:
            msg = f"{where}: column {name!r} has missing values."
            raise FormatError(msg)
        values = col.values.to_numpy(zero_copy_only=False).reshape(len(genes), n_labels)
        if not np.isfinite(values).all():
            msg = f"{where}: column {name!r} has non-finite values."
            raise FormatError(msg)
        return values

    weights, means = matrix("weight"), matrix("mean")
    if (not isinstance(intercepts, list) or len(intercepts) != n_labels
            or not all(isinstance(b, int | float) and math.isfinite(b) for b in intercepts)):
        msg = f"{where}: scbridge.intercepts must hold {n_labels} finite numbers."
        raise FormatError(msg)
    if (not isinstance(ontology, list) or len(ontology) != n_labels
            or not all(o is None or isinstance(o, str) for o in ontology)):
        msg = f"{where}: scbridge.ontology_ids must hold {n_labels} strings or nulls."
        raise FormatError(msg)
    meta = parquet.schema_arrow.metadata or {}
    target_sum = _meta_json(meta, "target_sum", where)
    if not isinstance(target_sum, int | float) or not 0 < target_sum < 1e12:
        msg = f"{where}: scbridge.target_sum must be a positive number."
        raise FormatError(msg)
    training = _meta_json(meta, "training", where)
    return ReferenceModel(
        genes=genes, labels=labels, weights=weights, intercepts=np.asarray(intercepts, float),
        means=means, ontology_ids=ontology, target_sum=float(target_sum),
        training=training if isinstance(training, dict) else {}, path=where,
    )


# -- building ----------------------------------------------------------------------------------
def _labels_of(matrix: CellMatrix, label_column: str) -> np.ndarray:
    if label_column not in matrix.obs.column_names:
        columns = ", ".join(matrix.obs.column_names) or "none"
        msg = (f"{matrix.source or 'the input'} has no cell metadata column {label_column!r}; "
               f"available columns: {columns}.")
        raise NotFoundError(msg)
    import pyarrow.compute as pc

    column = pc.cast(matrix.obs.column(label_column), pa.string())
    return np.asarray(column.to_pylist(), dtype=object)


def _select_genes(t: np.ndarray, expressed: np.ndarray, n_per_label: int) -> np.ndarray:
    """Union over labels of the top up-regulated (and half as many down-regulated) genes."""
    t = np.where(expressed[None, :], t, 0.0)
    chosen: set[int] = set()
    for row in t:
        order = np.argsort(-row, kind="stable")
        chosen.update(int(j) for j in order[:n_per_label] if row[j] > 0)
        chosen.update(int(j) for j in order[::-1][: n_per_label // 2] if row[j] < 0)
    return np.array(sorted(chosen), dtype=np.int64)


def _fit_logistic(estimator: Any, design: Any, codes: np.ndarray, n_labels: int,
                  regularization: float, start: Any = None) -> tuple[Any, np.ndarray, np.ndarray]:
    """Fit a multinomial logistic model; returns the fitted estimator (a warm start for the
    next fit), labels x genes coefficients and per-label intercepts.

    Labels are weighted inversely to their size, so a rare label in the reference is learnt
    as well as a common one (better macro F1, and no label is swamped).
    """
    clf = estimator(C=regularization, max_iter=1000, tol=_SOLVER_TOL, class_weight="balanced",
                    warm_start=start is not None)
    if start is not None:
        clf.coef_, clf.intercept_ = start.coef_.copy(), start.intercept_.copy()
    clf.fit(design, codes)
    if n_labels > 2:
        return clf, clf.coef_, clf.intercept_
    # Binary fits give one row; split it symmetrically into the two labels' log-odds.
    half_coef, half_b = clf.coef_[0] / 2, clf.intercept_[0] / 2
    return clf, np.vstack([-half_coef, half_coef]), np.array([-half_b, half_b])


def _held_out_cells(codes: np.ndarray, n_labels: int, seed: int) -> np.ndarray | None:
    """A stratified fifth of the cells (None when a label is too small to spare one)."""
    rng = np.random.default_rng(seed + 1)
    held_out = np.zeros(len(codes), dtype=bool)
    for k in range(n_labels):
        members = np.flatnonzero(codes == k)
        n_held = len(members) // 5
        if n_held == 0:
            return None
        held_out[rng.choice(members, n_held, replace=False)] = True
    return held_out


def _temperature(logits: np.ndarray, truth: np.ndarray) -> float:
    """The softmax temperature that minimises the log-loss of ``logits`` (temperature scaling).

    A regularised model is under-confident: it calls 98% of cells right with a median
    confidence near 0.7.  Choosing the temperature on held-out cells makes a confidence
    threshold mean what it says; dividing all weights by one number never changes a call.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    def log_loss(log_t: float) -> float:
        scaled = logits / np.exp(log_t)
        return float(np.mean(logsumexp(scaled, axis=1) - scaled[np.arange(len(truth)), truth]))

    best = minimize_scalar(log_loss, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(best.x))


def _fit_calibrated(estimator: Any, design: Any, codes: np.ndarray, n_labels: int,
                    regularization: float, calibrate: bool, seed: int
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """Coefficients, intercepts and temperature of the model on all cells.

    With ``calibrate``, a first fit on four fifths of the cells gives held-out logits for
    the temperature, and warm-starts the fit on all cells (which then needs few steps).
    """
    held_out = _held_out_cells(codes, n_labels, seed) if calibrate else None
    if held_out is None:
        _, coef, intercepts = _fit_logistic(estimator, design, codes, n_labels, regularization)
        return coef, intercepts, 1.0
    start, coef, intercepts = _fit_logistic(estimator, design[~held_out], codes[~held_out],
                                            n_labels, regularization)
    logits = np.asarray(design[held_out] @ coef.T) + intercepts[None, :]
    temperature = _temperature(logits, codes[held_out])
    _, coef, intercepts = _fit_logistic(estimator, design, codes, n_labels, regularization,
                                        start=start)
    return coef, intercepts, temperature


def build_reference(
    source: Any,
    *,
    label_column: str,
    out: str | Path | None = None,
    assay: str | None = None,
    layer: str | None = None,
    genes_per_label: int = 200,
    regularization: float = 0.03,
    min_cells_per_label: int = 10,
    max_cells_per_label: int | None = 5_000,
    drop_labels: Sequence[str] = ("", "NA", "nan", "None", "Unknown"),
    calibrate: bool = True,
    seed: int = 0,
) -> ReferenceModel:
    """Build a reference model from labelled cells and optionally write it.

    Parameters
    ----------
    source
        Anything :func:`bridge.read` accepts (Seurat / SCE ``.rds``, ``.h5ad``, Arrow CSR,
        AnnData, ``CellMatrix``) with a cell metadata column of labels.
    label_column
        The metadata column holding the cell-type labels (``obs`` / ``meta.data``).
    out
        Where to write the reference (Parquet).  ``None`` keeps it in memory only.
    assay, layer
        Passed to :func:`bridge.read`.
    genes_per_label
        Informative genes kept per label (one-vs-rest Welch t); the union is the model.
    regularization
        Inverse L2 strength ``C`` of the logistic regression (smaller = smoother).
    min_cells_per_label
        Labels with fewer cells are refused (:class:`~bridge.InputError`) because a model
        cannot learn them.
    max_cells_per_label
        Larger labels are subsampled (fixed ``seed``) to keep building fast and balanced.
    drop_labels
        Label values treated as "no label" and left out.
    calibrate
        Scale the model so its confidences match its accuracy on held-out cells
        (temperature scaling; costs a second fit, never changes the calls).
    seed
        Seed for subsampling.

    Returns
    -------
    ReferenceModel
        The model (also written to ``out`` when given).
    """
    from ..io import read
    from ..matrix import CellMatrix

    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:
        msg = "building a reference needs scikit-learn: pip install 'scbridge[reference]'."
        raise MissingDependencyError(msg) from exc

    started = time.perf_counter()
    matrix = source if isinstance(source, CellMatrix) else read(source, assay=assay, layer=layer)
    where = matrix.source or "the input"
    labels = _labels_of(matrix, label_column)
    keep = np.array([lab is not None and str(lab) not in drop_labels for lab in labels])
    names, codes_all = np.unique(labels[keep].astype(str), return_inverse=True)
    if len(names) < 2:
        msg = f"{where}: column {label_column!r} has {len(names)} usable label(s); need at least 2."
        raise InputError(msg)
    cell_idx = np.flatnonzero(keep)
    counts = np.bincount(codes_all, minlength=len(names))
    small = [f"{n} ({c})" for n, c in zip(names, counts, strict=True) if c < min_cells_per_label]
    if small:
        msg = (f"{where}: too few cells per label in {label_column!r} to learn them "
               f"(need >= {min_cells_per_label}): {', '.join(small[:10])}. Merge or drop those "
               "labels, or lower min_cells_per_label.")
        raise InputError(msg)
    if max_cells_per_label:
        rng = np.random.default_rng(seed)
        picked = [
            np.sort(rng.choice(np.flatnonzero(codes_all == k), max_cells_per_label, replace=False))
            if c > max_cells_per_label else np.flatnonzero(codes_all == k)
            for k, c in enumerate(counts)
        ]
        sub = np.sort(np.concatenate(picked))
        cell_idx, codes_all = cell_idx[sub], codes_all[sub]
    # Normalise only the training cells (each by its own total, so subsetting first is exact).
    Xn = log_normalize(CellMatrix(matrix.X[cell_idx], matrix.cells[cell_idx], matrix.genes,
                                  value_kind=matrix.value_kind, validate=False))
    n_labels = len(names)
    n_cells_label, mean, var = group_moments(Xn, codes_all, n_labels)
    t, _, _ = one_vs_rest_t(n_cells_label, mean, var)
    expressed = (mean > 0).sum(0) > 0
    genes_idx = _select_genes(t, expressed, genes_per_label)
    logger.info("%s: %d labels, %d cells, %d informative genes", where, n_labels, len(codes_all),
                len(genes_idx))
    # Features are scaled to unit variance so the L2 penalty treats genes alike; centring is
    # left to the intercept, which keeps the design sparse.
    Xg = Xn[:, genes_idx]
    overall_mean = np.asarray(Xg.mean(axis=0)).ravel()
    overall_sq = np.asarray(Xg.multiply(Xg).mean(axis=0)).ravel()
    sd = np.sqrt(np.maximum(overall_sq - overall_mean**2, 0.0))
    sd[sd < 1e-6] = 1.0
    design = (Xg @ sp.diags(1.0 / sd)).tocsr()
    coef, intercepts, temperature = _fit_calibrated(
        LogisticRegression, design, codes_all, n_labels, regularization, calibrate, seed)
    coef, intercepts = coef / temperature, intercepts / temperature
    weights = (coef / sd[None, :]).T.astype(np.float32)
    model = ReferenceModel(
        genes=matrix.genes[genes_idx].astype(object),
        labels=[str(n) for n in names],
        weights=weights,
        intercepts=np.asarray(intercepts, dtype=float),
        means=mean[:, genes_idx].T.astype(np.float32),
        ontology_ids=[ontology_for(str(n)) for n in names],
        training={
            "source": where, "label_column": label_column,
            "cells_per_label": {str(n): int(c) for n, c in zip(names, n_cells_label, strict=True)},
            "genes_per_label": genes_per_label, "regularization": regularization,
            "max_cells_per_label": max_cells_per_label, "seed": seed,
            "temperature": temperature,
            "input_genes": int(matrix.n_genes), "value_kind": matrix.value_kind,
        },
    )
    if out is not None:
        model.path = str(save_reference(model, out))
    logger.info("built reference in %.2f s", time.perf_counter() - started)
    return model


# -- applying ----------------------------------------------------------------------------------
class ReferenceEngine:
    """Scores each cell against a reference model (softmax of the linear scores).

    Parameters
    ----------
    atlas
        Path to a reference built by :func:`build_reference`, or a :class:`ReferenceModel`.
    min_gene_fraction
        Refuse (:class:`~bridge.GeneIdError`) when fewer of the model's genes are in the query.
    n_alternates
        Runners-up reported per cell.
    n_markers
        Genes reported per cell: the label's informative genes contributing most to the call.
    """

    name = "reference"
    model = "reference"

    def __init__(self, atlas: str | Path | ReferenceModel | None = None, *,
                 min_gene_fraction: float = 0.5, n_alternates: int = 3, n_markers: int = 5
                 ) -> None:
        if atlas is None:
            msg = ("model='reference' needs atlas=PATH, a reference built with "
                   "`scbridge build-reference IN --label-column COL --out REF.parquet`.")
            raise InputError(msg)
        self.reference = atlas if isinstance(atlas, ReferenceModel) else load_reference(atlas)
        self.atlas: str | None = self.reference.path or "<in-memory reference>"
        self.min_gene_fraction = min_gene_fraction
        self.n_alternates = n_alternates
        self.n_markers = n_markers
        self._cache_genes: np.ndarray | None = None
        self._cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.gene_fraction: float | None = None

    def parameters(self) -> dict[str, Any]:
        return {
            "min_gene_fraction": self.min_gene_fraction, "n_alternates": self.n_alternates,
            "n_markers": self.n_markers, "labels": self.reference.labels,
            "n_genes": len(self.reference.genes), "genes_found_fraction": self.gene_fraction,
            "training": self.reference.training,
        }

    def _query_layout(self, genes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The query columns holding model genes, their weights and marker eligibility."""
        # Chunks of one matrix share its genes array; the array itself (not its id, which
        # can be reused after garbage collection) is kept to recognise it.
        cached = self._cache_genes
        if self._cache is not None and cached is not None and (
                cached is genes or (len(cached) == len(genes) and np.array_equal(cached, genes))):
            return self._cache
        ref = self.reference
        position = {str(g): i for i, g in enumerate(genes)}
        ref_rows, query_cols = [], []
        for r, g in enumerate(ref.genes):
            j = position.get(g)
            if j is not None:
                ref_rows.append(r)
                query_cols.append(j)
        fraction = len(ref_rows) / len(ref.genes)
        self.gene_fraction = fraction
        if fraction < self.min_gene_fraction:
            from .._gene_ids import detect_gene_id_kind

            msg = (f"only {len(ref_rows)} of the reference's {len(ref.genes)} genes "
                   f"({fraction:.0%}) are in the query (need {self.min_gene_fraction:.0%}); the "
                   f"query genes look like {detect_gene_id_kind(list(genes))}, the reference's "
                   f"like {detect_gene_id_kind(list(ref.genes))}. Map the gene ids to the "
                   "reference's kind, or build a reference on the same gene ids.")
            raise GeneIdError(msg)
        if fraction < 0.9:
            logger.warning("only %.0f%% of the reference genes are in the query; calls may be "
                           "less accurate", 100 * fraction)
        rows = np.asarray(ref_rows, dtype=np.int64)
        # Markers are genes that also sit higher in the label than in the other labels, so
        # ubiquitous genes with a small positive weight (MALAT1, ribosomal) are not reported.
        others = (ref.means.sum(axis=1, keepdims=True) - ref.means) / max(ref.n_labels - 1, 1)
        eligible = (ref.means - others)[rows] > 0.5
        layout = (np.asarray(query_cols, dtype=np.int64),
                  np.ascontiguousarray(ref.weights[rows], dtype=np.float32), eligible)
        self._cache_genes, self._cache = genes, layout
        return layout

    def annotate_chunk(self, matrix: CellMatrix) -> ChunkCalls:
        ref = self.reference
        cols, W, eligible = self._query_layout(matrix.genes)
        # Only the model's genes are normalised and multiplied; each cell's own total (over
        # all its genes) scales it, so chunking never changes a call.
        Xs = log_normalize(matrix, target_sum=ref.target_sum, columns=cols)
        scores = np.asarray(Xs @ W, dtype=np.float64) + ref.intercepts[None, :]
        scores -= scores.max(axis=1, keepdims=True)
        prob = np.exp(scores)
        prob /= prob.sum(axis=1, keepdims=True)
        order = np.argsort(-prob, axis=1, kind="stable")[:, : self.n_alternates + 1]
        best = order[:, 0]
        labels = np.asarray(ref.labels, dtype=object)
        top_prob = np.take_along_axis(prob, order, axis=1)
        alternates = [
            list(zip(names, scores, strict=True))
            for names, scores in zip(labels[order[:, 1:]].tolist(), top_prob[:, 1:].tolist(),
                                     strict=True)
        ]
        return ChunkCalls(
            labels=labels[best].tolist(),
            confidence=top_prob[:, 0].astype(np.float32),
            ontology_ids=[ref.ontology_ids[k] for k in best],
            alternates=alternates,
            markers=self._markers(Xs, W, eligible, best, matrix.genes[cols]),
        )

    def _markers(self, Xs: sp.csr_matrix, W: np.ndarray, eligible: np.ndarray,
                 best: np.ndarray, genes: np.ndarray) -> list[list[str]]:
        """Per cell, the genes whose expression pushed hardest towards its label."""
        n_cells = Xs.shape[0]
        rows = np.repeat(np.arange(n_cells), np.diff(Xs.indptr))
        label_of_entry = best[rows]
        contribution = Xs.data * W[Xs.indices, label_of_entry]
        keep = (contribution > 0) & eligible[Xs.indices, label_of_entry]
        rows, cols, contribution = rows[keep], Xs.indices[keep], contribution[keep]
        names = np.asarray([str(g) for g in genes], dtype=object)
        if len(rows) == 0:
            return [[] for _ in range(n_cells)]
        # Top genes per cell without sorting every entry: lay each cell's candidates out in
        # a row (cells x most candidates of any cell; the model's genes bound it), take the
        # best few with argpartition, then order only those.
        per_cell = np.bincount(rows, minlength=n_cells)
        first = np.concatenate([[0], np.cumsum(per_cell)[:-1]])
        slot = np.arange(len(rows)) - first[rows]
        width = int(per_cell.max())
        values = np.full((n_cells, width), -np.inf, dtype=np.float32)
        values[rows, slot] = contribution
        genes_at = np.zeros((n_cells, width), dtype=np.int64)
        genes_at[rows, slot] = cols
        k = min(self.n_markers, width)
        top = np.argpartition(-values, k - 1, axis=1)[:, :k]
        top_values = np.take_along_axis(values, top, axis=1)
        order = np.argsort(-top_values, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        found = np.take_along_axis(top_values, order, axis=1) > -np.inf
        top_names = names[np.take_along_axis(genes_at, top, axis=1)]
        return [row[ok].tolist() for row, ok in zip(top_names, found, strict=True)]


def _factory(atlas: str | None = None, **params: Any) -> ReferenceEngine:
    return ReferenceEngine(atlas, **params)


register_engine("reference", _factory,
                "logistic model built from your own labelled data (scbridge build-reference)")

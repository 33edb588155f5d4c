"""Fit the marker engine's confidence calibration, leave-one-data-set-out, and print it.

The engine's descent gives each call a cumulative probability (the product of the softmax
choices on its path).  That number ranks calls well but is not a calibrated probability: how
often a call at 0.9 is right depends on how much of the marker panel the matrix holds and on
how many markers carried the call.  The engine therefore reports

    confidence = sigmoid(a * logit(p) + b * log(coverage) + c * log(markers) + d)

with ``p`` the cumulative probability, ``coverage`` the fraction of the candidate panel found
in the matrix (``scbridge.genes_matched``) and ``markers`` the positive markers of the call
detected in the cell; calls carried by fewer than ``min_markers`` markers are then capped at
``FEW_MARKERS_CAP``.  The four coefficients are fitted here by logistic regression of "the
call is right at its own depth" (the call and the truth lie on one Cell Ontology lineage; see
``benchmarks/tissues.py``) on the labelled data sets beside the repository, every data set
weighted equally.  Reported per data set: the expected calibration error (10 bins) of the raw
probability, of a fit on the *other* data sets (leave-one-data-set-out: what a new data set
sees) and of the fit on all of them (the shipped one).

Run from the repository root (needs ../shared/data and scanpy's bundled pbmc68k_reduced)::

    PYTHONPATH=. .venv/bin/python tools/fit_calibration.py
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bridge  # noqa: E402
from bridge._annotate import _resolve_genes  # noqa: E402
from bridge.engines import get_engine  # noqa: E402
from bridge.engines._marker_scoring import descend, evidence, hypotheses  # noqa: E402
from bridge.engines.markers import FEW_MARKERS_CAP  # noqa: E402


def _benchmark() -> object:
    spec = importlib.util.spec_from_file_location("tissues", ROOT / "benchmarks" / "tissues.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tissues"] = module
    spec.loader.exec_module(module)
    return module


def raw_calls(matrix: bridge.CellMatrix, **params: float) -> dict[str, np.ndarray]:
    """Per cell: the call's ontology id, cumulative probability, detected markers; and the
    panel coverage, from the engine's own steps (before calibration)."""
    engine = get_engine("markers", **params)
    genes, _, _ = _resolve_genes(matrix, list(engine.genes))
    matrix = bridge.CellMatrix(matrix.X, matrix.cells, genes, value_kind=matrix.value_kind,
                               validate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = engine.plan(matrix)
    options = plan.annotate_chunk.keywords  # type: ignore[attr-defined]
    model, settings = options["model"], engine._settings()
    labels, probability, supported = [], [], []
    for start in range(0, matrix.n_cells, 8192):
        block = matrix.X[start:start + 8192]
        found = evidence(block, options["kind"], options["layout"], settings)
        h = hypotheses(found, model, options["layout"], options["in_context"], settings)
        walk = descend(h, model, options["tree"], options["layout"], options["in_context"],
                       settings)
        labels.extend(model.ids[k] if k >= 0 else None for k in walk.label.tolist())
        probability.append(walk.probability)
        supported.append(h.counts[np.maximum(walk.label, 0), np.arange(len(walk.label))])
    return {"ontology_id": np.array(labels, dtype=object),
            "p": np.concatenate(probability), "markers": np.concatenate(supported),
            "coverage": np.full(matrix.n_cells, plan.genes_matched)}


def features(calls: dict[str, np.ndarray]) -> np.ndarray:
    p = np.clip(calls["p"], 1e-4, 1 - 1e-4)
    return np.column_stack([np.log(p / (1 - p)), np.log(np.maximum(calls["coverage"], 1e-3)),
                            np.log(np.maximum(calls["markers"], 1))])


def confidence(coef: np.ndarray, calls: dict[str, np.ndarray]) -> np.ndarray:
    z = features(calls) @ coef[:3] + coef[3]
    out = 1 / (1 + np.exp(-z))
    out = np.where(calls["markers"] < 2, np.minimum(out, FEW_MARKERS_CAP), out)
    return np.where(calls["ontology_id"] == None, 0.0, out)  # noqa: E711


def fit(sets: list[tuple[dict[str, np.ndarray], np.ndarray]]) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    xs, ys, ws = [], [], []
    for calls, correct in sets:
        called = calls["ontology_id"] != None  # noqa: E711
        xs.append(features(calls)[called])
        ys.append(correct[called])
        ws.append(np.full(called.sum(), 1.0 / max(called.sum(), 1)))
    model = LogisticRegression(C=10.0, max_iter=1000)
    model.fit(np.vstack(xs), np.concatenate(ys).astype(int), sample_weight=np.concatenate(ws))
    return np.array([*model.coef_[0], model.intercept_[0]])


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--temperature", type=float, default=None,
                        help="the engine's softmax temperature (default: its own)")
    args = parser.parse_args()
    params = {} if args.temperature is None else {"temperature": args.temperature}
    tissues = _benchmark()
    data = []
    for dataset in [*tissues.tissue_datasets(None), *tissues.pbmc_datasets(None)]:
        calls = raw_calls(dataset.matrix, **params)
        normal = np.array([f is not None for f in dataset.fine])
        correct = np.array([tissues.right_at_own_depth(c, t) if t is not None else False
                            for c, t in zip(calls["ontology_id"], dataset.fine, strict=True)])
        kept = {k: v[normal] for k, v in calls.items()}
        data.append((dataset.name, kept, correct[normal]))
        print(f"{dataset.name}: {normal.sum()} cells scored", file=sys.stderr)
    shipped = fit([(c, y) for _, c, y in data])
    print(f"\n{'data set':<34s}{'raw':>8s}{'LODO':>8s}{'all':>8s}   accuracy at own depth")
    for name, calls, correct in data:
        others = fit([(c, y) for n, c, y in data if n != name])
        raw = np.where(calls["ontology_id"] == None, 0.0, calls["p"])  # noqa: E711
        print(f"{name:<34s}{tissues.ece(correct, raw):8.3f}"
              f"{tissues.ece(correct, confidence(others, calls)):8.3f}"
              f"{tissues.ece(correct, confidence(shipped, calls)):8.3f}   {correct.mean():.3f}")
    print("\nCALIBRATION = (" + ", ".join(f"{c:.4f}" for c in shipped) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())

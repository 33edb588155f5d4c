"""Accuracy of cell-type calls: our engines beside CellTypist and SingleR, in one run.

Data sets (both with labels that are not derived from clustering):

* sorted PBMC (../shared/data, Zheng et al. 2017): 3,500 FACS-sorted cells, 7 types.
* scanpy's bundled ``pbmc68k_reduced`` (700 cells, ``bulk_labels``; ``.raw`` holds the
  log-normalised values, ``X`` is scaled and is not used).

Each data set is split 50/50, stratified by label, with a fixed seed.  Methods:

* ``embedded markers``: ``bridge.annotate(..., model="markers")``, no reference and no
  training at all (the curated marker database shipped in the package);
* ``reference``: ``build_reference`` on the training half, applied to the test half;
* ``CellTypist``: CellTypist 1.7.1 ``celltypist.train`` on the SAME training half
  (log1p CP10k, ``feature_selection=True`` as its tutorial does; no model download);
* ``SingleR``: Bioconductor SingleR through rpy2, reference = the same training half,
  ``de.method = "wilcox"`` as SingleR's book advises for single-cell references
  (``--singler-de classic`` for the default marker detection).

Scores are on the test half, on the five coarse classes (B, CD4 T, CD8 T, NK, monocyte);
test cells whose true label has no coarse class (pbmc68k's Dendritic and CD34+) are left
out.  Per class we print the recall (the fraction of that class's cells given the right
coarse class), plus overall coarse accuracy, macro F1 over the five classes and, for the
methods trained on the fine labels, fine-label accuracy.

Coarse mapping (documented here, used for every method):

* the data sets' own fine labels: ``SORTED_TO_COARSE`` and ``BULK_TO_COARSE`` below;
* the embedded engine's calls, by the Cell Ontology (``COARSE_NODES``): a call counts for a
  coarse class when its ``ontology_id`` is the class's CL node or a CL descendant of it
  (lymphocyte of B lineage: naive / memory B, plasma cells; CD4-positive, alpha-beta T cell:
  naive / memory CD4 T, regulatory T; CD8-positive, alpha-beta T cell: naive / effector
  memory CD8 T; natural killer cell and its CD16 / CD56 subtypes; monocyte: classical /
  non-classical).  Anything else (an unresolved "T cell", MAIT or gamma-delta T, DCs, a
  compartment-level call, ``Unknown``) counts as "other", i.e. wrong for these five classes.

Also checked on every cell of both data sets: no cell is given a type outside the blood
compartments (``label_l1`` other than immune or erythroid/megakaryocyte) with confidence
>= 0.5.

A speed section times building and applying the reference on tens of thousands of cells
(sorted PBMC cells resampled with replacement) beside CellTypist's train / predict.

Run::

    /work/venv/bin/python benchmarks/accuracy.py                  # everything
    /work/venv/bin/python benchmarks/accuracy.py --small          # 10k-cell speed test
    /work/venv/bin/python benchmarks/accuracy.py --small --skip-singler
    /work/venv/bin/python benchmarks/accuracy.py --seeds 5 --skip-speed   # mean of 5 splits
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bridge
from bridge import build_reference
from bridge.engines.reference import ReferenceEngine
from bridge.matrix import CellMatrix
from bridge.numerics import log_normalize

SHARED = next((p / "shared" / "data" for p in Path(__file__).resolve().parents
               if (p / "shared" / "data").is_dir()),
              Path(__file__).resolve().parents[2] / "shared" / "data")
COARSE = ("B", "CD4 T", "CD8 T", "NK", "monocyte")
SORTED_TO_COARSE = {"B": "B", "CD4TN": "CD4 T", "CD4TCM": "CD4 T", "CD4Treg": "CD4 T",
                    "CD8TN": "CD8 T", "NK": "NK", "Monocyte": "monocyte"}
BULK_TO_COARSE = {
    "CD19+ B": "B",
    "CD4+/CD25 T Reg": "CD4 T", "CD4+/CD45RO+ Memory": "CD4 T",
    "CD4+/CD45RA+/CD25- Naive T": "CD4 T",
    "CD8+ Cytotoxic T": "CD8 T", "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T",
    "CD56+ NK": "NK",
    "CD14+ Monocyte": "monocyte",
    # "Dendritic" and "CD34+" have no coarse class: left out of the scores.
}
COARSE_NODES = {"B": "CL:0000945", "CD4 T": "CL:0000624", "CD8 T": "CL:0000625",
                "NK": "CL:0000623", "monocyte": "CL:0000576"}
PROGENITOR = "CL:0008001"  # hematopoietic precursor cell
BLOOD_COMPARTMENTS = ("immune", "erythroid/megakaryocyte")
SEED = 0

logging.basicConfig(level=logging.WARNING)
warnings.filterwarnings("ignore")


@dataclass
class Dataset:
    name: str
    matrix: CellMatrix
    labels: np.ndarray  # fine ground truth
    to_coarse: dict[str, str]
    train: np.ndarray
    test: np.ndarray
    min_cells_per_label: int = 10


@dataclass
class Result:
    method: str
    fine: np.ndarray | None  # predicted fine labels (trained methods)
    coarse: np.ndarray | None  # predicted coarse classes
    seconds: float
    note: str = ""


# -- data ----------------------------------------------------------------------------------
def subset(matrix: CellMatrix, rows: np.ndarray) -> CellMatrix:
    return CellMatrix(matrix.X[rows], matrix.cells[rows], matrix.genes,
                      obs=matrix.obs.take(pa.array(rows)), value_kind=matrix.value_kind,
                      source=f"{matrix.source} [{len(rows)} cells]", validate=False)


def split(labels: np.ndarray, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(labels)), test_size=0.5, stratify=labels,
                                   random_state=seed)
    return np.sort(train), np.sort(test)


def load_sorted() -> Dataset:
    matrix = bridge.read(SHARED / "sorted_pbmc_seurat.rds")
    labels = np.asarray(matrix.obs.column("trueLabel").to_pylist()).astype(str)
    train, test = split(labels)
    return Dataset("sorted PBMC", matrix, labels, SORTED_TO_COARSE, train, test)


def load_pbmc68k() -> Dataset:
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    matrix = bridge.read(adata, layer="raw", value_kind="lognorm")
    labels = np.asarray(matrix.obs.column("bulk_labels").to_pylist()).astype(str)
    train, test = split(labels)
    # 8 naive CD4 T cells in all: 4 per half, so the trained methods may learn small labels.
    return Dataset("pbmc68k_reduced", matrix, labels, BULK_TO_COARSE, train, test,
                   min_cells_per_label=3)


# -- methods -------------------------------------------------------------------------------
def descends(ontology_id: str | None, node: str) -> bool:
    """The call is the CL node or a CL descendant of it."""
    from bridge.engines._knowledge_base import load_cell_ontology

    ontology = load_cell_ontology()
    return bool(ontology_id) and ontology_id in ontology and (
        ontology_id == node or node in ontology.ancestors(str(ontology_id)))


def embedded_coarse(ontology_id: str | None) -> str:
    """The coarse class of an embedded-engine call, by Cell Ontology descent."""
    return next((name for name, node in COARSE_NODES.items() if descends(ontology_id, node)),
                "other")


def run_markers(data: Dataset) -> Result:
    started = time.perf_counter()
    try:
        from bridge import annotate
    except ImportError as exc:
        return Result("embedded markers (no ref)", None, None, 0.0, f"n/a: {exc}")
    try:
        table = annotate(subset(data.matrix, data.test), model="markers", qc=False,
                         progress=False)
    except bridge.BridgeError as exc:
        return Result("embedded markers (no ref)", None, None, 0.0,
                      f"n/a: {type(exc).__name__}: {str(exc)[:90]}")
    seconds = time.perf_counter() - started
    coarse = np.array([embedded_coarse(i) for i in table.column("ontology_id").to_pylist()])
    return Result("embedded markers (no ref)", None, coarse, seconds)


def non_blood_check(data: Dataset) -> str:
    """Cells of the whole data set given a non-blood type with confidence >= 0.5."""
    table = bridge.annotate(data.matrix, qc=False, progress=False)
    l1 = np.asarray(table.column("label_l1").to_pylist(), dtype=object)
    confidence = np.asarray(table.column("confidence").to_pylist())
    bad = ~np.isin(l1, [*BLOOD_COMPARTMENTS, None]) & (confidence >= 0.5)
    below = ~np.isin(l1, [*BLOOD_COMPARTMENTS, None]) & (confidence < 0.5)
    labels = table.column("label").to_pylist()
    named = ", ".join(sorted({str(labels[i]) for i in np.flatnonzero(bad)})) or "none"
    return (f"{int(bad.sum())} of {data.matrix.n_cells:,} cells called a non-blood type at "
            f"confidence >= 0.5 ({named}; {int(below.sum())} more below 0.5)")


def run_reference(data: Dataset) -> Result:
    train, test = subset(data.matrix, data.train), subset(data.matrix, data.test)
    labelled = CellMatrix(train.X, train.cells, train.genes, value_kind=train.value_kind,
                          obs=pa.table({"truth": data.labels[data.train]}), validate=False)
    started = time.perf_counter()
    model = build_reference(labelled, label_column="truth",
                            min_cells_per_label=data.min_cells_per_label)
    calls = ReferenceEngine(model).annotate_chunk(test)
    return Result("reference (ours)", np.asarray(calls.labels), None,
                  time.perf_counter() - started)


def lognorm_anndata(matrix: CellMatrix, labels: np.ndarray | None = None):
    import anndata
    import pandas as pd

    obs = pd.DataFrame({"truth": labels} if labels is not None else {},
                       index=matrix.cells.astype(str))
    return anndata.AnnData(X=log_normalize(matrix.X, matrix.value_kind), obs=obs,
                           var=pd.DataFrame(index=matrix.genes.astype(str)))


def quietly(fn: Callable[[], object]) -> object:
    """CellTypist prints emoji progress lines; keep the benchmark output readable."""
    with contextlib.redirect_stdout(io.StringIO()):
        logging.disable(logging.INFO)
        try:
            return fn()
        finally:
            logging.disable(logging.NOTSET)


def celltypist_train(matrix: CellMatrix, labels: np.ndarray):
    import celltypist

    adata = lognorm_anndata(matrix, labels)
    return quietly(lambda: celltypist.train(adata, labels="truth", feature_selection=True,
                                            n_jobs=1, check_expression=False))


def celltypist_predict(model, matrix: CellMatrix) -> np.ndarray:
    import celltypist

    adata = lognorm_anndata(matrix)
    out = quietly(lambda: celltypist.annotate(adata, model=model, majority_voting=False))
    return out.predicted_labels["predicted_labels"].astype(str).to_numpy()


def run_celltypist(data: Dataset) -> Result:
    train, test = subset(data.matrix, data.train), subset(data.matrix, data.test)
    started = time.perf_counter()
    model = celltypist_train(train, data.labels[data.train])
    predicted = celltypist_predict(model, test)
    return Result("CellTypist 1.7.1 (same split)", predicted, None,
                  time.perf_counter() - started)


SINGLER_DE = "wilcox"


def run_singler(data: Dataset) -> Result:
    method = f"SingleR (same split, {SINGLER_DE})"
    try:
        import rpy2.robjects as ro

        from bridge.io.rds_write import to_r
    except ImportError as exc:
        return Result(method, None, None, 0.0, f"n/a: {exc}")

    def lognorm_r(rows: np.ndarray) -> object:
        m = subset(data.matrix, rows)
        return to_r(CellMatrix(log_normalize(m.X, m.value_kind), m.cells, m.genes, value_kind="lognorm",
                               validate=False))

    started = time.perf_counter()
    ref, test = lognorm_r(data.train), lognorm_r(data.test)
    run = ro.r("""function(test, ref, labels, de) {
        suppressPackageStartupMessages(library(SingleR))
        as.character(SingleR(test = test, ref = ref, labels = labels, de.method = de)$labels)
    }""")
    predicted = np.asarray(list(run(test, ref, ro.StrVector(data.labels[data.train]),
                                    SINGLER_DE)))
    return Result(method, predicted, None, time.perf_counter() - started)


# -- scores --------------------------------------------------------------------------------
def score(data: Dataset, result: Result) -> dict[str, float] | None:
    from sklearn.metrics import f1_score

    truth_fine = data.labels[data.test]
    truth = np.array([data.to_coarse.get(t, "") for t in truth_fine])
    scored = truth != ""
    if result.coarse is not None:
        predicted = result.coarse
    elif result.fine is not None:
        predicted = np.array([data.to_coarse.get(p, "other") for p in result.fine])
    else:
        return None
    t, p = truth[scored], predicted[scored]
    out = {"n": int(scored.sum()), "coarse": float((t == p).mean()),
           "macro_f1": float(f1_score(t, p, labels=list(COARSE), average="macro",
                                      zero_division=0))}
    for cls in COARSE:
        members = t == cls
        out[cls] = float((p[members] == cls).mean()) if members.any() else float("nan")
    if result.fine is not None:
        out["fine"] = float((result.fine == truth_fine).mean())
    return out


def mean_over_seeds(per_seed: list[tuple[Result, dict[str, float] | None]]
                    ) -> tuple[Result, dict[str, float] | None]:
    """One row from the runs on several splits: mean scores and times."""
    first = per_seed[0][0]
    scores = [s for _, s in per_seed if s is not None]
    seconds = float(np.mean([r.seconds for r, _ in per_seed]))
    if not scores:
        return Result(first.method, None, None, seconds, first.note), None
    mean = {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}
    mean["n"] = round(mean["n"])
    return Result(first.method, first.fine, first.coarse, seconds), mean


def print_table(rows: list[tuple[str, Result, dict[str, float] | None]]) -> None:
    head = (f"{'data set':<16} {'method':<32} {'n':>5} {'coarse':>7} " +
            " ".join(f"{c:>8}" for c in COARSE) + f" {'macroF1':>8} {'fine':>6} {'time s':>7}")
    print(head)
    print("-" * len(head))
    for name, result, s in rows:
        if s is None:
            print(f"{name:<16} {result.method:<32} {result.note}")
            continue
        fine = f"{s['fine']:.3f}" if "fine" in s else "-"
        print(f"{name:<16} {result.method:<32} {s['n']:>5} {s['coarse']:>7.3f} "
              + " ".join(f"{s[c]:>8.3f}" for c in COARSE)
              + f" {s['macro_f1']:>8.3f} {fine:>6} {result.seconds:>7.2f}")


def progenitor_check() -> str:
    """What the embedded engine calls pbmc68k's 13 CD34+ cells (all of them, no split)."""
    try:
        from bridge import annotate
    except ImportError:
        return "n/a (bridge not importable)"
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    matrix = bridge.read(adata, layer="raw", value_kind="lognorm")
    labels = np.asarray(matrix.obs.column("bulk_labels").to_pylist())
    rows = np.flatnonzero(labels == "CD34+")
    try:
        table = annotate(subset(matrix, rows), model="markers", qc=False, progress=False)
    except bridge.BridgeError as exc:
        return f"n/a ({type(exc).__name__}: {str(exc)[:80]})"
    ids = table.column("ontology_id").to_pylist()
    called = table.column("label").to_pylist()
    hits = sum(descends(o, PROGENITOR) for o in ids)
    top = ", ".join(f"{lab} x{called.count(lab)}" for lab in sorted(set(called),
                                                                      key=called.count,
                                                                      reverse=True)[:4])
    return f"{hits}/{len(rows)} called progenitors ({top})"


# -- speed ---------------------------------------------------------------------------------
def speed(n_cells: int, *, with_celltypist: bool) -> None:
    data = load_sorted_cached()
    rng = np.random.default_rng(SEED)
    rows = rng.choice(data.matrix.n_cells, n_cells, replace=True)
    big = subset(data.matrix, rows)
    big = CellMatrix(big.X, [f"cell{i}" for i in range(n_cells)], big.genes,
                     obs=pa.table({"truth": data.labels[rows]}), source="resampled")
    print(f"\nspeed: {n_cells:,} cells x {big.n_genes:,} genes (sorted PBMC resampled), "
          f"nnz {big.nnz:,}")
    timings, cpu = {}, {}
    for cap in (5000, None):
        started, started_cpu = time.perf_counter(), time.process_time()
        model = build_reference(big, label_column="truth", max_cells_per_label=cap)
        timings[f"build (max_cells_per_label={cap})"] = time.perf_counter() - started
        cpu[f"build (max_cells_per_label={cap})"] = time.process_time() - started_cpu
    engine = ReferenceEngine(model)
    started, started_cpu = time.perf_counter(), time.process_time()
    for chunk in big.iter_chunks(50_000):
        engine.annotate_chunk(chunk)
    timings["apply (all cells)"] = time.perf_counter() - started
    cpu["apply (all cells)"] = time.process_time() - started_cpu
    for key, value in timings.items():
        print(f"  reference {key:<36} {value:8.2f} s wall ({cpu[key]:.2f} s CPU)")
    if with_celltypist:
        started = time.perf_counter()
        ct_model = celltypist_train(big, data.labels[rows])
        ct_train = time.perf_counter() - started
        started = time.perf_counter()
        celltypist_predict(ct_model, big)
        ct_predict = time.perf_counter() - started
        ours_build = timings["build (max_cells_per_label=None)"]
        ours_apply = timings["apply (all cells)"]
        print(f"  CellTypist train (all cells, feature selection) {ct_train:8.2f} s wall  "
              f"(CellTypist / reference build, all cells: {ct_train / ours_build:.2f})")
        print(f"  CellTypist predict (all cells)                  {ct_predict:8.2f} s wall  "
              f"(CellTypist / reference apply: {ct_predict / ours_apply:.2f})")


_SORTED: Dataset | None = None


def load_sorted_cached() -> Dataset:
    global _SORTED
    if _SORTED is None:
        _SORTED = load_sorted()
    return _SORTED


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true",
                        help="quick run: 10,000 cells in the speed section")
    parser.add_argument("--skip-singler", action="store_true", help="leave SingleR out")
    parser.add_argument("--singler-de", choices=("wilcox", "classic", "t"), default="wilcox",
                        help="SingleR's de.method (default wilcox, for single-cell references)")
    parser.add_argument("--skip-speed", action="store_true", help="leave the speed section out")
    parser.add_argument("--seeds", type=int, default=1,
                        help="average over this many 50/50 splits (seeds 0, 1, ...; default 1)")
    parser.add_argument("--speed-cells", type=int, default=None,
                        help="cells in the speed section (default 50,000; 10,000 with --small)")
    args = parser.parse_args()
    global SINGLER_DE
    SINGLER_DE = args.singler_de

    datasets = [load_sorted_cached(), load_pbmc68k()]
    seeds = list(range(SEED, SEED + args.seeds))
    rows: list[tuple[str, Result, dict[str, float] | None]] = []
    for data in datasets:
        print(f"{data.name}: {data.matrix.n_cells:,} cells x {data.matrix.n_genes:,} genes, "
              f"train {len(data.train):,} / test {len(data.test):,} (stratified 50/50, "
              f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})", flush=True)
        methods = [run_markers, run_reference, run_celltypist]
        if not args.skip_singler:
            methods.append(run_singler)
        for method in methods:
            per_seed = []
            for seed in seeds:
                data.train, data.test = split(data.labels, seed)
                result = method(data)
                per_seed.append((result, score(data, result)))
            rows.append((data.name, *mean_over_seeds(per_seed)))
    print()
    if len(seeds) > 1:
        print(f"means over {len(seeds)} splits (seeds {seeds[0]}..{seeds[-1]})")
    print_table(rows)

    print("\nchecks")
    by = {(name, r.method.split(" ")[0]): s for name, r, s in rows}
    for data in datasets:
        ours, peer = by.get((data.name, "reference")), by.get((data.name, "CellTypist"))
        if ours and peer:
            pairs = [(ours["macro_f1"], peer["macro_f1"]), (ours["fine"], peer["fine"])]
            # Beats: at least as good on coarse macro F1 and fine accuracy, better on one.
            wins = all(a >= b for a, b in pairs) and any(a > b for a, b in pairs)
            verdict = "beats" if wins else "does NOT beat"
            print(f"  {data.name}: reference {verdict} CellTypist on the same split "
                  f"(macro F1 {ours['macro_f1']:.3f} vs {peer['macro_f1']:.3f}; fine accuracy "
                  f"{ours.get('fine', float('nan')):.3f} vs {peer.get('fine', float('nan')):.3f})")
        emb = by.get((data.name, "embedded"))
        if emb:
            print(f"  {data.name}: embedded engine coarse accuracy {emb['coarse']:.3f} "
                  f"(target >= 0.96: {'met' if emb['coarse'] >= 0.96 else 'NOT met'}), "
                  f"CD8 T {emb['CD8 T']:.3f} (target >= 0.87: "
                  f"{'met' if emb['CD8 T'] >= 0.87 else 'NOT met'})")
            print(f"  {data.name}: {non_blood_check(data)}")
        else:
            print(f"  {data.name}: embedded engine n/a")
    print(f"  pbmc68k_reduced CD34+ cells, embedded engine: {progenitor_check()}")

    if not args.skip_speed:
        n = args.speed_cells or (10_000 if args.small else 50_000)
        speed(n, with_celltypist=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

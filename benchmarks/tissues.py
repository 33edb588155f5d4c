"""Annotation beyond blood: the embedded engine on every tissue data set, beside an older engine.

Data sets (none of them ship with the package; each is skipped when absent):

* every folder of ``../shared/data/tissues`` (``counts.rds`` + ``labels.csv``; truth in
  ``tissues/truth.tsv``: each label maps to Cell Ontology ids at two levels, ``fine`` and
  ``coarse``; ``-`` marks cells with no normal type (malignant clones), ``*`` any label,
  ``X.*`` a prefix);
* sorted PBMC (``../shared/data``, Zheng et al. 2017, labels from FACS);
* scanpy's bundled ``pbmc68k_reduced`` (``.raw``: log-normalised; ``bulk_labels`` mapped to
  CL below).
* any ``--h5ad`` file you pass (held-out data sets: counts in ``.X``, the authors' Cell
  Ontology id per cell in ``obs["cell_ontology_id"]``): fine truth is that id, coarse truth
  its lineage (``label_l2``, derived from CL by the knowledge base's rules).  For example Baron
  et al. 2016's human and mouse islets, which the PyPI wheel of ``came`` ships in
  ``came/sample_data.zip`` (``raw-Baron_human.h5ad``, ``raw-Baron_mouse.h5ad``); nothing is
  downloaded here.

Scores, per data set (cells whose truth is ``-`` are left out and reported apart):

* **coarse / fine**: accuracy by CL descent, a call is right at a level when its
  ``ontology_id`` is one of the level's ids or a CL descendant of one (``Unknown`` is wrong);
* **macro F1** over the fine truth classes (a call is "predicted" for a class when it is right
  for it);
* **ECE**: expected calibration error (10 equal-width bins) of *the call is right at its own
  depth* against ``confidence``: right when the call and a fine truth id lie on one CL
  lineage (the call is the truth, a descendant of it, or an ancestor of it: ``T cell`` for a
  CD8 T cell is right at its depth); ``Unknown`` counts as a wrong call at its confidence 0;
* **s**: seconds of ``bridge.annotate`` (``qc=False``);
* **mal. >=0.5**: the share of ``-`` cells given a call at confidence >= 0.5.

The same is printed for the engine at a git ref (default ``b9cc6f7``, the commit before the
knowledge-base engine): ``git archive`` of that ref into a temporary folder, run in a
subprocess with that folder on ``PYTHONPATH`` on the same matrices (written once as ``.npz``),
scored here by the same rules.  An engine that refuses a data set is shown as ``refused``.

Run::

    PYTHONPATH=. .venv/bin/python benchmarks/tissues.py              # against b9cc6f7
    PYTHONPATH=. .venv/bin/python benchmarks/tissues.py --ref HEAD~3
    PYTHONPATH=. .venv/bin/python benchmarks/tissues.py --no-ref --only pdac,skin
    PYTHONPATH=. .venv/bin/python benchmarks/tissues.py --no-ref --h5ad raw-Baron_human.h5ad
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bridge  # noqa: E402
from bridge.engines._knowledge_base import load_cell_ontology  # noqa: E402

SHARED = next((p / "shared" / "data" for p in Path(__file__).resolve().parents
               if (p / "shared" / "data").is_dir()), None)
DEFAULT_REF = "b9cc6f7"

# Sorted PBMC and pbmc68k_reduced labels -> (fine, coarse) CL ids, '|' = any of.
SORTED_TRUTH = {
    "B": ("CL:0000236", "CL:0000945"),
    "CD4TN": ("CL:0000624", "CL:0000084"), "CD4TCM": ("CL:0000624", "CL:0000084"),
    "CD4Treg": ("CL:0000624", "CL:0000084"), "CD8TN": ("CL:0000625", "CL:0000084"),
    "NK": ("CL:0000623", "CL:0000623|CL:0001065"), "Monocyte": ("CL:0000576", "CL:0000113"),
}
BULK_TRUTH = {
    "CD19+ B": ("CL:0000236", "CL:0000945"),
    "CD4+/CD25 T Reg": ("CL:0000624", "CL:0000084"),
    "CD4+/CD45RO+ Memory": ("CL:0000624", "CL:0000084"),
    "CD4+/CD45RA+/CD25- Naive T": ("CL:0000624", "CL:0000084"),
    "CD8+ Cytotoxic T": ("CL:0000625", "CL:0000084"),
    "CD8+/CD45RA+ Naive Cytotoxic": ("CL:0000625", "CL:0000084"),
    "CD56+ NK": ("CL:0000623", "CL:0000623|CL:0001065"),
    "CD14+ Monocyte": ("CL:0000576", "CL:0000113"),
    "Dendritic": ("CL:0000451", "CL:0000451"),
    "CD34+": ("CL:0008001", "CL:0008001"),
}

# Runs in the subprocess with the old tree first on sys.path: only the public API.
CHILD = r"""
import json, sys, time, warnings
import numpy as np, scipy.sparse as sp
warnings.simplefilter("ignore")
import bridge
out = {}
for path in sys.argv[1:-1]:
    z = np.load(path, allow_pickle=True)
    X = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
    m = bridge.CellMatrix(X, list(z["cells"]), list(z["genes"]), value_kind=str(z["kind"]))
    started = time.perf_counter()
    try:
        t = bridge.annotate(m, qc=False, progress=False)
    except Exception as exc:  # the old engine may refuse a data set
        out[path] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        continue
    out[path] = {"seconds": time.perf_counter() - started,
                 "ontology_id": t.column("ontology_id").to_pylist(),
                 "label": [str(x) for x in t.column("label").to_pylist()],
                 "confidence": [float(x) for x in t.column("confidence").to_pylist()]}
json.dump(out, open(sys.argv[-1], "w"))
"""


@dataclass
class Dataset:
    name: str
    matrix: bridge.CellMatrix
    fine: list[frozenset[str] | None]  # per cell: truth ids, None for no normal type
    coarse: list[frozenset[str] | None]


@dataclass
class Calls:
    ontology_id: list[str | None]
    confidence: np.ndarray
    label: list[str]
    seconds: float


# -- data ------------------------------------------------------------------------------------
def _ids(text: str) -> frozenset[str] | None:
    return None if text.strip() == "-" else frozenset(text.split("|"))


def truth_table() -> dict[str, list[tuple[str, str, str]]]:
    out: dict[str, list[tuple[str, str, str]]] = {}
    assert SHARED is not None
    with open(SHARED / "tissues" / "truth.tsv", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            out.setdefault(row["dataset"], []).append((row["label"], row["fine"], row["coarse"]))
    return out


def match(label: str, rules: list[tuple[str, str, str]]) -> tuple[str, str]:
    """The (fine, coarse) of a label: an exact rule first, then ``X.*`` prefixes, then ``*``."""
    for pattern, fine, coarse in rules:
        if pattern == label:
            return fine, coarse
    for pattern, fine, coarse in rules:
        if pattern.endswith(".*") and label.startswith(pattern[:-2]):
            return fine, coarse
    for pattern, fine, coarse in rules:
        if pattern == "*":
            return fine, coarse
    msg = f"no truth rule for label {label!r}"
    raise KeyError(msg)


def tissue_datasets(only: set[str] | None) -> Iterator[Dataset]:
    if SHARED is None or not (SHARED / "tissues").is_dir():
        print("../shared/data/tissues not found: tissue data sets skipped")
        return
    truth = truth_table()
    for folder in sorted(p for p in (SHARED / "tissues").iterdir() if p.is_dir()):
        if only and not any(o in folder.name for o in only):
            continue
        matrix = bridge.read(folder / "counts.rds")
        with open(folder / "labels.csv", newline="") as handle:
            labels = {r["cell"]: r["label"] for r in csv.DictReader(handle)}
        pairs = [match(labels[str(c)], truth[folder.name]) for c in matrix.cells]
        yield Dataset(folder.name, matrix, [_ids(f) for f, _ in pairs],
                      [_ids(c) for _, c in pairs])


def pbmc_datasets(only: set[str] | None) -> Iterator[Dataset]:
    if (not only or any("sorted" in o for o in only)) and SHARED is not None and (
            SHARED / "sorted_pbmc_seurat.rds").exists():
        matrix = bridge.read(SHARED / "sorted_pbmc_seurat.rds")
        labels = [str(x) for x in matrix.obs.column("trueLabel").to_pylist()]
        yield Dataset("sorted_pbmc", matrix, [_ids(SORTED_TRUTH[x][0]) for x in labels],
                      [_ids(SORTED_TRUTH[x][1]) for x in labels])
    if only and not any("68k" in o for o in only):
        return
    try:
        import scanpy as sc
    except ImportError:
        print("scanpy not installed: pbmc68k_reduced skipped")
        return
    matrix = bridge.read(sc.datasets.pbmc68k_reduced(), layer="raw", value_kind="lognorm")
    labels = [str(x) for x in matrix.obs.column("bulk_labels").to_pylist()]
    yield Dataset("pbmc68k_reduced", matrix, [_ids(BULK_TRUTH[x][0]) for x in labels],
                  [_ids(BULK_TRUTH[x][1]) for x in labels])


def h5ad_datasets(paths: list[str]) -> Iterator[Dataset]:
    """Held-out AnnData files: ``obs["cell_ontology_id"]`` is the fine truth, its lineage
    (:func:`bridge.engines._knowledge_base.derive_levels`) the coarse truth."""
    import anndata

    from bridge.engines._knowledge_base import derive_levels

    ontology = load_cell_ontology()
    for path in paths:
        adata = anndata.read_h5ad(path)
        if "cell_ontology_id" not in adata.obs:
            print(f"{path}: no obs['cell_ontology_id']; skipped")
            continue
        fine, coarse = [], []
        for term in adata.obs["cell_ontology_id"].astype(str):
            levels = derive_levels(ontology, term)
            fine.append(frozenset({term}))
            coarse.append(frozenset({levels[1] if levels else term}))
        yield Dataset(Path(path).stem, bridge.read(adata), fine, coarse)  # type: ignore[arg-type]


# -- scores ----------------------------------------------------------------------------------
def _ancestors(term: str) -> frozenset[str]:
    ontology = load_cell_ontology()
    return frozenset(ontology.ancestors(term)) if term in ontology else frozenset()


def right(call: str | None, ids: frozenset[str]) -> bool:
    """The call is one of ``ids`` or a CL descendant of one."""
    return bool(call) and (call in ids or not ids.isdisjoint(_ancestors(str(call))))


def right_at_own_depth(call: str | None, ids: frozenset[str]) -> bool:
    """The call and a truth id lie on one CL lineage."""
    return right(call, ids) or any(call in _ancestors(t) for t in ids)


def ece(correct: np.ndarray, confidence: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(total)


def score(data: Dataset, calls: Calls) -> dict[str, float]:
    normal = np.array([f is not None for f in data.fine])
    ids = [calls.ontology_id[i] for i in np.flatnonzero(normal)]
    fine = [data.fine[i] for i in np.flatnonzero(normal)]
    coarse = [data.coarse[i] for i in np.flatnonzero(normal)]
    conf = np.asarray(calls.confidence, dtype=float)[normal]
    fine_ok = np.array([right(c, t) for c, t in zip(ids, fine, strict=True)])  # type: ignore[arg-type]
    coarse_ok = np.array([right(c, t) for c, t in zip(ids, coarse, strict=True)])  # type: ignore[arg-type]
    depth_ok = np.array([right_at_own_depth(c, t) for c, t in zip(ids, fine, strict=True)])  # type: ignore[arg-type]
    f1 = []
    for cls in sorted(set(fine), key=sorted):  # type: ignore[arg-type]
        truth = np.array([t == cls for t in fine])
        predicted = np.array([right(c, cls) for c in ids])  # type: ignore[arg-type]
        tp = float(np.sum(truth & predicted))
        precision = tp / max(predicted.sum(), 1)
        recall = tp / max(truth.sum(), 1)
        f1.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    malignant = ~normal
    conf_all = np.asarray(calls.confidence, dtype=float)
    return {"coarse": float(coarse_ok.mean()), "fine": float(fine_ok.mean()),
            "macro F1": float(np.mean(f1)), "ECE": ece(depth_ok, conf),
            "s": calls.seconds,
            "mal. >=0.5": float((conf_all[malignant] >= 0.5).mean()) if malignant.any()
            else float("nan")}


# -- engines ---------------------------------------------------------------------------------
def run_ours(data: Dataset) -> Calls:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        table = bridge.annotate(data.matrix, qc=False, progress=False)
        seconds = time.perf_counter() - started
    return Calls(table.column("ontology_id").to_pylist(),
                 np.asarray(table.column("confidence").to_pylist(), dtype=float),
                 [str(x) for x in table.column("label").to_pylist()], seconds)


def run_ref(ref: str, sets: list[Dataset]) -> dict[str, Calls | str]:
    """Calls of the engine at ``ref`` (a subprocess on an archive of that commit)."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        archive = Path(tmp) / "ref.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive),
                        ref], check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tree, filter="data")
        paths = []
        for i, data in enumerate(sets):
            X = data.matrix.X
            path = Path(tmp) / f"set{i}.npz"
            np.savez(path, data=X.data, indices=X.indices, indptr=X.indptr,
                     shape=np.array(X.shape), cells=np.asarray(data.matrix.cells, dtype=object),
                     genes=np.asarray(data.matrix.genes, dtype=object),
                     kind=data.matrix.value_kind)
            paths.append(str(path))
        result = Path(tmp) / "calls.json"
        env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
        import os

        env = {**os.environ, **env}
        subprocess.run([sys.executable, "-c", CHILD, *paths, str(result)], check=True, env=env,
                       cwd=tmp)
        raw = json.loads(result.read_text())
    out: dict[str, Calls | str] = {}
    for data, path in zip(sets, paths, strict=True):
        got = raw[path]
        out[data.name] = (got["error"] if "error" in got else
                          Calls(got["ontology_id"], np.asarray(got["confidence"]), got["label"],
                                got["seconds"]))
    return out


# -- report ----------------------------------------------------------------------------------
COLUMNS = ("coarse", "fine", "macro F1", "ECE", "s", "mal. >=0.5")


def _row(name: str, values: dict[str, float] | str) -> str:
    if isinstance(values, str):
        return f"  {name:<14s}refused: {values[:90]}"
    return f"  {name:<14s}" + "".join(f"{values[c]:>11.3f}" for c in COLUMNS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref", nargs="?", default=DEFAULT_REF,
                        help=f"git ref of the engine to compare with (default {DEFAULT_REF})")
    parser.add_argument("--no-ref", action="store_true", help="only the current engine")
    parser.add_argument("--only", help="comma-separated parts of data set names")
    parser.add_argument("--h5ad", action="append", default=[], metavar="PATH",
                        help="a held-out AnnData file with obs['cell_ontology_id'] (repeatable)")
    parser.add_argument("--details", action="store_true",
                        help="also print, per data set, what each truth label was called")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    sets = [*tissue_datasets(only), *pbmc_datasets(only), *h5ad_datasets(args.h5ad)]
    if not sets:
        print("no data sets found")
        return 1
    ref_calls = {} if args.no_ref else run_ref(args.ref, sets)
    print(f"\n{'data set':<34s}{'engine':<14s}" + "".join(f"{c:>11s}" for c in COLUMNS))
    ours_all: dict[str, dict[str, float]] = {}
    for data in sets:
        calls = run_ours(data)
        ours = score(data, calls)
        ours_all[data.name] = ours
        print(f"{data.name} ({data.matrix.n_cells:,} x {data.matrix.n_genes:,})")
        print(_row("this tree", ours))
        if not args.no_ref:
            ref = ref_calls[data.name]
            print(_row(args.ref, ref if isinstance(ref, str) else score(data, ref)))
        if args.details:
            _details(data, calls)
    held_out = {Path(p).stem for p in args.h5ad}
    tissues = [v for k, v in ours_all.items() if "pbmc" not in k and k not in held_out]
    if tissues:
        print(f"\ntissue data sets, this tree: min coarse {min(t['coarse'] for t in tissues):.3f}"
              f" (target >= 0.90), mean fine {np.mean([t['fine'] for t in tissues]):.3f}"
              f" (target >= 0.75), max ECE {max(t['ECE'] for t in tissues):.3f}"
              " (target <= 0.05)")
    return 0


def _details(data: Dataset, calls: Calls) -> None:
    """Per truth label (its fine ids): the most frequent calls and their mean confidence."""
    from collections import Counter, defaultdict

    groups: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(data.fine):
        groups["-" if f is None else "|".join(sorted(f))].append(i)
    ontology = load_cell_ontology()
    for key, rows in groups.items():
        name = "-" if key == "-" else "|".join(ontology.name(k) if k in ontology else k
                                               for k in key.split("|"))
        counts = Counter(calls.label[i] for i in rows)
        top = ", ".join(
            f"{lab} {n} ({np.mean([calls.confidence[i] for i in rows if calls.label[i] == lab]):.2f})"
            for lab, n in counts.most_common(6))
        print(f"      {name} [{len(rows)}]: {top}")


if __name__ == "__main__":
    sys.exit(main())



"""Blood coverage of the new knowledge base beside the current marker database, in one run.

The knowledge base (``bridge/engines/data/cell_types.tsv`` + ``cell_markers.tsv``) replaces the
53-type ``markers.tsv`` of the embedded engine; its blood and immune types must keep what that
database could do.  Until the engine is rewritten on the knowledge base, this benchmark feeds
the knowledge base to TODAY's engine (``MarkerEngine``, unchanged, ``tissue="blood"``) through
a small adapter and compares it with the shipped ``markers.tsv`` on the same cells:

* every knowledge base type becomes a node of the engine's tree; its parent is its closest
  ancestor among the knowledge base types in the Cell Ontology (where CL gives several: the one
  in the same compartment, then the one with the most knowledge base descendants), its level
  the depth of that tree; human data, so rows marked ``species = mouse`` are left out;
* the ``prior`` column of ``cell_types.tsv`` becomes the engine's ``__prior__`` rows.

Data: the FACS-sorted PBMC of Zheng et al. 2017 (``../shared/data``, 3,500 cells, raw counts,
labels from the sorting) and scanpy's bundled ``pbmc68k_reduced`` (700 cells, log-normalised
``.raw``).  A call counts for a coarse class when its Cell Ontology id is that class's node or
descends from it (B = lymphocyte of B lineage, CD4 T, CD8 T, NK, monocyte); every other call is
wrong for these classes.  The same rule scores both databases.

Run::

    PYTHONPATH=. .venv/bin/python benchmarks/knowledge_base_pbmc.py
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bridge
from bridge.engines._knowledge_base import (
    load_cell_markers,
    load_cell_ontology,
    load_cell_types,
)

SHARED = next((p / "shared" / "data" for p in Path(__file__).resolve().parents
               if (p / "shared" / "data" / "sorted_pbmc_seurat.rds").exists()), None)
COARSE = {"B": "CL:0000945", "CD4 T": "CL:0000624", "CD8 T": "CL:0000625",
          "NK": "CL:0000623", "monocyte": "CL:0000576"}
SORTED_TO_COARSE = {"B": "B", "CD4TN": "CD4 T", "CD4TCM": "CD4 T", "CD4Treg": "CD4 T",
                    "CD8TN": "CD8 T", "NK": "NK", "Monocyte": "monocyte"}
BULK_TO_COARSE = {"CD19+ B": "B", "CD4+/CD25 T Reg": "CD4 T", "CD4+/CD45RO+ Memory": "CD4 T",
                  "CD4+/CD45RA+/CD25- Naive T": "CD4 T", "CD8+ Cytotoxic T": "CD8 T",
                  "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T", "CD56+ NK": "NK",
                  "CD14+ Monocyte": "monocyte"}


def knowledge_base_as_marker_table(path: Path, species: str = "human") -> int:
    """Write the knowledge base in ``markers.tsv``'s format (tree from CL); return #types."""
    ontology = load_cell_ontology()
    types = [t for t in load_cell_types() if t["species"] in ("both", species)]
    ids = [t["ontology_id"] for t in types]
    kb = set(ids)
    info = {t["ontology_id"]: t for t in types}
    ancestors = {i: [a for a in ontology.ancestors(i) if a in kb] for i in ids}
    descendants = Counter(a for i in ids for a in ancestors[i])

    def parent(i: str) -> str | None:
        closest = [a for a in ancestors[i]
                   if not any(a in ancestors[b] for b in ancestors[i] if b != a)]
        if not closest:
            return None
        same = [a for a in closest if info[a]["compartment"] == info[i]["compartment"]]
        return max(same or closest, key=lambda a: (descendants[a], -ids.index(a)))

    parents = {i: parent(i) for i in ids}

    def level(i: str) -> int:
        p = parents[i]
        return 1 if p is None else 1 + level(p)

    rows = [m for m in load_cell_markers() if m["species"] in ("both", species)
            and m["ontology_id"] in kb]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle, delimiter="\t", lineterminator="\n")
        out.writerow(("cell_type", "ontology_id", "parent", "level", "tissue", "gene",
                      "direction", "weight", "source"))
        for m in rows:
            i = m["ontology_id"]
            p = parents[i]
            out.writerow((info[i]["name"], i, info[p]["name"] if p else "", level(i),
                          info[i]["tissues"], m["gene"], m["direction"], m["weight"],
                          m["source"]))
        for i in ids:  # the knowledge base's priors, as the old engine's __prior__ rows
            prior = float(info[i]["prior"])
            if prior:
                p = parents[i]
                out.writerow((info[i]["name"], i, info[p]["name"] if p else "", level(i),
                              info[i]["tissues"], "__prior__", "+" if prior > 0 else "-",
                              abs(prior), "cell_types.tsv prior"))
    return len(ids)


def coarse(ontology_id: str | None) -> str:
    if not ontology_id:
        return "other"
    ontology = load_cell_ontology()
    if ontology_id not in ontology:
        return "other"
    lineage = {ontology_id, *ontology.ancestors(ontology_id)}
    return next((name for name, node in COARSE.items() if node in lineage), "other")


def score(calls, truth: np.ndarray) -> dict[str, float]:
    called = np.array([coarse(i) for i in calls.column("ontology_id").to_pylist()])
    out = {name: float(np.mean(called[truth == name] == name)) for name in COARSE}
    out["accuracy"] = float(np.mean(called == truth))
    f1 = []
    for name in COARSE:
        tp = np.sum((called == name) & (truth == name))
        precision = tp / max(np.sum(called == name), 1)
        recall = tp / max(np.sum(truth == name), 1)
        f1.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    out["macro F1"] = float(np.mean(f1))
    return out


def datasets() -> list[tuple[str, object, np.ndarray]]:
    out = []
    if SHARED is not None:
        matrix = bridge.read(SHARED / "sorted_pbmc_seurat.rds")
        labels = np.asarray(matrix.obs.column("trueLabel").to_pylist()).astype(str)
        out.append(("sorted PBMC (3,500 cells)", matrix,
                    np.array([SORTED_TO_COARSE[x] for x in labels])))
    else:
        print("sorted PBMC not found beside the repository (../shared/data): skipped")
    try:
        import scanpy as sc
    except ImportError:
        print("scanpy not installed: pbmc68k_reduced skipped")
        return out
    adata = sc.datasets.pbmc68k_reduced()
    matrix = bridge.read(adata, layer="raw", value_kind="lognorm")
    labels = np.asarray(matrix.obs.column("bulk_labels").to_pylist()).astype(str)
    keep = np.flatnonzero(np.isin(labels, list(BULK_TO_COARSE)))
    matrix = bridge.CellMatrix(matrix.X[keep], np.asarray(matrix.cells)[keep], matrix.genes,
                               value_kind="lognorm")
    out.append((f"pbmc68k_reduced ({len(keep)} cells)", matrix,
                np.array([BULK_TO_COARSE[x] for x in labels[keep]])))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tissue", default="blood")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "knowledge_base_as_markers.tsv"
        n_types = knowledge_base_as_marker_table(table)
        engines = {"markers.tsv (current, 53 types)": None,
                   f"knowledge base ({n_types} human types)": str(table)}
        columns = [*COARSE, "accuracy", "macro F1"]
        for name, matrix, truth in datasets():
            print(f"\n{name}, tissue={args.tissue!r}: recall per coarse class, accuracy, "
                  "macro F1")
            print(f"{'':40s}" + "".join(f"{c:>10s}" for c in columns))
            results = {}
            for label, atlas in engines.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    calls = bridge.call_cells(matrix, model="markers", atlas=atlas,
                                              tissue=args.tissue, progress=False)
                results[label] = score(calls, truth)
                print(f"{label:40s}" + "".join(f"{results[label][c]:10.3f}" for c in columns))
            old, new = results.values()
            print(f"{'ratio knowledge base / current':40s}"
                  + "".join(f"{new[c] / old[c] if old[c] else float('nan'):10.2f}"
                            for c in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())

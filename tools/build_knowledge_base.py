"""Derive the compartment / lineage columns of ``cell_types.tsv`` from CL, then check the
knowledge base (no network, no wheel: runs on the shipped tables).

For every cell type the compartment (``label_l1``) and lineage (``label_l2``) are derived from
its Cell Ontology ancestry with the ordered rules of ``compartments.tsv``
(:func:`bridge.engines._knowledge_base.derive_levels`) and written into the file; comments,
row order and every curated column are kept as they are.  Then every file is checked
(:func:`bridge.engines._knowledge_base.knowledge_base_problems`): an id that is not a live CL
term, a name that is not its CL label, a type whose compartment cannot be derived, an unknown
tissue or gene, a malformed row.  Exit status 1 on any problem.

Usage, from the repository root (after editing cell_types.tsv, cell_markers.tsv,
compartments.tsv or tissues.tsv)::

    python tools/build_knowledge_base.py            # rewrite derived columns, check, summarise
    python tools/build_knowledge_base.py --check    # check only; fail if a column is stale
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.engines._knowledge_base import (  # noqa: E402
    CELL_TYPE_COLUMNS,
    derive_levels,
    knowledge_base_problems,
    load_cell_markers,
    load_cell_ontology,
    load_cell_types,
    load_level_rules,
)

DATA = ROOT / "bridge" / "engines" / "data"


def derive_columns(data: Path) -> tuple[str, list[str]]:
    """The text of cell_types.tsv with derived columns filled, and the ids left underived."""
    ontology = load_cell_ontology(str(data / "cell_ontology.tsv.gz"))
    rules = load_level_rules(str(data / "compartments.tsv"))
    path = data / "cell_types.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()
    index = {c: i for i, c in enumerate(CELL_TYPE_COLUMNS)}
    out, missing, header_seen = [], [], False
    for line in lines:
        if not line.strip() or line.startswith("#") or not header_seen:
            header_seen = header_seen or (bool(line.strip()) and not line.startswith("#"))
            out.append(line)
            continue
        fields = line.split("\t")
        levels = derive_levels(ontology, fields[0], rules) if fields[0] in ontology else None
        if levels is None:
            missing.append(fields[0])
        else:
            fields[index["compartment"]] = levels[0]
            fields[index["lineage_id"]] = levels[1]
            fields[index["lineage"]] = ontology.name(levels[1])
        out.append("\t".join(fields))
    return "\n".join(out) + "\n", missing


def summary(data: Path) -> str:
    types = load_cell_types(str(data / "cell_types.tsv"))
    markers = load_cell_markers(str(data / "cell_markers.tsv"))
    tissues = {t for row in types for t in row["tissues"].split(";")} - {"any"}
    per_compartment = Counter(t["compartment"] for t in types)
    per_lineage = Counter(t["lineage"] for t in types)
    positive = sum(m["direction"] == "+" for m in markers)
    lines = [f"{len(types)} cell types, {len(tissues)} tissues named, {len(markers)} marker rows "
             f"({positive} positive, {len(markers) - positive} negative), "
             f"{len({m['gene'] for m in markers})} genes",
             "per compartment: " + ", ".join(f"{k} {v}" for k, v in per_compartment.most_common()),
             f"{len(per_lineage)} lineages"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="data folder (default: shipped)")
    parser.add_argument("--check", action="store_true",
                        help="do not rewrite cell_types.tsv; fail if its derived columns are stale")
    args = parser.parse_args(argv)
    text, missing = derive_columns(args.data)
    path = args.data / "cell_types.tsv"
    if not args.check and text != path.read_text(encoding="utf-8"):
        path.write_text(text, encoding="utf-8")
        print(f"build_knowledge_base: derived columns of {path.name} rewritten")
    problems = knowledge_base_problems(args.data)
    for problem in problems:
        print(f"build_knowledge_base: {problem}", file=sys.stderr)
    if missing:
        print(f"build_knowledge_base: no compartment / lineage derivable for {missing}",
              file=sys.stderr)
    print(summary(args.data))
    return 1 if problems or missing else 0


if __name__ == "__main__":
    sys.exit(main())

"""Build the Cell Ontology and tissue tables the knowledge base rests on (build time only).

Reads the Cell Ontology (CL) and UBERON JSON files shipped in the ``cellxgene-ontology-guide``
wheel on PyPI and writes, deterministically (same wheel, same bytes):

- ``bridge/engines/data/cell_ontology.tsv.gz``: one row per non-obsolete CL term: ``id``,
  ``name`` (the CL label), ``synonyms`` and ``parents`` (direct CL parents), ``|``-separated.
- ``bridge/engines/data/uberon_tissues.tsv.gz``: every non-obsolete UBERON term that is, or
  is a part or subtype of, a tissue of the vocabulary ``bridge/engines/data/tissues.tsv``:
  ``uberon_id``, ``name``, ``synonyms``, ``tissues`` (vocabulary names, closest first).

It then runs ``tools/build_knowledge_base.py`` (derive compartment / lineage of every type
from CL and check every knowledge base file).

Usage, from the repository root (the package does not depend on the wheel at run time)::

    python tools/build_cell_ontology.py                      # pip download the pinned wheel
    python tools/build_cell_ontology.py --wheel path/to/cellxgene_ontology_guide-*.whl

Needs ``zstandard`` (``pip install zstandard``) to read the wheel's ``.json.zst`` files.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import logging
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bridge" / "engines" / "data"
WHEEL_PROJECT = "cellxgene-ontology-guide"
WHEEL_VERSION = "1.11.1"  # pinned: a rebuild from the same wheel gives the same bytes

logger = logging.getLogger("build_cell_ontology")


def fetch_wheel(version: str, into: Path) -> Path:
    """``pip download --no-deps`` the wheel into ``into`` and return its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--dest", str(into), f"{WHEEL_PROJECT}=={version}"]
    logger.info("running %s", " ".join(command))
    subprocess.run(command, check=True)
    wheels = sorted(into.glob("cellxgene_ontology_guide-*.whl"))
    if not wheels:
        sys.exit(f"pip download left no cellxgene_ontology_guide wheel in {into}")
    return wheels[-1]


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def read_ontology(wheel: zipfile.ZipFile, prefix: str) -> tuple[str, dict[str, Any]]:
    """The newest ``<prefix>-ontology-<version>.json.zst`` in the wheel: (version, terms)."""
    try:
        import zstandard
    except ImportError:
        sys.exit("zstandard is needed to read the wheel's ontologies: pip install zstandard")
    pattern = re.compile(rf"cellxgene_ontology_guide/data/{prefix}-ontology-(.+)\.json\.zst$")
    found = {m.group(1): name for name in wheel.namelist() if (m := pattern.match(name))}
    if not found:
        sys.exit(f"the wheel ships no {prefix} ontology (looked for {pattern.pattern})")
    version = max(found, key=_version_key)
    with wheel.open(found[version]) as raw:
        terms = json.loads(zstandard.ZstdDecompressor().stream_reader(raw).read())
    logger.info("%s %s: %d terms", prefix, version, len(terms))
    return version, terms


def _clean(text: str) -> str:
    return " ".join(text.replace("|", "/").split())


def direct_parents(term: dict[str, Any], prefix: str, live: set[str]) -> list[str]:
    """Ancestors at distance 1 (the guide's BFS over is_a, and part_of where it lands in the
    same ontology), restricted to live terms of the ontology."""
    return sorted(a for a, distance in term["ancestors"].items()
                  if distance == 1 and a.startswith(prefix + ":") and a in live)


def write_table(path: Path, header: Iterable[str], columns: list[str],
                rows: Iterable[list[str]]) -> int:
    """A gzip TSV with ``#`` comment lines, fixed mtime (so rebuilds are byte-identical)."""
    buffer = io.StringIO()
    for line in header:
        buffer.write(f"# {line}\n")
    buffer.write("\t".join(columns) + "\n")
    n = 0
    for row in rows:
        buffer.write("\t".join(row) + "\n")
        n += 1
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                filename="", compresslevel=9) as handle:
        handle.write(buffer.getvalue().encode("utf-8"))
    logger.info("wrote %s (%d rows)", path.relative_to(ROOT), n)
    return n


def build_cell_ontology(terms: dict[str, Any], provenance: str, out: Path) -> None:
    live = {k for k, v in terms.items() if not v["deprecated"]}
    rows = ([k, _clean(terms[k]["label"]),
             "|".join(sorted({_clean(s) for s in terms[k].get("synonyms", [])})),
             "|".join(direct_parents(terms[k], "CL", live))]
            for k in sorted(live))
    header = [provenance,
              "one row per non-obsolete CL term; synonyms and parents are '|'-separated;",
              "parents are the direct CL superclasses (distance 1 in the guide's ancestors).",
              "Generated by tools/build_cell_ontology.py: do not edit by hand."]
    write_table(out, header, ["id", "name", "synonyms", "parents"], rows)


def read_tissue_vocabulary(path: Path) -> dict[str, str]:
    """UBERON id -> vocabulary tissue name, from the hand-curated ``tissues.tsv``."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        lines = [line for line in handle if not line.startswith("#")]
    columns = lines[0].rstrip("\n").split("\t")
    for line in lines[1:]:
        row = dict(zip(columns, line.rstrip("\n").split("\t"), strict=True))
        out[row["uberon_id"]] = row["name"]
    return out


def build_uberon_tissues(terms: dict[str, Any], vocabulary: dict[str, str], provenance: str,
                         out: Path) -> None:
    live = {k for k, v in terms.items() if not v["deprecated"]}
    missing = sorted(set(vocabulary) - live)
    if missing:
        sys.exit(f"tissues.tsv names UBERON ids that are not live UBERON terms: {missing}")
    rows = []
    for term_id in sorted(live):
        term = terms[term_id]
        # self first, then ancestors (is_a and part_of) by distance: closest tissue first
        chain = [(0, term_id), *sorted((d, a) for a, d in term["ancestors"].items())]
        tissues = list(dict.fromkeys(vocabulary[a] for _, a in chain if a in vocabulary))
        if tissues:
            rows.append([term_id, _clean(term["label"]),
                         "|".join(sorted({_clean(s) for s in term.get("synonyms", [])})),
                         ";".join(tissues)])
    header = [provenance,
              "UBERON terms that are, or are part or subtype of, a tissue of tissues.tsv;",
              "tissues: vocabulary names, closest first (is_a and part_of ancestry).",
              "Generated by tools/build_cell_ontology.py: do not edit by hand."]
    write_table(out, header, ["uberon_id", "name", "synonyms", "tissues"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help="a downloaded cellxgene_ontology_guide wheel")
    parser.add_argument("--version", default=WHEEL_VERSION,
                        help=f"wheel version to download (default {WHEEL_VERSION})")
    parser.add_argument("--out", type=Path, default=DATA, help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        wheel_path = args.wheel or fetch_wheel(args.version, Path(tmp))
        wheel_name = wheel_path.name
        with zipfile.ZipFile(wheel_path) as wheel:
            cl_version, cl = read_ontology(wheel, "CL")
            uberon_version, uberon = read_ontology(wheel, "UBERON")
    build_cell_ontology(cl, f"Cell Ontology {cl_version}, from the PyPI wheel {wheel_name}",
                        args.out / "cell_ontology.tsv.gz")
    vocabulary = read_tissue_vocabulary(args.out / "tissues.tsv")
    build_uberon_tissues(uberon, vocabulary,
                         f"UBERON {uberon_version}, from the PyPI wheel {wheel_name}",
                         args.out / "uberon_tissues.tsv.gz")
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_knowledge_base.py"),
                    "--data", str(args.out)], check=True)


if __name__ == "__main__":
    main()

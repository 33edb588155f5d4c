"""Build the mouse gene tables in ``bridge/genes/data`` (build time only; deterministic).

Inputs:

- the human-mouse gene pairs of Ensembl 105 shipped in the ``celltypist`` wheel on PyPI
  (``celltypist/data/samples/Ensembl105_Human2Mouse_Genes.csv``: ``HUMAN,mouse`` per line, an
  empty side where a gene has no orthologue);
- the 10x Genomics mouse reference gene list (mm10-2020-A, Ensembl 98), ``ENSMUSG<TAB>symbol``
  (``../shared/data/genes/mouse_ensembl_symbols.tsv.gz`` beside the repository by default);
- the package's current human symbols and aliases (``symbols_human.txt.gz``,
  ``aliases_human.tsv.gz``, ``aliases_curated.tsv.gz``).

Outputs:

- ``ensembl_mouse.tsv.gz``: mouse Ensembl gene id -> mouse symbol.
- ``orthologs_mouse_human.tsv.gz``: mouse symbol -> human symbol, with how it was resolved.
  An empty human symbol means "known mouse gene without a usable human orthologue", so the
  mapper leaves it alone instead of upper-casing it.

How a mouse symbol is resolved (the mapper applies the curated ``mouse_human.tsv.gz``
exceptions before this table):

``one2one``
    exactly one human partner.
``many2one``
    exactly one human partner, which other mouse genes share (``Ins1`` and ``Ins2`` ->
    ``INS``); every such mouse gene maps to it and the mapper keeps the first column that
    claims it.
``same_symbol``
    several human partners, one of which is the upper-cased mouse symbol (``Tpsb2`` ->
    ``TPSB2``, not ``TPSAB1``).
``sole_partner``
    several human partners, exactly one of which has this mouse gene as its only partner.
``ambiguous``
    several human partners and no rule above picks one: not mapped (empty human symbol).
``unpaired_same_symbol``
    Ensembl lists the mouse gene without a partner, and the upper-cased symbol is (or is an
    alias of) a current human symbol that has no mouse partner either (``Csnk2b`` ->
    ``CSNK2B``, ``Gba`` -> ``GBA1``).
``none``
    Ensembl lists the mouse gene without a human orthologue: not mapped.

Human symbols from Ensembl 105 are brought to the package's current symbols through its
alias tables; a partner that is still not a current symbol is dropped.

Usage, from the repository root::

    python tools/build_gene_tables.py                       # pip download celltypist==1.7.1
    python tools/build_gene_tables.py --wheel path/to/celltypist-1.7.1-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import logging
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENES = ROOT / "bridge" / "genes" / "data"
CELLTYPIST_VERSION = "1.7.1"
PAIRS_MEMBER = "celltypist/data/samples/Ensembl105_Human2Mouse_Genes.csv"
# ../shared/data beside the checkout (a git worktree one level deeper looks one level up)
MOUSE_IDS = next((p / "shared" / "data" / "genes" / "mouse_ensembl_symbols.tsv.gz"
                  for p in (ROOT.parent, ROOT.parent.parent)
                  if (p / "shared" / "data").is_dir()),
                 ROOT.parent / "shared" / "data" / "genes" / "mouse_ensembl_symbols.tsv.gz")

logger = logging.getLogger("build_gene_tables")


def fetch_wheel(into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--dest", str(into), f"celltypist=={CELLTYPIST_VERSION}"]
    logger.info("running %s", " ".join(command))
    subprocess.run(command, check=True)
    return next(into.glob("celltypist-*.whl"))


def read_gzip_table(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("#"):
                continue
            key, _, value = line.rstrip("\n").partition("\t")
            if key and value:
                out.setdefault(key, value)
    return out


def current_human_symbols() -> tuple[set[str], dict[str, str]]:
    with gzip.open(GENES / "symbols_human.txt.gz", "rt", encoding="utf-8") as handle:
        symbols = {line.strip() for line in handle if not line.startswith("#")}
    aliases = {**read_gzip_table(GENES / "aliases_human.tsv.gz"),
               **read_gzip_table(GENES / "aliases_curated.tsv.gz")}
    return symbols, aliases


def read_pairs(wheel_path: Path) -> list[tuple[str, str]]:
    with zipfile.ZipFile(wheel_path) as wheel, wheel.open(PAIRS_MEMBER) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8")
        return [(row[0].strip(), row[1].strip()) for row in csv.reader(text) if len(row) == 2]


def resolve(pairs: list[tuple[str, str]], symbols: set[str], aliases: dict[str, str]
            ) -> dict[str, tuple[str, str]]:
    """mouse symbol -> (human symbol or "", resolution)."""
    def current(human: str) -> str | None:
        if human in symbols:
            return human
        alias = aliases.get(human)
        return alias if alias in symbols else None

    partners: dict[str, set[str]] = defaultdict(set)  # mouse -> human
    mouse_of: dict[str, set[str]] = defaultdict(set)  # human -> mouse
    listed: set[str] = set()
    for human, mouse in pairs:
        if not mouse:
            continue
        listed.add(mouse)
        symbol = current(human) if human else None
        if symbol:
            partners[mouse].add(symbol)
            mouse_of[symbol].add(mouse)
    out: dict[str, tuple[str, str]] = {}
    for mouse in sorted(listed):
        humans = sorted(partners.get(mouse, ()))
        if not humans:
            # Ensembl lists some genes on both sides without pairing them (Csnk2b and CSNK2B):
            # the same name, with neither side paired to anything else, is the orthologue.
            same = current(mouse.upper())
            if same and not mouse_of.get(same):
                out[mouse] = (same, "unpaired_same_symbol")
            else:
                out[mouse] = ("", "none")
        elif len(humans) == 1:
            kind = "one2one" if len(mouse_of[humans[0]]) == 1 else "many2one"
            out[mouse] = (humans[0], kind)
        elif mouse.upper() in humans:
            out[mouse] = (mouse.upper(), "same_symbol")
        else:
            sole = [h for h in humans if mouse_of[h] == {mouse}]
            out[mouse] = (sole[0], "sole_partner") if len(sole) == 1 else ("", "ambiguous")
    return out


def write_gzip(path: Path, header: list[str], rows: list[list[str]]) -> None:
    text = "".join(f"# {line}\n" for line in header)
    text += "".join("\t".join(row) + "\n" for row in rows)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="",
                                                compresslevel=9) as handle:
        handle.write(text.encode("utf-8"))
    logger.info("wrote %s (%d rows)", path.relative_to(ROOT), len(rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help=f"a celltypist {CELLTYPIST_VERSION} wheel")
    parser.add_argument("--mouse-ids", type=Path, default=MOUSE_IDS,
                        help="ENSMUSG<TAB>symbol list (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=GENES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not args.mouse_ids.exists():
        sys.exit(f"{args.mouse_ids} not found: pass --mouse-ids with the 10x mouse gene list")
    with tempfile.TemporaryDirectory() as tmp:
        wheel_path = args.wheel or fetch_wheel(Path(tmp))
        pairs = read_pairs(wheel_path)
    symbols, aliases = current_human_symbols()
    table = resolve(pairs, symbols, aliases)
    counts: dict[str, int] = defaultdict(int)
    for _, kind in table.values():
        counts[kind] += 1
    logger.info("orthologue resolutions: %s", dict(sorted(counts.items())))
    write_gzip(args.out / "orthologs_mouse_human.tsv.gz",
               [f"mouse symbol -> human symbol, Ensembl 105 pairs from the PyPI wheel "
                f"celltypist-{CELLTYPIST_VERSION} ({PAIRS_MEMBER});",
                "human symbols brought to org.Hs.eg.db 3.16 current symbols; empty = not mapped;",
                "resolution: one2one, many2one, same_symbol, sole_partner,",
                "unpaired_same_symbol, ambiguous, none",
                "(see tools/build_gene_tables.py). Generated: do not edit by hand.",
                "columns: mouse_symbol, human_symbol, resolution"],
               [[mouse, human, kind] for mouse, (human, kind) in table.items()])
    ids = read_gzip_table(args.mouse_ids)
    write_gzip(args.out / "ensembl_mouse.tsv.gz",
               ["mouse Ensembl gene id -> symbol; the 10x Genomics mm10-2020-A gene list "
                "(Ensembl 98 / GENCODE vM23).",
                "Generated by tools/build_gene_tables.py: do not edit by hand."],
               [[gene_id, ids[gene_id]] for gene_id in sorted(ids)])


if __name__ == "__main__":
    main()

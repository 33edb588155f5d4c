"""Gene identifiers: detection, mapping to human symbols, the genes-found check."""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from bridge import GeneIdError
from bridge.genes import check_genes_found, detect_gene_id_kind, map_to_human_symbols
from bridge.genes._map import human_aliases, human_symbols, load_table

DATA = Path(str(resources.files("bridge.genes") / "data"))


def test_tables_are_shipped_compact_and_documented() -> None:
    for name in ("ensembl_human.tsv.gz", "aliases_human.tsv.gz", "symbols_human.txt.gz",
                 "mouse_human.tsv.gz", "aliases_curated.tsv.gz"):
        path = DATA / name
        assert path.exists(), name
        assert path.stat().st_size < 1_000_000, name
        with gzip.open(path, "rt") as handle:
            assert handle.readline().startswith("#"), f"{name} has no provenance header"
    assert (DATA / "README.md").exists() and (DATA / "build_tables.R").exists()
    assert len(load_table("ensembl_human")) > 30_000
    assert "CD3E" in human_symbols()


@pytest.mark.parametrize(("genes", "kind"), [
    (["CD3E", "MS4A1", "NKG7", "LYZ", "MT-CO1"], "symbols_human"),
    (["Cd3e", "Ms4a1", "Nkg7", "Lyz2", "Ptprc"], "symbols_mouse"),
    (["ENSG00000198851", "ENSG00000156738.18", "ENSG00000105374"], "ensembl_human"),
    (["ENSMUSG00000032093", "ENSMUSG00000024673"], "ensembl_mouse"),
    (["1", "2", "3", "4"], "other"),
])
def test_detect_gene_id_kind(genes: list[str], kind: str) -> None:
    assert detect_gene_id_kind(genes) == kind


def test_human_ensembl_ids_map_to_symbols_with_or_without_version() -> None:
    mapping = map_to_human_symbols(["ENSG00000010610", "ENSG00000153563.15", "ENSG00000172116",
                                    "ENSG00000198804", "ENSG00000000000"])
    assert mapping.kind == "ensembl_human"
    assert mapping.genes.tolist() == ["CD4", "CD8A", "CD8B", "MT-CO1", "ENSG00000000000"]
    assert mapping.n_mapped == 4


def test_mitochondrial_genes_keep_the_hgnc_form() -> None:
    table = load_table("ensembl_human")
    mito = sorted(v for v in table.values() if v.startswith("MT-"))
    assert {"MT-CO1", "MT-ND1", "MT-CYB", "MT-ATP6"} <= set(mito)
    assert "COX1" not in table.values()


def test_mouse_symbols_map_to_human_orthologues() -> None:
    genes = ["Cd3e", "Cd8b1", "Lyz2", "Ms4a1", "H2-Ab1", "Hbb-bs", "Gm12345", "Ptprc", "Nkg7"]
    mapping = map_to_human_symbols(genes)
    assert mapping.kind == "symbols_mouse"
    assert mapping.genes.tolist() == ["CD3E", "CD8B", "LYZ", "MS4A1", "HLA-DQB1", "HBB",
                                      "Gm12345", "PTPRC", "NKG7"]


def test_outdated_human_symbols_map_to_current_ones() -> None:
    mapping = map_to_human_symbols(["CD3E", "RP11-291B21.2", "CD8B", "MS4A1"])
    assert mapping.genes.tolist() == ["CD3E", "LINC02446", "CD8B", "MS4A1"]
    aliases = human_aliases()
    assert all(alias not in human_symbols() for alias in list(aliases)[:1000])


def test_mapping_never_merges_columns() -> None:
    table = load_table("ensembl_human")
    by_symbol: dict[str, list[str]] = {}
    for ensembl, symbol in table.items():
        by_symbol.setdefault(symbol, []).append(ensembl)
    twins = next(ids for ids in by_symbol.values() if len(ids) > 1)[:2]
    cd4 = by_symbol["CD4"][0]
    # Two ids of one symbol, and an id whose symbol is already a column of the matrix.
    genes = [*twins, cd4, "CD4", "ENSG00000153563", "ENSG00000172116", "ENSG00000105374"]
    mapping = map_to_human_symbols(genes)
    out = mapping.genes.tolist()
    assert len(set(out)) == len(genes)
    assert out[0] == table[twins[0]] and out[1] == twins[1]  # the second keeps its id
    assert out[2] == cd4 and out[3] == "CD4"  # the existing CD4 column keeps its name
    assert out[4:6] == ["CD8A", "CD8B"]


def test_check_genes_found_refuses_with_advice() -> None:
    needed = ["CD3E", "MS4A1", "NKG7", "LYZ", "CD14", "GNLY", "PPBP", "HBB", "CD8A", "CD4"]
    assert check_genes_found(needed, [*needed, "X"], kind="symbols_human",
                             min_fraction=0.5) == 1.0
    ids = np.array([f"ENSMUSG{i:011d}" for i in range(100)], dtype=object)
    with pytest.raises(GeneIdError) as info:
        check_genes_found(needed, ids, kind="ensembl_mouse", min_fraction=0.1)
    message = str(info.value)
    assert "only 0 of the 10 genes" in message
    assert "ensembl_mouse" in message and "ENSMUSG" in message
    assert "gene symbols" in message  # what to do


def test_check_genes_found_warns_when_low() -> None:
    needed = [f"G{i}" for i in range(10)]
    with pytest.warns(UserWarning, match="20% of the 10 genes"):
        assert check_genes_found(needed, ["G1", "G2"], kind="symbols_human",
                                 min_fraction=0.1) == pytest.approx(0.2)


# -- mouse genes: Ensembl ids and orthologues (tables built by tools/build_gene_tables.py) ----
RESOLUTIONS = {"one2one", "many2one", "same_symbol", "sole_partner", "unpaired_same_symbol",
               "ambiguous", "none"}


def _ortholog_rows() -> list[list[str]]:
    with gzip.open(DATA / "orthologs_mouse_human.tsv.gz", "rt") as handle:
        return [line.rstrip("\n").split("\t") for line in handle if not line.startswith("#")]


def test_mouse_tables_are_shipped_compact_and_documented() -> None:
    readme = (DATA / "README.md").read_text()
    for name, origin in (("ensembl_mouse.tsv.gz", "10x Genomics"),
                         ("orthologs_mouse_human.tsv.gz", "celltypist")):
        path = DATA / name
        assert path.stat().st_size < 1_000_000, name
        with gzip.open(path, "rt") as handle:
            assert origin in handle.readline(), f"{name} has no provenance header"
        assert name in readme
    ids = load_table("ensembl_mouse")
    assert len(ids) > 30_000
    assert all(key.startswith("ENSMUSG") for key in ids)
    assert ids["ENSMUSG00000032093"] == "Cd3e"


def test_orthologue_table_targets_are_current_human_symbols() -> None:
    rows = _ortholog_rows()
    assert len(rows) > 15_000
    current = human_symbols()
    for mouse, human, resolution in rows:
        assert resolution in RESOLUTIONS, (mouse, resolution)
        assert (human == "") == (resolution in ("ambiguous", "none")), (mouse, human, resolution)
        assert not human or human in current, (mouse, human)
    kinds = {resolution for _, _, resolution in rows}
    assert {"one2one", "many2one", "same_symbol", "ambiguous", "none"} <= kinds


@pytest.mark.parametrize(("mouse", "human"), [
    ("Cd209a", "CD209"),   # one-to-one by Ensembl, not by name (CD209A is no human gene)
    ("Klrb1c", "KLRB1"),   # NK1.1: many mouse Klrb1 genes, one human KLRB1
    ("Tpsb2", "TPSB2"),    # two human partners (TPSAB1, TPSB2): the same name wins
    ("Csnk2b", "CSNK2B"),  # listed unpaired on both sides: the same name
    ("Cd8b1", "CD8B"),     # a curated exception overrides the table
    ("Fcgr3", "FCGR3A"),   # curated exception
])
def test_mouse_symbols_map_through_the_orthologue_table(mouse: str, human: str) -> None:
    mapping = map_to_human_symbols([mouse, "Ptprc", "Cd3e"])
    assert mapping.kind == "symbols_mouse"
    assert mapping.genes.tolist() == [human, "PTPRC", "CD3E"]


def test_mouse_genes_without_a_usable_orthologue_keep_their_symbol() -> None:
    rows = {mouse: (human, resolution) for mouse, human, resolution in _ortholog_rows()}
    assert rows["Siglecf"] == ("", "ambiguous")  # SIGLEC6 / CD33 / ...: no single partner
    # A gene Ensembl calls orphan is not upper-cased into an unrelated human gene.
    orphan = next(m for m, (h, r) in rows.items()
                  if r == "none" and m.upper() in human_symbols())
    genes = ["Siglecf", "Ly6g", "Mcpt8", orphan, "Cd3e"]
    assert map_to_human_symbols(genes).genes.tolist() == [*genes[:4], "CD3E"]


def test_mouse_ensembl_ids_map_to_human_symbols() -> None:
    ids = load_table("ensembl_mouse")
    by_symbol = {symbol: gene_id for gene_id, symbol in ids.items()}
    genes = [by_symbol["Cd3e"] + ".5", by_symbol["Cd8b1"], by_symbol["Cd209a"],
             by_symbol["Ly6g"], by_symbol["Mcpt8"], "ENSMUSG00000000000"]
    mapping = map_to_human_symbols(genes)
    assert mapping.kind == "ensembl_mouse"
    # Mouse-only genes keep their mouse symbol (how mouse-only markers are named); an id the
    # table does not know keeps the id.
    assert mapping.genes.tolist() == ["CD3E", "CD8B", "CD209", "Ly6g", "Mcpt8",
                                      "ENSMUSG00000000000"]
    assert mapping.n_mapped == 5

"""The cell-type knowledge base: every file well formed, every id and name from the Cell
Ontology, compartments and lineages derivable from CL, genes current, counts as promised."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from bridge import BridgeError
from bridge.engines._knowledge_base import (
    CELL_MARKER_COLUMNS,
    COMPARTMENTS,
    MIN_POSITIVE_MARKERS,
    data_path,
    derive_levels,
    knowledge_base_problems,
    load_cell_markers,
    load_cell_ontology,
    load_cell_types,
    load_level_rules,
    load_tissues,
    read_table,
)
from bridge.genes._map import _mouse_to_human, human_symbols, load_table, mouse_orthologs

ROOT = Path(__file__).resolve().parents[1]
DATA = data_path("")
CL_ID = re.compile(r"^CL:\d{7}$")
SPECIES = {"both", "human", "mouse"}


@pytest.fixture(scope="module")
def ontology():
    return load_cell_ontology()


@pytest.fixture(scope="module")
def types():
    return load_cell_types()


@pytest.fixture(scope="module")
def markers():
    return load_cell_markers()


@pytest.fixture(scope="module")
def tissues():
    return load_tissues()


def _by_name(types):
    return {t["name"]: t["ontology_id"] for t in types}


# -- the generated ontology tables -----------------------------------------------------------
def test_cell_ontology_table_is_complete_and_provenanced(ontology) -> None:
    with gzip.open(DATA / "cell_ontology.tsv.gz", "rt") as handle:
        header = handle.readline()
    assert "Cell Ontology" in header and "cellxgene_ontology_guide" in header
    assert ontology.version.startswith("Cell Ontology v")
    assert len(ontology.terms) > 3000
    assert all(CL_ID.match(i) for i in ontology.terms)
    assert ontology.name("CL:0000236") == "B cell"
    assert "B lymphocyte" in ontology.terms["CL:0000236"].synonyms
    for term in ontology.terms.values():
        assert all(p in ontology.terms for p in term.parents), term.id
    # The hierarchy is a DAG rooted at "cell".
    assert all(i not in ontology.ancestors(i) for i in ontology.terms)
    assert ontology.is_a("CL:0000625", "CL:0000084")  # CD8 alpha-beta T cell is a T cell
    assert (ROOT / "tools" / "build_cell_ontology.py").exists()


def test_uberon_table_places_parts_in_their_tissue(tissues) -> None:
    rows = read_table(DATA / "uberon_tissues.tsv.gz", ("uberon_id", "name", "synonyms", "tissues"))
    first = {r["uberon_id"]: r["tissues"].split(";")[0] for r in rows}
    for t in tissues:
        assert first[t["uberon_id"]] == t["name"], t["name"]
    assert first["UBERON:0000006"] == "pancreas"  # islet of Langerhans
    assert first["UBERON:0001954"] == "brain"  # Ammon's horn
    assert first["UBERON:0000044"] == "ganglion"  # dorsal root ganglion
    assert first["UBERON:0000966"] == "eye"  # retina


# -- the tissue vocabulary -------------------------------------------------------------------
def test_tissue_vocabulary_is_closed_and_resolves_common_words(tissues) -> None:
    assert len(tissues) >= 30
    names = [t["name"] for t in tissues]
    assert len(set(names)) == len(names)
    word_to_tissue: dict[str, str] = {}
    for t in tissues:
        assert re.match(r"^UBERON:\d{7}$", t["uberon_id"]) and t["system"], t
        for word in [t["name"], *filter(None, t["synonyms"].split("|"))]:
            assert word_to_tissue.setdefault(word.lower(), t["name"]) == t["name"], word
    expected = {"pbmc": "blood", "pancreatic islet": "pancreas", "islet": "pancreas",
                "cortex": "brain", "hippocampus": "brain", "drg": "ganglion",
                "dorsal root ganglion": "ganglion", "colon": "large intestine",
                "oesophagus": "esophagus", "mammary gland": "breast", "retina": "eye"}
    for word, tissue in expected.items():
        assert word_to_tissue[word] == tissue, word


# -- cell types --------------------------------------------------------------------------------
def test_every_cell_type_is_a_cl_term_named_by_its_label(types, ontology, tissues) -> None:
    ids = [t["ontology_id"] for t in types]
    assert len(set(ids)) == len(ids)
    tissue_names = {t["name"] for t in tissues}
    for t in types:
        assert CL_ID.match(t["ontology_id"]), t
        assert t["ontology_id"] in ontology, t["ontology_id"]
        assert t["name"] == ontology.name(t["ontology_id"]), t["ontology_id"]
        assert t["species"] in SPECIES, t
        assert -1.0 <= float(t["prior"]) <= 1.0, t
        listed = t["tissues"].split(";")
        assert listed == ["any"] or set(listed) <= tissue_names, t


def test_compartment_and_lineage_are_derived_from_cl(types, ontology) -> None:
    rules = load_level_rules()
    for rule in rules:
        assert rule.ontology_id in ontology and ontology.name(rule.ontology_id) == rule.name
        assert rule.compartment in COMPARTMENTS
    compartment_nodes = defaultdict(set)
    for rule in rules:
        if rule.level == "compartment":
            compartment_nodes[rule.compartment].add(rule.ontology_id)
    for t in types:
        term = t["ontology_id"]
        assert derive_levels(ontology, term, rules) == (t["compartment"], t["lineage_id"]), term
        assert t["lineage"] == ontology.name(t["lineage_id"])
        # Independent of the rule order: the lineage node is the type or a CL ancestor, and
        # so is a node that names the compartment.
        assert ontology.is_a(term, t["lineage_id"]), term
        assert any(ontology.is_a(term, node) for node in compartment_nodes[t["compartment"]])


def test_counts_and_coverage(types, markers) -> None:
    assert len(types) >= 250
    used = {x for t in types for x in t["tissues"].split(";")} - {"any"}
    assert len(used) >= 30
    assert set(COMPARTMENTS) <= {t["compartment"] for t in types}
    positives = Counter(m["ontology_id"] for m in markers if m["direction"] == "+")
    assert min(positives[t["ontology_id"]] for t in types) >= MIN_POSITIVE_MARKERS
    # typically 6-15 positive markers: enough that two detected ones are a reasonable bar
    counts = sorted(positives[t["ontology_id"]] for t in types)
    assert counts[len(counts) // 2] >= 6


def test_generic_upper_nodes_exist_for_low_depth_calls(types) -> None:
    names = set(_by_name(types))
    for generic in ("hematopoietic cell", "myeloid leukocyte", "T cell", "B cell",
                    "innate lymphoid cell", "dendritic cell", "epithelial cell",
                    "endothelial cell", "fibroblast", "smooth muscle cell", "pericyte",
                    "neuron", "glial cell", "striated muscle cell", "germ cell",
                    "trophoblast cell", "endocrine cell", "erythroid lineage cell"):
        assert generic in names, generic


# -- markers -----------------------------------------------------------------------------------
def test_every_marker_row_is_well_formed(markers, types) -> None:
    names = {t["ontology_id"]: t["name"] for t in types}
    seen: Counter[tuple[str, str, str]] = Counter()
    directions: dict[tuple[str, str], set[str]] = defaultdict(set)
    for m in markers:
        assert set(m) == {"_line", *CELL_MARKER_COLUMNS}
        assert m["cell_type"] == names[m["ontology_id"]], m
        assert m["direction"] in ("+", "-"), m
        assert 0.0 < float(m["weight"]) <= 1.0, m
        assert m["species"] in SPECIES, m
        assert re.search(r"(19|20)\d\d", m["source"]), f"no citation year: {m}"
        seen[(m["ontology_id"], m["gene"], m["direction"])] += 1
        directions[(m["ontology_id"], m["gene"])].add(m["direction"])
    assert [k for k, n in seen.items() if n > 1] == []
    assert [k for k, d in directions.items() if len(d) > 1] == []


def test_every_gene_is_current_or_a_known_mouse_gene(markers) -> None:
    current = human_symbols()
    mouse_known = set(load_table("ensembl_mouse").values()) | set(mouse_orthologs())
    for m in markers:
        gene = m["gene"]
        if gene in current:
            continue
        # Only a mouse-only row may name a mouse gene, and only one that mapped mouse data
        # keeps under its mouse name (no usable human orthologue).
        assert m["species"] == "mouse", f"{gene} is not a current human symbol ({m['_line']})"
        assert gene in mouse_known and _mouse_to_human(gene) is None, gene


def test_priors_carry_the_blood_biology_of_the_old_database(types) -> None:
    prior = {t["name"]: float(t["prior"]) for t in types}
    # CD4 transcripts drop out: a T cell without CD8 leans CD4; rare look-alikes need evidence
    assert prior["CD4-positive, alpha-beta T cell"] > 0
    for rare in ("mucosal-associated invariant T cell", "gamma-delta T cell", "plasma cell",
                 "plasmacytoid dendritic cell"):
        assert prior[rare] < 0, rare
    assert Counter(p == 0 for p in prior.values())[True] > 0.8 * len(prior)


def test_species_flags_follow_biology(markers) -> None:
    species = {(m["cell_type"], m["gene"]): m["species"] for m in markers}
    assert species[("neutrophil", "Ly6g")] == "mouse"
    assert species[("basophil", "Mcpt8")] == "mouse"
    assert species[("natural killer cell", "KIR2DL1")] == "human"
    assert species[("neutrophil", "FCGR3B")] == "human"
    assert species[("plasmacytoid dendritic cell", "CLEC4C")] == "human"
    assert species[("CD8-positive, alpha-beta T cell", "CD8A")] == "both"


@pytest.mark.parametrize(("cell_type", "sibling"), [
    ("pancreatic ductal cell", "pancreatic acinar cell"),
    ("pancreatic ductal cell", "hepatocyte"),
    ("pancreatic acinar cell", "pancreatic ductal cell"),
    ("cholangiocyte", "hepatocyte"),
    ("pancreatic A cell", "type B pancreatic cell"),
    ("type B pancreatic cell", "pancreatic A cell"),
    ("pancreatic D cell", "type B pancreatic cell"),
    ("pancreatic PP cell", "pancreatic A cell"),
    ("pancreatic epsilon cell", "type B pancreatic cell"),
    ("oligodendrocyte", "Schwann cell"),
    ("Schwann cell", "oligodendrocyte"),
    ("oligodendrocyte", "oligodendrocyte precursor cell"),
    ("astrocyte", "Bergmann glial cell"),
    ("mast cell", "basophil"),
    ("basophil", "mast cell"),
    ("CD141-positive myeloid dendritic cell", "CD1c-positive myeloid dendritic cell"),
    ("CD1c-positive myeloid dendritic cell", "classical monocyte"),
    ("plasmacytoid dendritic cell", "classical monocyte"),
    ("classical monocyte", "macrophage"),
    ("group 2 innate lymphoid cell", "natural killer cell"),
    ("natural killer cell", "T cell"),
    ("basal cell of epidermis", "spinous cell of epidermis"),
    ("dorsal root ganglion RET neuron", "dorsal root ganglion CGRP neuron"),
    ("dorsal root ganglion CGRP neuron", "dorsal root ganglion RET neuron"),
    ("dorsal root ganglion Piezo2 neuron", "dorsal root ganglion RET neuron"),
    ("pvalb GABAergic interneuron", "sst GABAergic interneuron"),
    ("VIP GABAergic interneuron", "sst GABAergic interneuron"),
    ("erythrocyte", "erythroblast"),
    ("vascular associated smooth muscle cell", "pericyte"),
    ("myofibroblast cell", "vascular associated smooth muscle cell"),
    ("endothelial cell of artery", "vein endothelial cell"),
    ("vein endothelial cell", "endothelial cell of artery"),
    ("kidney collecting duct principal cell", "kidney collecting duct intercalated cell"),
])
def test_confusable_siblings_are_separated_by_negative_markers(markers, cell_type, sibling
                                                               ) -> None:
    """A type commonly confused with a sibling names, as a negative marker, a gene that is a
    positive marker of the sibling."""
    negative = {m["gene"] for m in markers if m["cell_type"] == cell_type and m["direction"] == "-"}
    positive = {m["gene"] for m in markers if m["cell_type"] == sibling and m["direction"] == "+"}
    assert negative & positive, f"nothing in {cell_type} argues against {sibling}"


# A defining marker (weight 1) confirms a type abroad and lets its calls vote for a tissue, so
# it must name the type in every tissue: one that is also a strong marker of another tissue's
# type of the same compartment is at most 0.7.  These keep weight 1 on purpose: the skin's own
# keratins (its basal / spinous balance rests on them), CFTR of pancreatic ducts (the votes
# that find a pancreas), and pairs whose tissues never meet in one sample or whose cells are
# one lineage in two places (thymocytes and B-cell precursors, megakaryocytes and platelets).
SHARED_DEFINING_KEPT = {
    ("keratinocyte", "KRT5"), ("keratinocyte", "KRT14"), ("basal cell of epidermis", "KRT5"),
    ("basal cell of epidermis", "KRT14"), ("pancreatic ductal cell", "CFTR"),
    ("double-positive, alpha-beta thymocyte", "RAG1"),
    ("double-positive, alpha-beta thymocyte", "RAG2"), ("Langerhans cell", "CD1A"),
    ("megakaryocyte", "ITGA2B"), ("platelet", "GP9"), ("platelet", "PF4"), ("platelet", "PPBP"),
    ("mesangial cell", "ITGA8"), ("slow muscle cell", "MYH7"),
    ("sncg GABAergic interneuron", "SNCG"),
}


def test_defining_markers_name_their_type_in_every_tissue(markers, types) -> None:
    by_id = {t["ontology_id"]: t for t in types}
    strong: dict[str, list[str]] = defaultdict(list)
    for m in markers:
        if m["direction"] == "+" and float(m["weight"]) >= 0.7:
            strong[m["gene"]].append(m["ontology_id"])
    ontology = load_cell_ontology()

    def related(a: str, b: str) -> bool:
        return a in ontology.ancestors(b) or b in ontology.ancestors(a)

    shared = set()
    for m in markers:
        kind = by_id[m["ontology_id"]]
        where = set(kind["tissues"].split(";"))
        if m["direction"] != "+" or float(m["weight"]) < 1 or "any" in where:
            continue
        for other in strong[m["gene"]]:
            theirs = by_id[other]
            if (other == m["ontology_id"] or related(other, m["ontology_id"])
                    or theirs["compartment"] != kind["compartment"]
                    or "any" in theirs["tissues"].split(";")
                    or where & set(theirs["tissues"].split(";"))):
                continue
            shared.add((kind["name"], m["gene"]))
    assert shared - SHARED_DEFINING_KEPT == set(), sorted(shared - SHARED_DEFINING_KEPT)


# -- the checker and the build tool ----------------------------------------------------------
def test_the_shipped_knowledge_base_has_no_problems() -> None:
    assert knowledge_base_problems() == []


def test_the_build_tool_finds_the_derived_columns_up_to_date() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "build_knowledge_base.py"),
                           "--check"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cell types" in done.stdout


def _break(folder: Path, name: str, old: str, new: str) -> None:
    path = folder / name
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_broken_rows_are_reported_specifically(tmp_path: Path) -> None:
    """The checks can fail: each kind of damage is named, with its file and line."""
    data = tmp_path / "data"
    shutil.copytree(DATA, data, ignore=shutil.ignore_patterns("markers.tsv", "__pycache__"))
    _break(data, "cell_types.tsv", "CL:0000236\tB cell\t", "CL:0000236\tB lymphocyte\t")
    _break(data, "cell_types.tsv", "\tmast cell\timmune\t", "\tmast cell\tstromal\t")
    _break(data, "cell_types.tsv", "CL:0000182\thepatocyte\tepithelial\tCL:0000182\thepatocyte\tliver",
           "CL:0000182\thepatocyte\tepithelial\tCL:0000182\thepatocyte\tliverr")
    _break(data, "cell_markers.tsv", "CL:0000084\tT cell\tCD3E\t+\t1\t",
           "CL:0000084\tT cell\tCD3EE\t+\t1.5\t")
    _break(data, "cell_markers.tsv", "CL:0000084\tT cell\tCD3G\t+\t1\tboth\t",
           "CL:0000084\tT cell\tCD3D\t+\t1\tboth\t")
    problems = "\n".join(knowledge_base_problems(data))
    assert "name 'B lymphocyte' is not the CL label 'B cell'" in problems
    assert "differ from those derived from CL ('immune'" in problems
    assert "unknown: ['liverr']" in problems
    assert "'CD3EE' is not a current human (HGNC) symbol" in problems
    assert "weight '1.5' must be a number in (0, 1]" in problems
    assert "CL:0000084 lists CD3D + 2 times" in problems
    assert re.search(r"cell_types\.tsv:\d+:", problems) and re.search(r"cell_markers\.tsv:\d+:",
                                                                    problems)
    # an id that is not (or no longer) in CL
    _break(data, "cell_types.tsv", "CL:0000097\tmast cell", "CL:9999999\tmast cell")
    assert any("CL:9999999 is not a live Cell Ontology term" in p
               for p in knowledge_base_problems(data))


def test_a_malformed_table_is_a_clear_format_error(tmp_path: Path) -> None:
    path = tmp_path / "cell_markers.tsv"
    path.write_text("ontology_id\tcell_type\tgene\nCL:0000084\tT cell\tCD3E\n")
    with pytest.raises(BridgeError, match=r"cell_markers\.tsv:1: columns are .* expected exactly"):
        load_cell_markers(str(path))
    path.write_text("\t".join(CELL_MARKER_COLUMNS) + "\nCL:0000084\tT cell\tCD3E\t+\n")
    with pytest.raises(BridgeError, match=r"cell_markers\.tsv:2: 4 tab-separated fields"):
        load_cell_markers(str(path))

"""The embedded marker engine: its tree, its calls on synthetic cells, tissue context,
abstention, value kinds, the genes-found check, and small real-data checks."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

import bridge
from bridge import FormatError, GeneIdError, InputError
from bridge._contract import UNKNOWN, chunk_table, metadata_dict
from bridge.engines import available_models, get_engine
from bridge.engines._knowledge_base import load_cell_ontology
from bridge.engines._marker_model import load_marker_model
from bridge.engines.markers import MarkerEngine, detect_species
from bridge.matrix import CellMatrix

FILLER = [f"FILLER{i}" for i in range(300)]
HOUSEKEEPING = ["ACTB", "B2M", "MALAT1", "TMSB4X", "EEF1A1", "RPL13", "RPS27", "RPLP1",
                "RPS12", "TPT1", "FTL", "GAPDH", "MT-CO1", "MT-ND1"]
SHARED = next((p / "shared" / "data" for p in Path(__file__).resolve().parents
               if (p / "shared" / "data").is_dir()), Path("/nonexistent"))


def synthetic_matrix(types: list[str], *, n_per_type: int = 20, seed: int = 0,
                     depth: int = 1500, marker_rate: float = 0.01,
                     genes: list[str] | None = None) -> tuple[CellMatrix, list[str]]:
    """Counts where each cell expresses the positive markers of its type (own and inherited).

    Housekeeping genes take most of the counts, filler genes a random background, so the
    marker genes are sparse the way droplet data is.
    """
    model = load_marker_model()
    rng = np.random.default_rng(seed)
    universe = genes or sorted(set(model.genes) | set(FILLER) | set(HOUSEKEEPING))
    col = {g: j for j, g in enumerate(universe)}
    rows, truth = [], []
    for name in types:
        node = model.index(name)
        weights = np.zeros(len(universe))
        for j in np.flatnonzero(model.positive[node]):
            gene = model.genes[j]
            if gene in col:
                weights[col[gene]] = marker_rate * model.positive[node, j]
        for g in HOUSEKEEPING:
            if g in col:
                weights[col[g]] = 0.04
        for g in FILLER:
            if g in col:
                weights[col[g]] = 0.0005
        weights /= weights.sum()
        for _ in range(n_per_type):
            rows.append(rng.poisson(weights * depth * rng.uniform(0.6, 1.4)))
            truth.append(name)
    X = sp.csr_matrix(np.array(rows, dtype=np.float64))
    cells = [f"cell{i}" for i in range(len(rows))]
    return CellMatrix(X, cells, universe, source="synthetic"), truth


def within(label: str, name: str) -> bool:
    """``label`` is the type ``name`` or a CL descendant of it."""
    ontology = load_cell_ontology()
    model = load_marker_model()
    want = model.ids[model.index(name)]
    if label == UNKNOWN:
        return False
    got = model.ids[model.index(label)]
    return got == want or want in ontology.ancestors(got)


# -- the model ---------------------------------------------------------------------------------
def test_model_tree_comes_from_the_cell_ontology() -> None:
    model = load_marker_model()
    ontology = load_cell_ontology()
    assert model.n_types >= 250
    for k in range(model.n_nodes):
        parent = int(model.parents[k])
        if parent >= 0:
            # every parent is a CL ancestor of its child (directly or through the members of
            # a lineage node) and lies in the same compartment
            assert model.compartments[parent] == model.compartments[k], model.names[k]
            assert model.depth[k] == model.depth[parent] + 1
    # CL files cDC1 under pDC; the engine must not follow it (cDC1 lacks the pDC programme)
    cdc1 = model.index("CD141-positive myeloid dendritic cell")
    assert model.names[model.parents[cdc1]] == "dendritic cell"
    assert "CL:0000784" in ontology.terms["CL:0002394"].parents
    # microglia are immune (compartment rules), under macrophage, not glial cell
    microglia = model.index("microglial cell")
    assert model.compartments[microglia] == "immune"
    assert model.names[model.parents[microglia]] == "macrophage"
    # naive CD4 T cells inherit the CD4 T cell programme; markers flow down the tree
    naive = model.index("naive thymus-derived CD4-positive, alpha-beta T cell")
    assert model.names[model.parents[naive]] == "CD4-positive, alpha-beta T cell"
    cd3e = model.genes.index("CD3E")
    assert model.positive[naive, cd3e] > 0 and model.own_positive[naive, cd3e] == 0


def test_species_rows_and_types() -> None:
    human, mouse = load_marker_model(species="human"), load_marker_model(species="mouse")
    assert "CD16-positive, CD56-dim natural killer cell, human" in human.names
    assert "CD16-positive, CD56-dim natural killer cell, human" not in mouse.names
    assert "Ly6g" in mouse.genes and "Ly6g" not in human.genes
    assert detect_species(["CD3E", "MS4A1", "C1orf87"] * 100) == "human"
    assert detect_species(["CD3E", "Gm12345", "1700001C19Rik", "MS4A1"] * 100) == "mouse"
    assert detect_species(["CD3E", "GM12345", "4930537H20RIK", "MS4A1"] * 100) == "mouse"


def test_engine_is_registered_as_default_model() -> None:
    assert "markers" in available_models()
    engine = get_engine("markers")
    assert isinstance(engine, MarkerEngine)
    assert engine.atlas == "default"
    assert engine.parameters()["n_types"] == load_marker_model().n_types


# -- calls on synthetic cells -------------------------------------------------------------------
EXPECTED = [
    "naive B cell", "classical monocyte", "natural killer cell",
    "naive thymus-derived CD8-positive, alpha-beta T cell", "plasma cell",
    "plasmacytoid dendritic cell", "mast cell", "hepatocyte", "fibroblast",
    "endothelial cell of lymphatic vessel", "pancreatic acinar cell", "type B pancreatic cell",
    "oligodendrocyte", "Schwann cell", "basal cell of epidermis", "pvalb GABAergic interneuron",
]


def test_synthetic_cells_get_their_type() -> None:
    matrix, truth = synthetic_matrix(EXPECTED, n_per_type=10, marker_rate=0.02)
    calls = get_engine("markers", tissue="all").annotate_chunk(matrix)
    labels = np.asarray(calls.labels, dtype=object)
    truth_arr = np.asarray(truth, dtype=object)
    for name in EXPECTED:
        got = labels[truth_arr == name]
        assert np.mean([within(g, name) for g in got]) >= 0.8, (name, list(got))


def test_calls_carry_ontology_levels_markers_and_sorted_alternates() -> None:
    matrix, _ = synthetic_matrix(["natural killer cell", "naive B cell"], n_per_type=5)
    calls = get_engine("markers").annotate_chunk(matrix)
    model = load_marker_model()
    l1 = calls.extra["label_l1"].to_pylist()
    l2 = calls.extra["label_l2"].to_pylist()
    assert pa.types.is_dictionary(calls.extra["label_l1"].type)
    assert isinstance(calls.alternates, pa.Array) and isinstance(calls.markers, pa.Array)
    for i, (label, onto, alts, markers, conf) in enumerate(zip(
            calls.labels, calls.ontology_ids, calls.alternates.to_pylist(),
            calls.markers.to_pylist(), calls.confidence, strict=True)):
        node = model.index(label)
        assert onto == model.ids[node]
        assert l1[i] == "immune"
        assert l2[i] in {"innate lymphoid cell", "lymphocyte of B lineage"}
        assert 0.0 < conf <= 1.0
        scores = [a["score"] for a in alts]
        assert scores == sorted(scores, reverse=True)
        assert label not in [a["label"] for a in alts]
        assert 0 < len(markers) <= 5
        carried = {model.genes[j] for j in np.flatnonzero(model.positive[node])}
        assert set(markers) <= carried
    assert calls.extra["unknown_reason"].null_count == len(calls.labels)


def test_uncertain_subtype_keeps_the_type_label() -> None:
    # A T cell with CD4 but no naive / memory / regulatory marker: the subtype is a coin
    # toss, "CD4-positive, alpha-beta T cell" is not.
    model = load_marker_model()
    genes = sorted(set(model.genes) | set(HOUSEKEEPING))
    col = {g: j for j, g in enumerate(genes)}
    row = np.zeros(len(genes))
    for g in ("CD3D", "CD3E", "CD3G", "CD2", "CD5", "PTPRC", "CD4", "CD40LG"):
        row[col[g]] = 3
    for g in HOUSEKEEPING:
        row[col[g]] = 50
    matrix = CellMatrix(sp.csr_matrix(row[None, :]), ["c"], genes)
    calls = get_engine("markers").annotate_chunk(matrix)
    assert calls.labels == ["CD4-positive, alpha-beta T cell"]
    assert calls.confidence[0] >= 0.5
    subtypes = {model.names[k] for k in model.children[model.index(calls.labels[0])]}
    assert not {a["label"] for a in calls.alternates.to_pylist()[0]} & subtypes
    forced = get_engine("markers", min_level_confidence=0.0).annotate_chunk(matrix)
    assert forced.labels[0] in subtypes
    assert forced.confidence[0] < calls.confidence[0]


# -- abstention --------------------------------------------------------------------------------
def _cells(rows: list[dict[str, float]], genes: list[str]) -> CellMatrix:
    col = {g: j for j, g in enumerate(genes)}
    dense = np.zeros((len(rows), len(genes)))
    for i, row in enumerate(rows):
        for g in HOUSEKEEPING:
            dense[i, col[g]] = 60
        for g, v in row.items():
            dense[i, col[g]] = v
    return CellMatrix(sp.csr_matrix(dense), [f"c{i}" for i in range(len(rows))], genes)


def test_one_read_of_one_gene_never_gives_confidence_above_half() -> None:
    genes = sorted(set(load_marker_model().genes) | set(HOUSEKEEPING))
    # a single MPZ read (Schwann cells), a single CD8A read, a single INS read
    matrix = _cells([{"MPZ": 1}, {"CD8A": 1}, {"INS": 1}, {"MPZ": 1, "PTPRC": 1}], genes)
    for tissue in ("auto", "blood", "all"):
        table = bridge.annotate(matrix, tissue=tissue, qc=False, progress=False)
        confidence = np.asarray(table.column("confidence").to_pylist())
        assert (confidence <= 0.5).all(), (tissue, table.column("label").to_pylist())
        labels = table.column("label").to_pylist()
        assert "Schwann cell" not in labels


def test_a_cell_that_fits_no_type_is_unknown_with_a_reason() -> None:
    genes = sorted(set(load_marker_model().genes) | set(HOUSEKEEPING))
    matrix = _cells([{}, {"MPZ": 1}, {"CD3E": 4, "CD3D": 3, "PTPRC": 5, "CD8A": 2}], genes)
    matrix.X.eliminate_zeros()
    table = bridge.annotate(matrix, qc=False, progress=False)
    labels = table.column("label").to_pylist()
    reasons = table.column("unknown_reason").to_pylist()
    confidence = table.column("confidence").to_pylist()
    assert labels[:2] == [UNKNOWN, UNKNOWN]
    assert reasons[0] == "no_marker_genes" and reasons[1] == "too_few_markers"
    assert confidence[:2] == [0.0, 0.0]
    assert labels[2] != UNKNOWN and reasons[2] is None
    assert table.column("label_l1").to_pylist()[:2] == [None, None]
    # a confidence threshold turns low calls into Unknown with their own reason
    strict = bridge.annotate(matrix, qc=False, progress=False, min_confidence=0.999)
    got = strict.column("unknown_reason").to_pylist()
    assert got[:2] == ["no_marker_genes", "too_few_markers"]
    if confidence[2] < 0.999:
        assert got[2] == "low_confidence"


def test_empty_cells_are_unknown_with_zero_confidence() -> None:
    matrix, _ = synthetic_matrix(["natural killer cell"], n_per_type=3)
    X = matrix.X.tolil()
    X[1, :] = 0
    empty = CellMatrix(sp.csr_matrix(X), matrix.cells, matrix.genes)
    empty.X.eliminate_zeros()
    calls = get_engine("markers").annotate_chunk(empty)
    assert calls.labels[1] == UNKNOWN
    assert calls.confidence[1] == 0.0
    assert calls.markers.to_pylist()[1] == [] and calls.alternates.to_pylist()[1] == []
    assert within(calls.labels[0], "natural killer cell")
    assert chunk_table(empty.cells, calls).num_rows == 3


# -- tissue context ----------------------------------------------------------------------------
def test_tissue_restricts_the_candidate_types() -> None:
    # three markers (two hepatocyte genes, one epithelial): a hepatocyte in the liver; in
    # blood a foreign type needs foreign_evidence (2) x min_markers (2) = 4
    genes = sorted(set(load_marker_model().genes) | set(HOUSEKEEPING))
    matrix = _cells([{"ALB": 3, "APOA1": 2, "EPCAM": 1}] * 3, genes)
    assert within(get_engine("markers", tissue="liver").annotate_chunk(matrix).labels[0],
                  "hepatocyte")
    blood = get_engine("markers", tissue="blood").annotate_chunk(matrix)
    assert not any(within(label, "hepatocyte") for label in blood.labels)
    # a full hepatocyte programme is called even abroad ("much stronger evidence")
    strong, _ = synthetic_matrix(["hepatocyte"], n_per_type=3, marker_rate=0.03)
    abroad = get_engine("markers", tissue="blood").annotate_chunk(strong)
    assert all(within(label, "hepatocyte") for label in abroad.labels)
    assert get_engine("markers", tissue="blood").parameters()["tissue"] == "blood"
    # the candidate panel follows the context
    assert "ALB" not in get_engine("markers", tissue="blood").genes
    assert "ALB" in get_engine("markers", tissue="liver").genes


@pytest.mark.parametrize(("given", "tissues"), [
    ("pancreas", ["pancreas"]), ("Pancreatic islets", ["pancreas"]),
    ("UBERON:0001264", ["pancreas"]), ("UBERON:0000006", ["pancreas"]),
    ("PBMC; lymph node", ["blood", "lymph node"]),
])
def test_tissue_names_synonyms_and_uberon_ids(given: str, tissues: list[str]) -> None:
    matrix, _ = synthetic_matrix(["classical monocyte"], n_per_type=3)
    table = bridge.annotate(matrix, tissue=given, qc=False, progress=False)
    context = metadata_dict(table)["tissue"]
    assert context["tissues"] == tissues and context["source"] == "given"


def test_unknown_tissue_is_refused_with_close_matches() -> None:
    with pytest.raises(InputError, match="did you mean 'pancreas'") as caught:
        get_engine("markers", tissue="pancreass")
    assert caught.value.code == "unknown_tissue"
    assert "--tissue" in str(caught.value)
    with pytest.raises(InputError, match="UBERON"):
        get_engine("markers", tissue="UBERON:9999999")


def test_auto_infers_the_context_from_the_data_and_records_it() -> None:
    types = ["pancreatic acinar cell", "type B pancreatic cell", "pancreatic ductal cell",
             "pancreatic A cell", "classical monocyte", "fibroblast"]
    matrix, _ = synthetic_matrix(types, n_per_type=15, marker_rate=0.02)
    table = bridge.annotate(matrix, qc=False, progress=False)
    context = metadata_dict(table)["tissue"]
    assert context["source"] == "inferred"
    assert context["tissues"] == ["pancreas"]
    assert context["support"]["pancreas"] > 0.3
    assert "pancreatic acinar cell" in context["types"]["pancreas"]
    # blood-only data: no tissue-specific programme, so no restriction
    blood, _ = synthetic_matrix(["classical monocyte", "natural killer cell"], n_per_type=10)
    assert metadata_dict(bridge.annotate(blood, qc=False, progress=False)
                         )["tissue"]["source"] in ("none", "inferred")


def test_foreign_types_need_stronger_evidence() -> None:
    # two markers of a Schwann cell in a blood context: enough at home, not abroad
    genes = sorted(set(load_marker_model().genes) | set(HOUSEKEEPING))
    matrix = _cells([{"MPZ": 2, "PMP22": 2, "S100B": 1}], genes)
    home = bridge.annotate(matrix, tissue="peripheral nerve", qc=False, progress=False)
    abroad = bridge.annotate(matrix, tissue="blood", qc=False, progress=False)
    assert within(home.column("label").to_pylist()[0], "glial cell")
    assert abroad.column("label").to_pylist()[0] == UNKNOWN
    assert abroad.column("unknown_reason").to_pylist()[0] == "foreign_types_only"


def test_foreign_types_need_a_defining_marker() -> None:
    genes = sorted(set(load_marker_model().genes) | set(HOUSEKEEPING))
    # secretory genes that prostatic club-like cells share with pancreatic ducts (PIGR, MMP7,
    # OLFM4, LTF, CP), with or without SCGB1A1 (the lung's club cells make it too, so it
    # names neither): a club-like cell in the prostate, never one in the pancreas
    secretory = {"EPCAM": 3, "CLDN7": 3, "PIGR": 3, "OLFM4": 3, "MMP7": 3, "LTF": 3, "CP": 3}
    matrix = _cells([secretory, {**secretory, "SCGB1A1": 3}], genes)
    club = "club-like cell of the urethral epithelium"
    home = bridge.annotate(matrix, tissue="prostate", qc=False, progress=False)
    abroad = bridge.annotate(matrix, tissue="pancreas", qc=False, progress=False)
    assert home.column("label").to_pylist() == [club, club]
    assert club not in abroad.column("label").to_pylist()
    # a gastric foveolar programme (MUC5AC, TFF1, TFF2, PSCA, VSIG1, all shared with other
    # mucous epithelia) is a foveolar cell in a stomach; in a pancreas only with what names
    # one, gastrokine 1
    foveolar = {"EPCAM": 3, "CLDN7": 3, "MUC5AC": 3, "TFF1": 3, "TFF2": 3, "PSCA": 3,
                "VSIG1": 3}
    matrix = _cells([foveolar, {**foveolar, "GKN1": 3}], genes)
    pit = "foveolar cell of stomach"
    home = bridge.annotate(matrix, tissue="stomach", qc=False, progress=False)
    abroad = bridge.annotate(matrix, tissue="pancreas", qc=False, progress=False)
    assert home.column("label").to_pylist() == [pit, pit]
    labels = abroad.column("label").to_pylist()
    assert labels[0] != pit
    assert labels[1] == pit


def test_only_calls_showing_a_defining_marker_vote_for_the_tissue() -> None:
    from bridge.engines._tissue_context import infer_context

    model = load_marker_model()
    index = {name: k for k, name in enumerate(model.names)}
    club, duct = (index["club-like cell of the urethral epithelium"],
                  index["pancreatic ductal cell"])
    labels = np.array([club] * 10 + [duct] * 5)
    sure = np.ones(len(labels))
    assert "prostate" in infer_context(model, labels, sure, len(labels)).tissues
    named = np.array([False] * 10 + [True] * 5)
    voted = infer_context(model, labels, sure, len(labels), named=named)
    assert voted.tissues == frozenset({"pancreas"})
    # nor does it count against blood: eight monocytes and an unnamed spermatogonium call
    blood = np.array([index["classical monocyte"]] * 8 + [index["spermatogonium"]])
    unnamed = np.array([True] * 8 + [False])
    assert infer_context(model, blood, np.ones(9), 9).tissues != frozenset({"blood"})
    assert infer_context(model, blood, np.ones(9), 9, named=unnamed).tissues == frozenset(
        {"blood"})



def test_a_tissue_is_present_by_every_cell_of_its_types_shared_or_not() -> None:
    """A lymph node: 97 immune cells of the blood and 3 of the germinal centre, which lymph
    node, tonsil and spleen share: a third of a vote each (1% of the cells) must not keep the
    secondary lymphoid organs out of the context (3% of the cells are theirs)."""
    from bridge.engines._tissue_context import MIN_SUPPORT, infer_context

    model = load_marker_model()
    index = {name: k for k, name in enumerate(model.names)}
    labels = np.array([index["classical monocyte"]] * 70 + [index["naive B cell"]] * 27
                      + [index["germinal center B cell"], index["T follicular helper cell"],
                         index["germinal center B cell"]])
    context = infer_context(model, labels, np.ones(len(labels)), len(labels))
    assert max(context.evidence["support"].values()) < MIN_SUPPORT  # split votes: 1% each
    assert context.tissues == frozenset({"lymph node", "tonsil", "spleen"})

# -- inputs as they come ----------------------------------------------------------------------
def test_counts_lognorm_normalized_and_log2_values_agree() -> None:
    matrix, _ = synthetic_matrix(["naive B cell", "natural killer cell", "classical monocyte",
                                  "hepatocyte"], n_per_type=5, depth=3000)
    X = matrix.X.copy()
    totals = np.asarray(X.sum(axis=1)).ravel()
    cp10k = sp.csr_matrix(sp.diags(1e4 / totals) @ X)
    lognorm = cp10k.copy()
    lognorm.data = np.log1p(lognorm.data)
    tpm = sp.csr_matrix(sp.diags(1e6 / totals) @ X)  # "normalized": TPM-like, not logged
    log2 = tpm.copy()
    log2.data = np.log2(log2.data + 1)  # log2(TPM + 1), a larger scale than log1p(CP10k)
    engine = get_engine("markers", tissue="all")
    base = engine.annotate_chunk(matrix)
    for X_other, kind in ((lognorm, "lognorm"), (tpm, "normalized"), (log2, "lognorm")):
        other = CellMatrix(X_other, matrix.cells, matrix.genes, value_kind=kind)
        calls = engine.annotate_chunk(other)
        assert calls.labels == base.labels, kind
    np.testing.assert_allclose(engine.annotate_chunk(CellMatrix(
        tpm, matrix.cells, matrix.genes, value_kind="normalized")).confidence, base.confidence,
        rtol=1e-4)


def test_genes_found_check_is_relative_to_the_candidate_panel() -> None:
    # 1,000 genes, most of them unrelated, holding the liver's markers: annotated with a
    # warning, not refused
    model = load_marker_model()
    liver = {model.genes[j] for k in range(model.n_nodes) if "liver" in model.tissues[k]
             for j in np.flatnonzero(model.own_positive[k])}
    genes = sorted(liver)[:60] + HOUSEKEEPING + [f"OTHER{i}" for i in range(926)]
    assert len(genes) == 1000
    matrix, _ = synthetic_matrix(["hepatocyte"], n_per_type=4, genes=sorted(genes),
                                 marker_rate=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = bridge.annotate(matrix, qc=False, progress=False)
    assert any("calls may be less reliable" in str(w.message) for w in caught)
    assert table.num_rows == 4
    # ids of the wrong kind are still refused
    wrong = CellMatrix(matrix.X, matrix.cells, [f"ENSG{i:011d}" for i in range(1000)])
    with pytest.raises(GeneIdError):
        bridge.annotate(wrong, qc=False, progress=False)


def test_calls_do_not_depend_on_the_chunking() -> None:
    types = ["pancreatic acinar cell", "type B pancreatic cell", "classical monocyte",
             "natural killer cell", "fibroblast"]
    matrix, _ = synthetic_matrix(types, n_per_type=12, marker_rate=0.02)
    whole = bridge.annotate(matrix, qc=False, progress=False, chunk_size=10_000)
    pieces = bridge.annotate(matrix, qc=False, progress=False, chunk_size=7)
    assert whole.equals(pieces)
    assert metadata_dict(whole)["tissue"] == metadata_dict(pieces)["tissue"]


# -- atlases and parameters --------------------------------------------------------------------
MARKER_HEADER = "ontology_id\tcell_type\tgene\tdirection\tweight\tspecies\tsource\n"


def test_custom_marker_file_and_folder(tmp_path: Path) -> None:
    rows = [f"CL:0000236\tB cell\t{g}\t+\t1\tboth\tmy lab notes 2024\n"
            for g in ("GENEA", "GENEA2")]
    rows += [f"CL:0000084\tT cell\t{g}\t+\t1\tboth\tmy lab notes 2024\n"
             for g in ("GENEB", "GENEB2")]
    path = tmp_path / "cell_markers.tsv"
    path.write_text(MARKER_HEADER + "".join(rows))
    X = sp.csr_matrix(np.array([[5.0, 4, 0, 0, 100], [0, 0, 5.0, 3, 100]]))
    matrix = CellMatrix(X, ["a", "b"], ["GENEA", "GENEA2", "GENEB", "GENEB2", "OTHER"])
    for atlas in (path, tmp_path):
        engine = get_engine("markers", atlas=str(atlas))
        assert engine.atlas == str(atlas)
        calls = engine.annotate_chunk(matrix)
        assert calls.labels == ["B cell", "T cell"]


@pytest.mark.parametrize(("content", "phrase"), [
    ("just\ta\theader\n", "columns are"),
    (MARKER_HEADER + "CL:0000236\tB cell\tG\t*\t1\tboth\tsomebody 2020\n", "direction must"),
    (MARKER_HEADER + "CL:0000236\tB cell\tG\t+\tlots\tboth\tsomebody 2020\n", "weight"),
    (MARKER_HEADER + "CL:9999999\tghost\tG\t+\t1\tboth\tsomebody 2020\n",
     "not a live Cell Ontology id"),
])
def test_malformed_marker_file_is_refused(tmp_path: Path, content: str, phrase: str) -> None:
    path = tmp_path / f"bad{abs(hash(content))}.tsv"
    path.write_text(content)
    with pytest.raises(FormatError, match=phrase):
        get_engine("markers", atlas=str(path))


@pytest.mark.parametrize("params", [{"temperature": 0}, {"saturation": -1},
                                    {"min_level_confidence": 2}, {"min_markers": 0},
                                    {"foreign_evidence": 0.5}, {"species": "fish"}])
def test_bad_parameters_are_refused(params: dict) -> None:
    with pytest.raises(InputError):
        get_engine("markers", **params)


# -- real data (small; each check can fail) --------------------------------------------------
def _pbmc68k() -> tuple[CellMatrix, np.ndarray]:
    sc = pytest.importorskip("scanpy")
    matrix = bridge.read(sc.datasets.pbmc68k_reduced(), layer="raw", value_kind="lognorm")
    return matrix, np.asarray(matrix.obs.column("bulk_labels").to_pylist()).astype(str)


def test_pbmc68k_lineages() -> None:
    matrix, labels = _pbmc68k()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = bridge.annotate(matrix, qc=False, progress=False)
    l2 = np.asarray(table.column("label_l2").to_pylist(), dtype=object)
    expected = {"CD19+ B": "lymphocyte of B lineage", "CD56+ NK": "innate lymphoid cell",
                "CD14+ Monocyte": "mononuclear phagocyte", "CD8+ Cytotoxic T": "T cell",
                "CD4+/CD45RO+ Memory": "T cell"}
    for bulk, lineage in expected.items():
        rate = np.mean(l2[labels == bulk] == lineage)
        # pbmc68k's labels come from bulk-profile correlation: NK and T blur into each other
        assert rate >= (0.5 if bulk == "CD56+ NK" else 0.85), (bulk, rate)
    l1 = set(table.column("label_l1").to_pylist()) - {None}
    assert l1 <= {"immune", "erythroid/megakaryocyte"}


@pytest.mark.skipif(not (SHARED / "sorted_pbmc_seurat.rds").exists(),
                    reason="sorted PBMC not beside the repository")
def test_sorted_pbmc_calls_no_confident_non_blood_type() -> None:
    matrix = bridge.read(SHARED / "sorted_pbmc_seurat.rds")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = bridge.annotate(matrix, qc=False, progress=False)
    l1 = np.asarray(table.column("label_l1").to_pylist(), dtype=object)
    confidence = np.asarray(table.column("confidence").to_pylist())
    foreign = ~np.isin(l1, ["immune", "erythroid/megakaryocyte", None])
    assert not (foreign & (confidence >= 0.5)).any(), table.filter(pa.array(foreign))


@pytest.mark.skipif(not (SHARED / "tissues" / "mouse_drg_usoskin").exists(),
                    reason="tissue data sets not beside the repository")
def test_mouse_drg_neurons_are_sensory_neurons() -> None:
    matrix = bridge.read(SHARED / "tissues" / "mouse_drg_usoskin" / "counts.rds")
    assert matrix.value_kind == "normalized"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = bridge.annotate(matrix, qc=False, progress=False)
    l2 = np.asarray(table.column("label_l2").to_pylist(), dtype=object)
    assert np.mean(l2 == "sensory neuron") >= 0.9
    assert metadata_dict(table)["tissue"]["tissues"] == ["ganglion"]
    assert metadata_dict(table)["species"] == "mouse"

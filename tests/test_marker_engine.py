"""The embedded marker engine: its database, its calls on synthetic cells, its parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from bridge import FormatError, InputError
from bridge._contract import UNKNOWN, chunk_table
from bridge.engines import available_models, get_engine
from bridge.engines.markers import MarkerEngine, load_marker_database
from bridge.matrix import CellMatrix

FILLER = [f"FILLER{i}" for i in range(300)]
HOUSEKEEPING = ["ACTB", "B2M", "MALAT1", "TMSB4X", "EEF1A1", "RPL13", "RPS27", "RPLP1",
                "RPS12", "TPT1", "FTL", "GAPDH", "MT-CO1", "MT-ND1"]


def synthetic_matrix(types: list[str], *, n_per_type: int = 20, seed: int = 0,
                     depth: int = 1500, marker_rate: float = 0.01,
                     genes: list[str] | None = None) -> tuple[CellMatrix, list[str]]:
    """Counts where each cell expresses the positive markers of its type and ancestors.

    Housekeeping genes take most of the counts, filler genes a random background, so the
    marker genes are sparse the way real droplet data is.
    """
    db = load_marker_database()
    rng = np.random.default_rng(seed)
    universe = genes or sorted(set(db.genes) | set(FILLER) | set(HOUSEKEEPING))
    col = {g: j for j, g in enumerate(universe)}
    rows, truth = [], []
    for name in types:
        node = db.types.index(name)
        weights = np.zeros(len(universe))
        for k in db.lineage(node):
            for j in np.flatnonzero(db.positive[k]):
                gene = db.genes[j]
                if gene in col:
                    weights[col[gene]] = max(weights[col[gene]], marker_rate * db.positive[k, j])
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


def test_database_is_a_well_formed_tree() -> None:
    db = load_marker_database()
    assert db.n_types >= 40
    for i, name in enumerate(db.types):
        assert db.ontology_ids[i] and db.ontology_ids[i].startswith("CL:"), name
        assert db.sources[i], name
        parent = db.parents[i]
        if parent >= 0:
            assert db.levels[i] == db.levels[parent] + 1, name
        else:
            assert db.levels[i] == 1, name
        assert db.positive[i].sum() > 0, f"{name} has no positive marker"
    assert not (db.positive.astype(bool) & db.negative.astype(bool)).any()


def test_database_covers_the_required_cell_types() -> None:
    names = set(load_marker_database().types)
    required = {
        "naive CD4 T cell", "memory CD4 T cell", "regulatory T cell", "naive CD8 T cell",
        "effector memory CD8 T cell", "mucosal-associated invariant T cell",
        "gamma-delta T cell", "NK cell", "naive B cell", "memory B cell", "plasma cell",
        "CD14 monocyte", "CD16 monocyte", "cDC1", "cDC2", "plasmacytoid dendritic cell",
        "platelet", "erythroid cell", "hematopoietic progenitor cell", "neutrophil",
        "mast cell", "epithelial cell", "endothelial cell", "fibroblast", "smooth muscle cell",
        "pericyte", "macrophage", "hepatocyte", "keratinocyte",
    }
    assert required <= names, required - names


def test_engine_is_registered_as_default_model() -> None:
    assert "markers" in available_models()
    engine = get_engine("markers")
    assert isinstance(engine, MarkerEngine)
    assert engine.atlas == "default"
    assert engine.parameters()["n_types"] == load_marker_database().n_types


EXPECTED = [
    "naive B cell", "CD14 monocyte", "NK cell", "naive CD8 T cell", "naive CD4 T cell",
    "regulatory T cell", "plasma cell", "plasmacytoid dendritic cell", "platelet",
    "erythroid cell", "hematopoietic progenitor cell", "mast cell", "hepatocyte",
    "fibroblast", "endothelial cell", "keratinocyte", "CD16 monocyte", "cDC1",
]


def test_synthetic_cells_get_their_type() -> None:
    matrix, truth = synthetic_matrix(EXPECTED, n_per_type=10, marker_rate=0.02)
    calls = get_engine("markers").annotate_chunk(matrix)
    labels = np.asarray(calls.labels, dtype=object)
    truth_arr = np.asarray(truth, dtype=object)
    db = load_marker_database()

    def within(label: str, name: str) -> bool:  # the type itself or one of its subtypes
        return label in db.types and db.types.index(name) in db.lineage(db.types.index(label))

    for name in EXPECTED:
        got = labels[truth_arr == name]
        assert np.mean([within(g, name) for g in got]) >= 0.8, (name, list(got))


def test_calls_have_ontology_markers_and_sorted_alternates() -> None:
    matrix, _ = synthetic_matrix(["NK cell", "naive B cell"], n_per_type=5)
    calls = get_engine("markers").annotate_chunk(matrix)
    db = load_marker_database()
    for label, onto, alts, markers, conf in zip(calls.labels, calls.ontology_ids,
                                                calls.alternates, calls.markers,
                                                calls.confidence, strict=True):
        assert onto == db.ontology_ids[db.types.index(label)]
        assert 0.0 < conf <= 1.0
        scores = [s for _, s in alts]
        assert scores == sorted(scores, reverse=True)
        assert all(s <= conf + 1e-6 for s in scores)
        assert label not in [a for a, _ in alts]
        assert 0 < len(markers) <= 5
    nk_markers = set(calls.markers[0])
    nk_genes = {db.genes[j] for j in np.flatnonzero(db.positive[db.types.index("NK cell")])}
    lineage_genes = {db.genes[j] for k in db.lineage(db.types.index("NK cell"))
                     for j in np.flatnonzero(db.positive[k])}
    assert nk_markers <= lineage_genes
    assert nk_markers & nk_genes


def test_counts_and_lognormalised_input_agree() -> None:
    matrix, _ = synthetic_matrix(["naive B cell", "NK cell", "CD14 monocyte"], n_per_type=5)
    X = matrix.X.copy()
    totals = np.asarray(X.sum(axis=1)).ravel()
    X = sp.diags(1e4 / totals) @ X
    X.data = np.log1p(X.data)
    lognorm = CellMatrix(sp.csr_matrix(X), matrix.cells, matrix.genes, value_kind="lognorm")
    engine = get_engine("markers")
    a, b = engine.annotate_chunk(matrix), engine.annotate_chunk(lognorm)
    assert a.labels == b.labels
    np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-4)


def test_empty_cells_are_unknown_with_zero_confidence() -> None:
    matrix, _ = synthetic_matrix(["NK cell"], n_per_type=3)
    X = matrix.X.tolil()
    X[1, :] = 0
    empty = CellMatrix(sp.csr_matrix(X), matrix.cells, matrix.genes)
    empty.X.eliminate_zeros()
    calls = get_engine("markers").annotate_chunk(empty)
    assert calls.labels[1] == UNKNOWN
    assert calls.confidence[1] == 0.0
    assert calls.markers[1] == [] and calls.alternates[1] == []
    assert calls.labels[0] == "NK cell"
    table = chunk_table(empty.cells, calls)
    assert table.num_rows == 3


def test_uncertain_subtype_keeps_the_type_label() -> None:
    # A CD4 T cell with no naive / memory / regulatory marker: the subtype is a coin toss,
    # "CD4 T cell" is not.
    genes = sorted(set(load_marker_database().genes) | set(HOUSEKEEPING))
    col = {g: j for j, g in enumerate(genes)}
    row = np.zeros(len(genes))
    for g in ("CD3D", "CD3E", "CD3G", "CD2", "CD5", "PTPRC", "CD4", "CD40LG"):
        row[col[g]] = 3
    for g in HOUSEKEEPING:
        row[col[g]] = 50
    matrix = CellMatrix(sp.csr_matrix(row[None, :]), ["c"], genes)
    calls = get_engine("markers").annotate_chunk(matrix)
    assert calls.labels == ["CD4 T cell"]
    assert calls.confidence[0] >= 0.5
    alternates = {a for a, _ in calls.alternates[0]}
    # Runners-up are alternatives to the label (its level and above), never its own subtypes.
    assert not alternates & {"naive CD4 T cell", "memory CD4 T cell", "regulatory T cell"}
    assert alternates & {"CD8 T cell", "mucosal-associated invariant T cell",
                         "gamma-delta T cell"}
    forced = get_engine("markers", min_level_confidence=0.0).annotate_chunk(matrix)
    assert forced.labels[0] in {"naive CD4 T cell", "memory CD4 T cell", "regulatory T cell"}
    assert forced.confidence[0] < calls.confidence[0]


def test_tissue_restricts_the_candidate_types() -> None:
    matrix, _ = synthetic_matrix(["hepatocyte"], n_per_type=3)
    assert get_engine("markers").annotate_chunk(matrix).labels[0] == "hepatocyte"
    blood = get_engine("markers", tissue="blood").annotate_chunk(matrix)
    assert "hepatocyte" not in blood.labels
    assert get_engine("markers", tissue="blood").parameters()["tissue"] == "blood"


def test_panel_missing_genes_do_not_crash_and_use_what_is_there() -> None:
    keep = ["CD3D", "CD3E", "CD8A", "CD8B", "NKG7", "GNLY", "MS4A1", "CD79A", "LYZ", "CD14",
            *HOUSEKEEPING, *FILLER[:50]]
    matrix, truth = synthetic_matrix(["naive B cell", "NK cell", "CD14 monocyte"],
                                     n_per_type=5, genes=sorted(keep), marker_rate=0.05)
    labels = get_engine("markers").annotate_chunk(matrix).labels
    coarse = {"naive B cell": "B cell", "NK cell": "NK cell", "CD14 monocyte": "monocyte"}
    for got, want in zip(labels, truth, strict=True):
        assert coarse[want].split()[0] in got, (got, want)


def test_custom_database_file(tmp_path: Path) -> None:
    path = tmp_path / "db.tsv"
    header = "cell_type\tontology_id\tparent\tlevel\ttissue\tgene\tdirection\tweight\tsource\n"
    rows = ["alpha\tCL:1\t\t1\tany\tGENEA\t+\t1\tme\n", "beta\tCL:2\t\t1\tany\tGENEB\t+\t1\tme\n"]
    path.write_text(header + "".join(rows))
    X = sp.csr_matrix(np.array([[5.0, 0, 100], [0, 5.0, 100]]))
    matrix = CellMatrix(X, ["a", "b"], ["GENEA", "GENEB", "OTHER"])
    engine = get_engine("markers", atlas=str(path))
    assert engine.atlas == str(path)
    assert engine.annotate_chunk(matrix).labels == ["alpha", "beta"]


@pytest.mark.parametrize(("content", "phrase"), [
    ("just\ta\theader\n", "needs the tab-separated columns"),
    ("cell_type\tontology_id\tparent\tlevel\ttissue\tgene\tdirection\tweight\tsource\n"
     "a\tCL:1\t\t1\tany\tG\t*\t1\tx\n", "direction must be"),
    ("cell_type\tontology_id\tparent\tlevel\ttissue\tgene\tdirection\tweight\tsource\n"
     "a\tCL:1\t\t1\tany\tG\t+\tlots\tx\n", "is not a number"),
    ("cell_type\tontology_id\tparent\tlevel\ttissue\tgene\tdirection\tweight\tsource\n"
     "a\tCL:1\tghost\t2\tany\tG\t+\t1\tx\n", "names parent 'ghost'"),
])
def test_malformed_database_is_refused(tmp_path: Path, content: str, phrase: str) -> None:
    path = tmp_path / f"bad{abs(hash(content))}.tsv"
    path.write_text(content)
    with pytest.raises(FormatError, match=phrase):
        get_engine("markers", atlas=str(path))


@pytest.mark.parametrize("params", [{"temperature": 0}, {"saturation": -1},
                                    {"min_level_confidence": 2}])
def test_bad_parameters_are_refused(params: dict) -> None:
    with pytest.raises(InputError):
        get_engine("markers", **params)

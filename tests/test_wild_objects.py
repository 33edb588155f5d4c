"""Objects as users' files hold them (issue 17): .rda files with several objects, lists,
mixed gene ids, an SCTAssay without counts, SCE altExps, and write-back into .rda, all on
fixtures built by the real R (tests/r/make_wild_fixtures.R), plus the same fixtures read by
the R package's own code to prove both sides choose the same matrix."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pyarrow as pa
import pytest
from test_marker_engine import synthetic_matrix

import bridge
from bridge.cli import main
from bridge.genes import detect_gene_id_kind, map_to_human_symbols
from bridge.matrix import CellMatrix

from conftest import r_status, run_r
from expected import assert_same, expected_csr

ROOT = Path(__file__).resolve().parents[1]
R_PACKAGE = ROOT / "r-package"
CELLS = [f"AAAC{i:02d}-1" for i in range(1, 41)]


@pytest.fixture(scope="module")
def wild(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixtures of tests/r/make_wild_fixtures.R, built once with the real R."""
    if r_status() is not None:
        pytest.skip(f"needs R: {r_status()}")
    out = tmp_path_factory.mktemp("wild")
    ids = R_PACKAGE / "tests" / "testthat" / "fixtures" / "model_genes_ensembl.tsv"
    done = subprocess.run(["Rscript", str(ROOT / "tests" / "r" / "make_wild_fixtures.R"),
                           str(out), str(ids)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def calls_for(cells: list[str]) -> pa.Table:
    return pa.table({"cell": cells[::-1], "cell_type": [f"type {i % 3}" for i in range(len(cells))]})


# -- choosing the object ----------------------------------------------------------------------
@pytest.mark.needs_r
@pytest.mark.parametrize("fixture", ["two_objects.rda", "list_one.rds", "list_named.rds"])
def test_the_one_readable_object_is_read_exactly(wild: Path, fixture: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bridge.io.rds"):
        matrix = bridge.read(wild / fixture)
    assert_same(matrix, *expected_csr(wild, "wild_counts"))
    assert matrix.source == "Seurat assay RNA counts"
    assert matrix.obs.column("sample").to_pylist()[:2] == ["A", "B"]
    said = caplog.text
    assert ("'pbmc'" in said and "pbmc_markers" in said) if fixture.endswith(".rda") \
        else "element" in said


@pytest.mark.needs_r
@pytest.mark.parametrize(("fixture", "names"), [
    ("two_seurats.RData", ["'pbmc' (Seurat)", "'pbmc_again' (Seurat)"]),
    ("list_two.rds", ['[["seurat"]] (Seurat)', '[["sce"]] (SingleCellExperiment)']),
])
def test_several_readable_objects_are_listed(wild: Path, fixture: str, names: list[str]) -> None:
    with pytest.raises(bridge.InputError) as info:
        bridge.read(wild / fixture)
    assert info.value.code == "ambiguous_object"
    for name in names:
        assert name in str(info.value)
    assert "saveRDS(" in str(info.value)


@pytest.mark.needs_r
def test_a_live_list_is_unwrapped_too(wild: Path) -> None:
    import rpy2.robjects as ro

    matrix = bridge.read(ro.r["readRDS"](str(wild / "list_one.rds")))
    assert_same(matrix, *expected_csr(wild, "wild_counts"))


# -- layers: the shared rules -----------------------------------------------------------------
def test_the_layer_rules_are_one_file_in_both_packages() -> None:
    python = ROOT / "bridge" / "io" / "data" / "layer_rules.tsv"
    r = R_PACKAGE / "inst" / "extdata" / "layer_rules.tsv"
    assert python.read_bytes() == r.read_bytes(), "copy bridge/io/data/layer_rules.tsv to the R package"
    from bridge.io._layers import layer_rules

    rules = {(rule.container, rule.layer): rule.use for rule in layer_rules()}
    assert rules[("seurat", "counts")] == "default" and rules[("seurat", "data")] == "fallback"
    assert rules[("seurat", "scale.data")] == "refused"


@pytest.mark.needs_r
def test_sct_assay_without_counts_falls_back_to_data(wild: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        matrix = bridge.read(wild / "sct_empty_counts.rds")
    assert_same(matrix, *expected_csr(wild, "sct_data"))
    assert matrix.value_kind == "lognorm" and matrix.source == "Seurat assay SCT data"
    assert "assay 'SCT' has no 'counts'; using its 'data' layer" in caplog.text
    with pytest.raises(bridge.NotFoundError, match="no layer 'counts'; available layers: data"):
        bridge.read(wild / "sct_empty_counts.rds", layer="counts")
    # The RNA assay next to it still has its counts.
    rna = bridge.read(wild / "sct_empty_counts.rds", assay="RNA")
    assert_same(rna, *expected_csr(wild, "wild_counts"))


@pytest.mark.needs_r
def test_sce_with_only_logcounts_falls_back_to_them(wild: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        matrix = bridge.read(wild / "sce_logcounts_only.rds")
    assert_same(matrix, *expected_csr(wild, "sct_data"))
    assert "has no 'counts'; using its 'logcounts' assay" in caplog.text


# -- altExps ----------------------------------------------------------------------------------
@pytest.mark.needs_r
def test_sce_altexp_is_read_exactly(wild: Path) -> None:
    hto = bridge.read(wild / "sce_altexp.rds", assay="altexp:HTO")
    assert_same(hto, *expected_csr(wild, "hto_counts"))
    assert hto.source == "SingleCellExperiment altExp HTO assay counts"
    assert hto.obs.column("sample").to_pylist()[:2] == ["A", "B"]  # the main colData
    same = bridge.read(wild / "sce_altexp.rds", assay="altexp:HTO", layer="counts")
    assert_same(same, *expected_csr(wild, "hto_counts"))
    main_matrix = bridge.read(wild / "sce_altexp.rds")
    assert_same(main_matrix, *expected_csr(wild, "wild_counts"))
    info = bridge.describe(wild / "sce_altexp.rds")
    assert info["alt_exps"] == {"HTO": {"counts": {"class": "dgCMatrix", "genes": 4, "cells": 40,
                                                   "nnz": hto.nnz}}}


@pytest.mark.needs_r
def test_inspect_lists_altexps(wild: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(wild / "sce_altexp.rds")]) == 0
    out = capsys.readouterr().out
    assert "altExp HTO (read with --assay altexp:HTO):" in out
    assert "counts: dgCMatrix, 4 genes x 40 cells" in out


@pytest.mark.needs_r
def test_an_altexp_name_given_as_assay_gets_a_hint(wild: Path) -> None:
    with pytest.raises(bridge.NotFoundError) as info:
        bridge.read(wild / "sce_altexp.rds", assay="HTO")
    assert "available assays: counts" in str(info.value)
    assert "assay='altexp:HTO'" in str(info.value)
    with pytest.raises(bridge.NotFoundError, match="no altExp 'ADT'; its altExps: HTO"):
        bridge.read(wild / "sce_altexp.rds", assay="altexp:ADT")


# -- the same fixtures through the R package's own code --------------------------------------
# (file, assay, layer): the R package's expression_matrix() and bridge.read() must pick the
# same matrix, warn alike and refuse alike.
SAME_CHOICE = [
    ("sct_empty_counts.rds", None, None),
    ("sct_empty_counts.rds", None, "counts"),
    ("sct_empty_counts.rds", None, "scale.data"),
    ("sct_empty_counts.rds", "RNA", None),
    ("sce_logcounts_only.rds", None, None),
    ("sce_altexp.rds", None, None),
    ("sce_altexp.rds", "altexp:HTO", None),
    ("sce_altexp.rds", "HTO", None),
    ("mixed_ids.rds", None, None),
]

R_CHOICE = r"""
args <- commandArgs(trailingOnly = TRUE)
suppressPackageStartupMessages({library(Matrix); library(SingleCellExperiment)})
pkg <- new.env()
for (f in list.files(file.path(args[[1]], "R"), full.names = TRUE)) sys.source(f, envir = pkg)
pkg$layer_rules_path <- function() file.path(args[[1]], "inst", "extdata", "layer_rules.tsv")
cases <- jsonlite::fromJSON(args[[2]], simplifyVector = FALSE)
out <- lapply(seq_along(cases), function(k) {
  case <- cases[[k]]
  obj <- readRDS(case$file)
  warned <- character(0)
  found <- withCallingHandlers(
    tryCatch(pkg$expression_matrix(obj, case$assay, case$layer),
             scbridge_error = function(e) e),
    warning = function(w) { warned <<- c(warned, conditionMessage(w)); invokeRestart("muffleWarning") })
  if (inherits(found, "scbridge_error")) {
    return(list(error = sub("^scbridge_error_", "", class(found)[[1L]]),
                message = conditionMessage(found)))
  }
  m <- found$matrix
  base <- file.path(args[[3]], k)
  writeBin(as.integer(m@p), paste0(base, ".p.bin"), size = 4)
  writeBin(as.integer(m@i), paste0(base, ".i.bin"), size = 4)
  writeBin(as.double(m@x), paste0(base, ".x.bin"), size = 8)
  writeLines(colnames(m), paste0(base, ".cells.txt"))
  writeLines(rownames(m), paste0(base, ".genes.txt"))
  list(layer = found$layer, source = found$source, warnings = as.list(warned))
})
writeLines(jsonlite::toJSON(out, auto_unbox = TRUE, null = "null"), file.path(args[[3]], "out.json"))
"""

@pytest.mark.needs_r
def test_python_and_the_r_package_choose_alike(wild: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    if "TRUE" not in run_r('cat(requireNamespace("jsonlite", quietly = TRUE))'):
        pytest.skip("needs the R package jsonlite")
    cases = [{"file": str(wild / f), "assay": a, "layer": lay} for f, a, lay in SAME_CHOICE]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "run.R").write_text(R_CHOICE)
    done = subprocess.run(["Rscript", str(tmp_path / "run.R"), str(R_PACKAGE),
                           str(tmp_path / "cases.json"), str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "out.json").read_text())
    for k, ((fixture, assay, layer), r) in enumerate(zip(SAME_CHOICE, results, strict=True), 1):
        case = f"{fixture} assay={assay} layer={layer}"
        if "error" in r:
            with pytest.raises(bridge.BridgeError) as info:  # the same code on both sides
                bridge.read(wild / fixture, assay=assay, layer=layer)
            assert info.value.code == r["error"], (case, str(info.value), r["message"])
            if "altExp" in r["message"]:
                assert "altexp:HTO" in str(info.value), case
            continue
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bridge.io._layers"):
            matrix = bridge.read(wild / fixture, assay=assay, layer=layer)
        assert_same(matrix, *expected_csr(tmp_path, str(k)))
        assert matrix.source == r["source"], case
        assert bool(r["warnings"]) == bool(caplog.records), case
        for message in r["warnings"]:  # the same words on both sides
            assert message.split(";")[1].strip().rstrip(".") in caplog.text, case


# -- mixed gene ids ---------------------------------------------------------------------------
def test_mixed_ids_are_recognised_and_mapped_each_by_its_kind() -> None:
    genes = ["ENSG00000198851", "ENSG00000156738.18", "NKG7", "LYZ", "ENSG00000105374",
             "CD14", "ENSMUSG00000032093"]
    assert detect_gene_id_kind(genes) == "mixed"
    mapping = map_to_human_symbols(genes)
    assert mapping.kind == "mixed"
    assert list(mapping.genes[:2]) == ["CD3E", "MS4A1"]
    # NKG7 is present as a symbol, so its Ensembl id keeps its own name (no merged columns).
    assert mapping.genes[4] == "ENSG00000105374"
    assert mapping.genes[6] == "CD3E" or mapping.genes[6] == "ENSMUSG00000032093"
    assert detect_gene_id_kind(["1", "2", "3", "CD3E"]) == "other"
    assert detect_gene_id_kind(["CD3E", "MS4A1", "NKG7", "ENSG00000105374"]) == "symbols_human"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bridge ...`` in a fresh process: its stderr is exactly what a user sees."""
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.needs_r
def test_mixed_ids_are_annotated_without_a_false_alarm(wild: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        calls = bridge.annotate(wild / "mixed_ids.rds", progress=False, qc=False)
    assert not [w for w in seen if "gene" in str(w.message)]
    meta = {k.decode(): v.decode() for k, v in calls.schema.metadata.items()}
    assert meta["scbridge.gene_id_kind"] == "mixed"
    assert int(meta["scbridge.genes_mapped"]) == 173  # the 55% given as Ensembl ids
    # Mapped id by id, the mixture finds every engine gene the all-symbols object has.
    symbols = bridge.annotate(wild / "list_one.rds", progress=False, qc=False)
    assert float(meta["scbridge.genes_matched"]) == pytest.approx(
        float(symbols.schema.metadata[b"scbridge.genes_matched"]))
    assert float(meta["scbridge.genes_matched"]) > 0
    done = run_cli("annotate", str(wild / "mixed_ids.rds"), "--out", str(tmp_path / "c.csv"),
                   "--no-qc")
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr.lower(), done.stderr
    assert "ids: mixed, 173 ids mapped" in done.stdout


def test_ids_of_no_known_kind_warn_once_in_the_cli(tmp_path: Path) -> None:
    import scipy.sparse as sp

    matrix, _ = synthetic_matrix(["natural killer cell", "naive B cell"], n_per_type=10)
    numbers = [str(j) for j in range(2 * matrix.n_genes)]  # two thirds of the ids are numbers
    X = sp.hstack([matrix.X, sp.csr_matrix((matrix.n_cells, len(numbers)))], format="csr")
    odd = CellMatrix(X, matrix.cells, [*map(str, matrix.genes), *numbers])
    path = bridge.write(odd, tmp_path / "odd.arrow")
    done = run_cli("annotate", str(path), "--out", str(tmp_path / "c.csv"), "--quiet", "--no-qc")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("look like neither gene symbols nor Ensembl ids") == 1, done.stderr
    assert "scbridge annotate: warning:" in done.stderr


# -- the gene-panel threshold, end to end ------------------------------------------------------
def test_a_small_panel_is_refused_with_advice_that_works(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    matrix, _ = synthetic_matrix(["natural killer cell", "naive B cell"], n_per_type=10)
    from bridge.engines import get_engine

    engine_genes = set(get_engine("markers").genes)
    keep = [j for j, g in enumerate(matrix.genes) if g not in engine_genes]
    keep += [j for j, g in enumerate(matrix.genes) if g in engine_genes][:8]  # <1% of the panel
    small = matrix.select_genes([matrix.genes[j] for j in sorted(keep)])
    path = bridge.write(small, tmp_path / "panel.arrow")
    with pytest.raises(bridge.GeneIdError) as info:
        bridge.annotate(small, progress=False, qc=False)
    for advice in ("min_gene_fraction= in Python", "--min-gene-fraction on the command line",
                   "min_gene_fraction = in R"):
        assert advice in str(info.value)
    with pytest.warns(UserWarning, match="calls may be less reliable"):
        calls = bridge.annotate(small, progress=False, qc=False, min_gene_fraction=0.001)
    assert calls.num_rows == 20
    assert main(["annotate", str(path), "--out", str(tmp_path / "c.csv"), "--quiet"]) == 2
    assert "error[gene_ids]" in capsys.readouterr().err
    assert main(["annotate", str(path), "--out", str(tmp_path / "c.csv"), "--quiet",
                 "--min-gene-fraction", "0.001"]) == 0


# -- write-back -------------------------------------------------------------------------------
@pytest.mark.needs_r
def test_write_back_into_an_rda_keeps_its_other_objects(wild: Path, tmp_path: Path) -> None:
    source = wild / "two_objects.rda"
    before = source.read_bytes()
    out = bridge.write_back(source, calls_for(CELLS), tmp_path / "annotated.rda")
    result = run_r(f"""
        suppressMessages(library(SeuratObject))
        a <- new.env(); b <- new.env()
        cat(load("{source}", envir = a), "\\n")
        cat(load("{out}", envir = b), "\\n")
        cat(identical(a$pbmc_markers, b$pbmc_markers), "\\n")
        meta <- attr(b$pbmc, "meta.data")
        cat(meta$cell_type[1:3], sep = "|"); cat("\\n")
        stripped <- b$pbmc; m <- attr(stripped, "meta.data"); m$cell_type <- NULL
        attr(stripped, "meta.data") <- m
        cat(identical(stripped, a$pbmc), "\\n")
    """).splitlines()
    assert result[0].split() == result[1].split() == ["pbmc", "pbmc_markers"]
    assert result[2].strip() == "TRUE"
    # calls_for() lists cells in reverse order: the last cell got "type 0".
    assert result[3] == "type 0|type 2|type 1"
    assert result[4].strip() == "TRUE"
    assert source.read_bytes() == before


@pytest.mark.needs_r
def test_write_back_of_an_rda_as_rds_and_of_a_list(wild: Path, tmp_path: Path) -> None:
    alone = bridge.write_back(wild / "two_objects.rda", calls_for(CELLS), tmp_path / "pbmc.rds")
    listed = bridge.write_back(wild / "list_named.rds", calls_for(CELLS), tmp_path / "list.rds")
    result = run_r(f"""
        suppressMessages(library(SeuratObject))
        a <- readRDS("{alone}"); b <- readRDS("{listed}")
        cat(class(a), "\\n")
        cat(class(b), names(b), b$note, "\\n")
        cat(attr(b$pbmc, "meta.data")$cell_type[40], "\\n")
    """).splitlines()
    assert result[0].strip() == "Seurat"
    assert result[1].split() == ["list", "note", "pbmc", "filtered", "cells"]
    assert result[2].strip() == "type 0"


@pytest.mark.needs_r
@pytest.mark.parametrize(("source", "out", "error", "phrase"), [
    ("two_objects.rda", "x.h5ad", bridge.UnsupportedError, "saved as .rds or .rda or .rdata"),
    ("list_one.rds", "x.rda", bridge.UnsupportedError, "saved as .rds, not 'x.rda'"),
    ("two_objects.rda", "missing/x.rds", bridge.NotFoundError, "does not exist; create it"),
    ("two_seurats.RData", "x.rds", bridge.InputError, "several objects"),
    ("mixed_ids.genes.txt", "x.rds", bridge.UnsupportedError, "write-back adds columns"),
])
def test_write_back_targets_are_checked_first(wild: Path, tmp_path: Path, source: str, out: str,
                                              error: type[Exception], phrase: str) -> None:
    from bridge.io.write_back import check_write_back

    with pytest.raises(error, match=phrase.replace(".", r"\.")):
        check_write_back(wild / source, tmp_path / out)


@pytest.mark.needs_r
def test_a_file_is_loaded_once_within_reuse_loaded(wild: Path) -> None:
    from bridge.io.rds import locate, reuse_loaded

    path = wild / "two_objects.rda"
    assert locate(path) is not locate(path)  # outside the block nothing is kept
    with reuse_loaded():
        first = locate(path)
        with reuse_loaded():  # nested blocks share the outer one's
            assert locate(path) is first
        assert bridge.read(path).keepalive.rid == first.rx2("object").rid  # the same R object
    assert locate(path) is not first


@pytest.mark.needs_r
def test_cli_write_back_from_an_rda(wild: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    # The case: annotate an .rda, write the annotated object back as .rds.
    out, back = tmp_path / "c.csv", tmp_path / "annotated.rds"
    assert main(["annotate", str(wild / "two_objects.rda"), "--out", str(out), "--quiet",
                 "--no-qc", "--write-back", str(back)]) == 0
    labels = [line.split(",")[1].strip('"') for line in out.read_text().splitlines()[1:4]]
    result = run_r(f'cat(attr(readRDS("{back}"), "meta.data")$cell_type[1:3], sep = "|")')
    assert result.split("|") == labels
    # A target that cannot be written is refused before anything is computed or written.
    late = tmp_path / "late.csv"
    assert main(["annotate", str(wild / "two_objects.rda"), "--out", str(late), "--quiet",
                 "--write-back", str(tmp_path / "annotated.h5ad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scbridge annotate: error[unsupported]:") and "saved as .rds" in err
    assert not late.exists()
    assert main(["annotate", "SeuratObject::pbmc_small", "--out", str(late), "--quiet",
                 "--write-back", str(tmp_path / "x.rds")]) == 2
    assert "saveRDS(SeuratObject::pbmc_small" in capsys.readouterr().err
    assert not late.exists()

"""``benchmarks/tissues.py --h5ad``: a held-out AnnData file with the authors' Cell Ontology ids
is scored beside the shipped data sets (fine truth: the id; coarse truth: its lineage).  Run on
a small synthetic islet file, so the documented command keeps working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
from _synthetic import synthetic_cells
from test_ambient_floor import BETA, DUCT, ENDOCRINE, SOUP

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "tissues.py"


def test_a_held_out_h5ad_is_scored(tmp_path: Path) -> None:
    matrix = synthetic_cells([([ENDOCRINE, BETA], 30), ([DUCT], 30)], seed=5, soup=SOUP)
    adata = matrix.to_anndata()
    adata.obs = pd.DataFrame({"cell_ontology_id": ["CL:0000169"] * 30 + ["CL:0002079"] * 30},
                             index=adata.obs_names)
    path = tmp_path / "islets.h5ad"
    adata.write_h5ad(path)
    done = subprocess.run([sys.executable, str(BENCHMARK), "--no-ref", "--only", "none",
                           "--h5ad", str(path)], capture_output=True, text=True, timeout=300,
                          cwd=BENCHMARK.parents[1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    row = lines[lines.index(next(x for x in lines if x.startswith("islets (60 x"))) + 1]
    coarse, fine = (float(v) for v in row.split()[2:4])
    assert coarse >= 0.9 and fine >= 0.9, row

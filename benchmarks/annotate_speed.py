"""Embedded marker engine vs CellTypist predict on the same matrix: time and peak memory;
and what the default QC costs (``bridge.annotate`` with and without ``qc``).

    /work/venv/bin/python benchmarks/annotate_speed.py            # 100,000 cells x 20,000 genes
    /work/venv/bin/python benchmarks/annotate_speed.py --small    # 10,000 cells, quick look

The matrix is random but shaped like droplet data: ~2,000 non-zeros per cell drawn from a
skewed gene popularity (a few genes in every cell, most rare), small integer counts, stored as
log1p(CP10k) because CellTypist requires that input (our engine reads it as ``lognorm``).
CellTypist needs a model: a small one is trained at start-up with ``celltypist.train`` on
labelled random cells over 2,000 genes (nothing is downloaded).  Each engine runs in a
forked child process, so its peak memory is measured alone: the child resets its resident
high-water mark (``/proc/self/clear_refs``) after the input is in memory and reports how far
the peak rose beyond it.  Printed: wall time of each, the ratio, and the memory peaks next to
the size of the input and of one 50,000-cell chunk.  Then ``bridge.annotate`` on the same cells
as raw counts, with its default QC and with ``qc=False`` (target: within 1.3x).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import time
import warnings

import numpy as np
import scipy.sparse as sp

GIB = 2**30


def make_matrix(n_cells: int, n_genes: int, nnz_per_cell: int, seed: int = 0,
                raw_counts: bool = False):
    """Log-normalised CSR (float32; raw counts with ``raw_counts=True``) with ~nnz_per_cell
    distinct genes per cell, and gene names that include the knowledge base's marker genes (so
    the engine does real work)."""
    from bridge.engines._marker_model import load_marker_model

    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_genes + 1) ** 0.6  # a Zipf-like spread of detection
    popularity = rng.permutation(popularity)
    cumulative = np.cumsum(popularity / popularity.sum())
    draws = int(nnz_per_cell * 1.17)  # duplicates are dropped; this lands near the target
    indptr = [0]
    index_chunks, value_chunks = [], []
    for start in range(0, n_cells, 5000):
        n = min(5000, n_cells - start)
        picked = np.searchsorted(cumulative, rng.random((n, draws)))
        picked = np.minimum(picked, n_genes - 1)
        picked.sort(axis=1)
        keep = np.ones_like(picked, dtype=bool)
        keep[:, 1:] = picked[:, 1:] != picked[:, :-1]
        per_cell = keep.sum(axis=1)
        indices = picked[keep].astype(np.int32)
        values = (1 + rng.poisson(0.6, size=len(indices))).astype(np.float32)
        row = np.repeat(np.arange(n), per_cell)
        totals = np.bincount(row, weights=values, minlength=n)
        if not raw_counts:
            values = np.log1p(values * (1e4 / totals[row])).astype(np.float32)
        index_chunks.append(indices)
        value_chunks.append(values)
        indptr.extend((indptr[-1] + np.cumsum(per_cell)).tolist())
    X = sp.csr_matrix((n_cells, n_genes), dtype=np.float32)
    X.data = np.concatenate(value_chunks)
    X.indices = np.concatenate(index_chunks)
    X.indptr = np.asarray(indptr, dtype=np.int64)
    X.has_sorted_indices = True
    markers = load_marker_model().genes
    genes = [*markers, *[f"GENE{i:05d}" for i in range(n_genes - len(markers))]]
    genes = np.asarray(rng.permutation(genes), dtype=object)
    return X, genes


def train_celltypist(X: sp.csr_matrix, genes: np.ndarray, n_model_genes: int, seed: int = 0):
    import anndata
    import celltypist
    import pandas as pd

    rng = np.random.default_rng(seed)
    cells = rng.choice(X.shape[0], size=min(2000, X.shape[0]), replace=False)
    cols = np.sort(rng.choice(X.shape[1], size=n_model_genes, replace=False))
    train = X[cells][:, cols]
    labels = rng.choice([f"type{i}" for i in range(8)], size=len(cells))
    adata = anndata.AnnData(train, obs=pd.DataFrame({"label": labels},
                                                    index=[f"t{i}" for i in cells]),
                            var=pd.DataFrame(index=genes[cols].astype(str)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return celltypist.train(adata, labels="label", feature_selection=False, max_iter=50,
                                n_jobs=1, check_expression=False)


def _peak_child(task, X, genes, model, queue) -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset VmHWM to the current resident size (input included)
    before = _status("VmHWM")
    start = time.perf_counter()
    n = task(X, genes, model)
    elapsed = time.perf_counter() - start
    queue.put((elapsed, _status("VmHWM") - before, n))


def _status(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def run_ours(X, genes, model) -> int:
    from bridge import call_cells
    from bridge.matrix import CellMatrix

    matrix = CellMatrix(X, [f"c{i}" for i in range(X.shape[0])], genes, value_kind="lognorm",
                        validate=False)
    return call_cells(matrix, progress=False).num_rows


def _counts_matrix(X, genes):
    from bridge import CellMatrix

    return CellMatrix(X, [f"c{i}" for i in range(X.shape[0])], genes, value_kind="counts",
                      validate=False)


def run_annotate_default(X, genes, model) -> int:
    import bridge

    return bridge.annotate(_counts_matrix(X, genes), progress=False).num_rows


def run_annotate_no_qc(X, genes, model) -> int:
    import bridge

    return bridge.annotate(_counts_matrix(X, genes), qc=False, progress=False).num_rows


def run_celltypist(X, genes, model) -> int:
    import anndata
    import celltypist
    import pandas as pd

    adata = anndata.AnnData(X, obs=pd.DataFrame(index=[f"c{i}" for i in range(X.shape[0])]),
                            var=pd.DataFrame(index=genes.astype(str)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = celltypist.annotate(adata, model=model, majority_voting=False)
    return len(result.predicted_labels)


def measure(task, X, genes, model) -> tuple[float, int, int]:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_peak_child, args=(task, X, genes, model, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="10,000 cells (a quick look)")
    parser.add_argument("--cells", type=int, default=None)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--nnz", type=int, default=2_000, help="non-zeros per cell")
    parser.add_argument("--model-genes", type=int, default=2_000,
                        help="genes in the CellTypist model (its predict densifies cells x "
                             "model genes)")
    args = parser.parse_args()
    n_cells = args.cells or (10_000 if args.small else 100_000)
    logging.getLogger("celltypist").setLevel(logging.WARNING)

    start = time.perf_counter()
    X, genes = make_matrix(n_cells, args.genes, args.nnz)
    input_bytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    chunk_bytes = input_bytes * min(1.0, 50_000 / n_cells)
    print(f"matrix: {n_cells:,} cells x {args.genes:,} genes, {X.nnz / n_cells:,.0f} non-zeros "
          f"per cell, {input_bytes / GIB:.2f} GiB in memory "
          f"(built in {time.perf_counter() - start:.1f} s)")
    start = time.perf_counter()
    model = train_celltypist(X, genes, args.model_genes)
    print(f"CellTypist model: {len(model.classifier.features):,} genes, "
          f"{len(model.classifier.classes_)} labels (trained in {time.perf_counter() - start:.1f} s)")

    ours_t, ours_mem, n1 = measure(run_ours, X, genes, model)
    ct_t, ct_mem, n2 = measure(run_celltypist, X, genes, model)
    assert n1 == n2 == n_cells
    print()
    print(f"{'engine':<34}{'time':>10}{'peak beyond input':>20}")
    print(f"{'scbridge markers (call_cells)':<34}{ours_t:>9.2f}s{ours_mem / GIB:>17.2f} GiB")
    print(f"{'CellTypist annotate (predict)':<34}{ct_t:>9.2f}s{ct_mem / GIB:>17.2f} GiB")
    print()
    print(f"speed: scbridge takes {ours_t / ct_t:.2f}x CellTypist's time "
          f"({ct_t / ours_t:.2f}x faster)" if ours_t <= ct_t else
          f"speed: scbridge takes {ours_t / ct_t:.2f}x CellTypist's time (slower)")
    print(f"memory: scbridge peak beyond input = {ours_mem / chunk_bytes:.2f} x one 50,000-cell "
          f"chunk ({chunk_bytes / GIB:.2f} GiB); CellTypist = {ct_mem / chunk_bytes:.2f} x")
    del X
    counts, genes = make_matrix(n_cells, args.genes, args.nnz, raw_counts=True)
    qc_t, qc_mem, n3 = measure(run_annotate_default, counts, genes, None)
    bare_t, bare_mem, n4 = measure(run_annotate_no_qc, counts, genes, None)
    assert n3 == n4 == n_cells
    print()
    print(f"{'bridge.annotate on raw counts':<34}{'time':>10}{'peak beyond input':>20}")
    print(f"{'default (QC metrics)':<34}{qc_t:>9.2f}s{qc_mem / GIB:>17.2f} GiB")
    print(f"{'qc=False':<34}{bare_t:>9.2f}s{bare_mem / GIB:>17.2f} GiB")
    print(f"QC overhead: default annotate takes {qc_t / bare_t:.2f}x the time of qc=False "
          "(target <= 1.3x)")
    print(f"(the {os.cpu_count()} CPU cores are shared; run on a quiet machine for stable times)")


if __name__ == "__main__":
    main()

"""The 2-D layout: ours (bridge._layout) beside scanpy's UMAP on the same PCA, and the report.

    python benchmarks/layout.py                       # 3,774, 30,000 and 100,000 cells
    python benchmarks/layout.py --sizes 3774 30000    # fewer sizes
    python benchmarks/layout.py --candidates          # also umap-learn (parallel) and openTSNE
    python benchmarks/layout.py --cli                 # scbridge annotate with / without --report

Cells are resampled with replacement from the real FACS-sorted PBMCs
(../shared/data/sorted_pbmc_seurat.rds, read with ``bridge.read``), each count thinned
binomially (p = 0.9) so that copies of a cell are not identical; ``bridge.embed`` gives the
30-component PCA that both sides start from.  Each layout runs in a fresh subprocess, so
imports and JIT compilation count as a user meets them; the seconds are wall time of the
child from its first import to the coordinates, peak memory is the child's peak resident
set.  Ours reports whether numba's on-disk cache of its kernels was warm; when it is cold,
one small warm-up run compiles it first and its time is printed too.

Neighbourhood preservation: the mean fraction of each cell's 15 nearest PCA neighbours (exact,
the cell itself excluded) that are among its 15 nearest neighbours in the layout.

``--cli``: ``scbridge annotate`` of the 3,500-cell sorted PBMC Seurat file, alone and with
``--report``, each in a fresh process (the issue's target: the report within 2x).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's bridge, not another installed one
DATA = ROOT.parent / "shared" / "data" / "sorted_pbmc_seurat.rds"
if not DATA.exists():  # a git worktree beside the main checkout
    DATA = Path("/work/shared/data/sorted_pbmc_seurat.rds")
K = 15
CHILD_ENV = {**os.environ,
             "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


# -- children (one layout each, in a fresh interpreter) -------------------------------------
def _peak_mib() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, not inherited from the
    parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(kind: str, pca_path: str, out_path: str) -> None:
    import resource

    start = time.perf_counter()
    info: dict[str, object] = {}
    if kind == "warm-up":
        from bridge import _layout

        info["cache"] = _layout.warm_kernels()
        coords = np.zeros((1, 2))
    elif kind == "ours":
        from bridge import _layout

        info["cache"] = _layout.kernel_cache()
        pca = np.load(pca_path)
        graph = _layout.nearest_neighbours(pca, K, seed=0)
        info["knn_s"] = time.perf_counter() - start
        coords = _layout.umap_layout(graph, pca[:, :2], seed=0)
    elif kind == "scanpy":
        import anndata
        import scanpy as sc
        import scipy.sparse as sp

        if not hasattr(sp.csr_array, "getnnz"):
            # scipy 1.17 removed csr_array.getnnz, which scanpy 1.11's neighbors still calls
            # above 4,096 cells; the same count under its new name.
            sp.csr_array.getnnz = lambda self, axis=None: self._getnnz(axis=axis)
        pca = np.load(pca_path)
        adata = anndata.AnnData(np.zeros((len(pca), 1), np.float32))
        adata.obsm["X_pca"] = pca
        sc.pp.neighbors(adata, n_neighbors=K, use_rep="X_pca", random_state=0)
        info["knn_s"] = time.perf_counter() - start
        sc.tl.umap(adata, random_state=0)
        coords = adata.obsm["X_umap"]
    elif kind == "umap-learn":  # parallel (no random_state), its own kNN
        import umap

        pca = np.load(pca_path)
        coords = umap.UMAP(n_neighbors=K, min_dist=0.5, n_jobs=-1).fit_transform(pca)
    elif kind == "opentsne":
        from openTSNE import TSNE

        pca = np.load(pca_path)
        coords = np.asarray(TSNE(n_jobs=2, random_state=0, negative_gradient_method="fft")
                            .fit(pca))
    else:
        raise SystemExit(f"unknown child {kind}")
    info["seconds"] = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    info["cpu_s"] = usage.ru_utime + usage.ru_stime
    info["peak_mib"] = _peak_mib()
    np.save(out_path, np.asarray(coords, dtype=np.float32))
    print(json.dumps(info))


def run_child(kind: str, pca_path: Path, out_path: Path, env: dict[str, str] | None = None
              ) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--child", kind, str(pca_path), str(out_path)]
    wall = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env or CHILD_ENV, cwd=ROOT)
    wall = time.perf_counter() - wall
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    info["process_s"] = wall  # with interpreter start-up
    return info


# -- data -----------------------------------------------------------------------------------
def resampled_pca(n_cells: int, folder: Path, seed: int = 0) -> tuple[Path, float]:
    """PCA (bridge.embed, 30 components) of n_cells resampled, thinned sorted PBMCs."""
    import bridge
    from bridge._contract import embedding_array
    from bridge.matrix import CellMatrix

    source = bridge.read(DATA)
    rng = np.random.default_rng(seed + n_cells)
    rows = rng.integers(0, source.n_cells, n_cells)
    X = source.X[rows].tocsr().astype(np.float32)
    X.data = rng.binomial(X.data.astype(np.int64), 0.9).astype(np.float32)
    X.eliminate_zeros()
    cells = [f"cell{i}" for i in range(n_cells)]
    matrix = CellMatrix(X, cells, source.genes, value_kind="counts", source="resampled PBMC")
    start = time.perf_counter()
    pca = embedding_array(bridge.embed(matrix, n_components=30, seed=seed))
    embed_s = time.perf_counter() - start
    path = folder / f"pca_{n_cells}.npy"
    np.save(path, pca)
    return path, embed_s


def _fmt_cache(info: dict[str, object]) -> str:
    cache = info.get("cache") or {}
    assert isinstance(cache, dict)
    state = {True: "warm", False: "COLD (compiled in this run)", None: "unknown"}
    return state.get(cache.get("warm"), "unknown")  # type: ignore[arg-type]


def layout_benchmark(sizes: list[int], candidates: bool, peer: bool = True) -> None:
    from bridge import _layout

    cache = _layout.kernel_cache()
    print(f"numba kernel cache: {cache['path']} ({'warm' if cache['warm'] else 'cold'})")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if not cache["warm"]:
            info = run_child("warm-up", folder / "none.npy", folder / "warm.npy")
            print(f"cold cache: compiling the kernels once took {info['seconds']:.1f} s "
                  "(bridge._layout.warm_kernels(), as tools/install.sh runs it); every later "
                  "process loads them from the cache")
        rows = []
        for n in sizes:
            path, embed_s = resampled_pca(n, folder)
            pca = np.load(path)
            truth = _layout.nearest_neighbours(pca, K + 1, exact=True)
            results = {}
            kinds = ["ours"] + (["scanpy"] if peer else []) + (
                ["umap-learn", "opentsne"] if candidates else [])
            for kind in kinds:
                out = folder / f"{kind}_{n}.npy"
                info = run_child(kind, path, out)
                info["preservation"] = _layout.neighbourhood_preservation(
                    pca, np.load(out), K, graph=truth)
                results[kind] = info
                print(f"  {n:>7,} cells  {kind:<10} {info['seconds']:7.1f} s  "
                      f"(CPU {info['cpu_s']:6.1f} s)  peak {info['peak_mib']:6.0f} MiB  preservation "
                      f"{info['preservation']:.3f}"
                      + (f"  (kNN {info['knn_s']:.1f} s, cache {_fmt_cache(info)})"
                         if kind == "ours" else ""), flush=True)
            rows.append((n, embed_s, results))
    if not peer:
        return
    print()
    print("| cells | PCA (bridge.embed) | ours: s (CPU s) / peak MiB / preservation | scanpy "
          "neighbors + umap: s (CPU s) / peak MiB / preservation | speed-up (wall, CPU) | "
          "preservation diff |")
    print("| ---: | ---: | --- | --- | ---: | ---: |")
    for n, embed_s, res in rows:
        o, s = res["ours"], res["scanpy"]
        print(f"| {n:,} | {embed_s:.1f} s | {o['seconds']:.1f} ({o['cpu_s']:.1f}) / "
              f"{o['peak_mib']:.0f} / {o['preservation']:.3f} | {s['seconds']:.1f} "
              f"({s['cpu_s']:.1f}) / {s['peak_mib']:.0f} / {s['preservation']:.3f} | "
              f"{s['seconds'] / o['seconds']:.1f}x, {s['cpu_s'] / o['cpu_s']:.1f}x | "
              f"{o['preservation'] - s['preservation']:+.3f} |")
    if candidates:
        print()
        for n, _, res in rows:
            for kind in ("umap-learn", "opentsne"):
                r = res[kind]
                print(f"{n:,} cells, {kind}: {r['seconds']:.1f} s, peak {r['peak_mib']:.0f} "
                      f"MiB, preservation {r['preservation']:.3f}")


# -- the CLI with and without --report -------------------------------------------------------
def cli_benchmark(repeats: int) -> None:
    env = CHILD_ENV
    with tempfile.TemporaryDirectory() as tmp:
        def annotate(*extra: str) -> float:
            cmd = [sys.executable, "-m", "bridge", "annotate", str(DATA), "--out",
                   f"{tmp}/calls.parquet", "--quiet", *extra]
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            return time.perf_counter() - start

        annotate()  # R, imports and numba caches warm, as for a user's second command
        plain = min(annotate() for _ in range(repeats))
        report = min(annotate("--report", f"{tmp}/report.html") for _ in range(repeats))
        both = min(annotate("--report", f"{tmp}/report.html", "--write-back",
                            f"{tmp}/annotated.rds") for _ in range(repeats))
    print(f"scbridge annotate sorted PBMC (3,500 cells), fresh processes, best of {repeats}:")
    print(f"  annotate alone               {plain:6.1f} s")
    print(f"  with --report                {report:6.1f} s  ({report / plain:.2f}x)")
    print(f"  with --report --write-back   {both:6.1f} s  ({both / plain:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3774, 30_000, 100_000])
    parser.add_argument("--candidates", action="store_true",
                        help="also umap-learn (parallel, unseeded) and openTSNE (FFT)")
    parser.add_argument("--cli", action="store_true", help="only the CLI report benchmark")
    parser.add_argument("--no-peer", action="store_true",
                        help="ours only (scanpy's UMAP of 100,000 cells takes many minutes)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    if not DATA.exists():
        raise SystemExit(f"{DATA} is missing (the shared sorted PBMC data)")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    if args.cli:
        cli_benchmark(args.repeats)
    else:
        layout_benchmark(args.sizes, args.candidates, peer=not args.no_peer)
    print(f"load average {os.getloadavg()[0]:.1f} at the end (other work on the machine slows "
          "both sides)")


if __name__ == "__main__":
    main()

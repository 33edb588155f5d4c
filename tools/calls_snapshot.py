"""Save the embedded engine's calls on the labelled data sets, or compare with a saved set.

For changes that must not change any call (speed work): run ``save`` on the old code, then
``compare`` on the new.  Data sets: sorted PBMC and every folder of ``tissues/`` under the
shared data folder, plus a synthetic log-normalised matrix shaped like the speed benchmark's
(``benchmarks/annotate_speed.py``) and a synthetic counts matrix.  Every column of the Calls
table is compared exactly; ``confidence`` by its float32 bits (the largest difference is
printed in units in the last place).

Run from the repository root::

    PYTHONPATH=. .venv/bin/python tools/calls_snapshot.py save /tmp/calls-before
    PYTHONPATH=. .venv/bin/python tools/calls_snapshot.py compare /tmp/calls-before
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def matrices(data: Path) -> Iterator[tuple[str, object]]:
    """(name, CellMatrix) for every data set."""
    import bridge
    from bridge.matrix import CellMatrix

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from annotate_speed import make_matrix

    yield "sorted_pbmc", bridge.read(data / "sorted_pbmc_seurat.rds")
    for folder in sorted(p for p in (data / "tissues").iterdir() if p.is_dir()):
        yield folder.name, bridge.read(folder / "counts.rds")
    for name, n, seed, counts in (("synthetic_lognorm", 20_000, 0, False),
                                  ("synthetic_counts", 5_000, 1, True)):
        X, genes = make_matrix(n, 20_000, 2_000, seed=seed, raw_counts=counts)
        yield name, CellMatrix(X, [f"c{i}" for i in range(n)], genes,
                               value_kind="counts" if counts else "lognorm", validate=False)


def calls(data: Path) -> Iterator[tuple[str, pa.Table]]:
    from bridge import call_cells

    for name, matrix in matrices(data):
        start = time.perf_counter()
        table = call_cells(matrix, progress=False)  # type: ignore[arg-type]
        print(f"{name}: {table.num_rows:,} cells, {time.perf_counter() - start:.2f} s")
        yield name, table.replace_schema_metadata(None)


def differences(name: str, before: pa.Table, now: pa.Table) -> list[str]:
    if before.column_names != now.column_names or before.num_rows != now.num_rows:
        return [f"{name}: columns or rows differ"]
    out = []
    for column in before.column_names:
        a, b = before.column(column), now.column(column)
        if column == "confidence":
            bits_a = a.to_numpy().astype(np.float32).view(np.int32).astype(np.int64)
            bits_b = b.to_numpy().astype(np.float32).view(np.int32).astype(np.int64)
            ulp = np.abs(bits_a - bits_b)
            if ulp.any():
                out.append(f"{name}.confidence: {int((ulp > 0).sum())} cells differ, "
                           f"at most {int(ulp.max())} ulp")
        elif a.to_pylist() != b.to_pylist():
            n = sum(x != y for x, y in zip(a.to_pylist(), b.to_pylist(), strict=True))
            out.append(f"{name}.{column}: {n} cells differ")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["save", "compare"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    problems = []
    for name, table in calls(args.data):
        path = args.folder / f"{name}.arrow"
        if args.mode == "save":
            with ipc.new_file(path, table.schema) as writer:
                writer.write_table(table)
            continue
        before = ipc.open_file(path).read_all()
        problems += differences(name, before, table)
    if args.mode == "compare":
        print("\n".join(problems) if problems else "identical calls on every data set")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

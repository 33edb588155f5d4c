"""Every writer, interrupted mid-write by SIGINT and by SIGTERM in a real subprocess.

Each case runs a writer (the Python API or the ``scbridge`` command) in a child process over
data large enough that writing takes a while, watches the target's folder for the writer's
temporary file, and sends the signal as soon as it appears.  Whatever the moment, every target
must afterwards hold either its old bytes or a complete new file, the inputs must be byte for
byte unchanged, and no temporary file may be left behind.  A case retries with more data until
it has seen the child actually stopped by the signal, so a writer too fast to interrupt cannot
make the test pass vacuously.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from bridge.io._files import TEMP_MARK

pytest.register_assert_rewrite("tests._server")
from tests._server import subprocess_env  # noqa: E402

pytestmark = pytest.mark.slow
pytest_plugins = ["tests._server"]

OLD = b"old bytes of a previous run, which must survive an interrupted write\n"
SIGNALS = [signal.SIGINT, signal.SIGTERM]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_input_h5ad(path: Path, n_cells: int, n_genes: int = 2000, seed: int = 0) -> None:
    import anndata
    import pandas as pd

    rng = np.random.default_rng(seed)
    X = sp.random(n_cells, n_genes, density=0.05, format="csr", random_state=rng,
                  dtype=np.float32)
    X.data = np.ceil(X.data * 20)
    obs = pd.DataFrame({"label": pd.Categorical(rng.choice(["B", "T", "NK"], n_cells))},
                       index=[f"c{i}" for i in range(n_cells)])
    anndata.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)])
                    ).write_h5ad(path)


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(f".*{TEMP_MARK}*"))


def run_interrupted(argv: list[str], folder: Path, signum: int) -> int | None:
    """Start ``argv``; signal it when a temporary file shows up in ``folder``; return its
    exit status (``None`` when it finished before any temporary file was seen)."""
    proc = subprocess.Popen(argv, env=subprocess_env(), cwd=folder,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    signalled = False
    try:
        while proc.poll() is None:
            if temporaries(folder):
                proc.send_signal(signum)
                signalled = True
                break
            time.sleep(0.002)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not unexpected_traceback(stderr.decode(errors="replace")), \
        stderr.decode(errors="replace")[-3000:]
    return proc.returncode if signalled else None


def unexpected_traceback(stderr: str) -> bool:
    """A traceback other than the interrupt itself (KeyboardInterrupt / SystemExit) or the
    "Exception ignored in ... __del__" notes Python prints for objects a signal caught half
    built (rpy2's SexpCapsule, when SIGTERM lands inside rpy2) while it shuts down."""
    lines = stderr.splitlines()
    for k, line in enumerate(lines):
        if not line.startswith("Traceback (most recent call last):"):
            continue
        if k and lines[k - 1].startswith("Exception ignored in"):
            continue
        tail = "\n".join(lines[k:])
        if "KeyboardInterrupt" not in tail and "SystemExit" not in tail:
            return True
    return False


def stopped_by_signal(returncode: int | None, signum: int) -> bool:
    """Whether the child was stopped by the signal rather than finishing its work."""
    return returncode in (-signum, 128 + signum)


def check_case(folder: Path, argv: Callable[[int], list[str]], targets: dict[str, Callable],
               inputs: list[Path], signum: int, sizes: tuple[int, ...],
               prepare: Callable[[int], list[Path]] | None = None) -> None:
    """Run the writer interrupted, with growing data, until one run is really interrupted
    (``prepare(size)`` makes the inputs of a size, only when that size is needed)."""
    interrupted = False
    for size in sizes:
        if prepare is not None:
            inputs = [*inputs, *prepare(size)]
        before = {p: digest(p) for p in inputs}
        for name in targets:
            (folder / name).write_bytes(OLD)
        returncode = run_interrupted(argv(size), folder, signum)
        for name, is_complete in targets.items():
            target = folder / name
            assert target.exists(), f"{name} vanished"
            if target.read_bytes() != OLD:
                assert is_complete(target, size), f"{name} is neither the old file nor complete"
        assert {p: digest(p) for p in inputs} == before, "an input changed"
        assert temporaries(folder) == [], "a temporary file was left behind"
        if stopped_by_signal(returncode, signum):
            interrupted = True
            break
    assert interrupted, "the writer always finished before the signal; give it more data"


# -- what a complete new file is -----------------------------------------------------------------
def arrow_complete(path: Path, size: int) -> bool:
    import bridge

    return bridge.read(path, validate=False).n_cells == size


def h5ad_complete(path: Path, size: int) -> bool:
    import anndata

    return anndata.read_h5ad(path).n_obs == size


def parquet_complete(rows: int | None = None) -> Callable[[Path, int], bool]:
    def check(path: Path, size: int) -> bool:
        import pyarrow.parquet as pq

        return pq.read_table(path).num_rows == (rows or size)

    return check


def html_complete(path: Path, size: int) -> bool:
    return path.read_text().rstrip().endswith("</html>")


def rds_complete(path: Path, size: int) -> bool:
    out = subprocess.run(["Rscript", "-e", f'x <- readRDS("{path}"); cat(ncol(x))'],
                         capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() == str(size)


# -- the writers -------------------------------------------------------------------------------
# Writers of small files (calls, reports, references) finish in milliseconds: for them the
# command runs with the file-writing call slowed down *inside* the writer (the bytes are all
# written, then it waits), so the signal lands while the writer holds its temporary file.
SLOW_CLI = textwrap.dedent("""
    import sys, time, pathlib
    import pyarrow.parquet as pq
    write_table, write_text = pq.write_table, pathlib.Path.write_text
    def slow_table(*args, **kwargs):
        write_table(*args, **kwargs)
        time.sleep(5)
    def slow_text(self, *args, **kwargs):
        out = write_text(self, *args, **kwargs)
        time.sleep(5)
        return out
    pq.write_table, pathlib.Path.write_text = slow_table, slow_text
    from bridge.cli import main
    sys.exit(main(sys.argv[1:]))
""")


PYTHON_WRITE = textwrap.dedent("""
    import sys
    import numpy as np, scipy.sparse as sp
    import bridge
    from bridge.matrix import CellMatrix
    n, out = int(sys.argv[1]), sys.argv[2]
    rng = np.random.default_rng(0)
    X = sp.random(n, 2000, density=0.05, format="csr", random_state=rng, dtype=np.float32)
    X.data = np.ceil(X.data * 20)
    m = CellMatrix(X, [f"c{i}" for i in range(n)], [f"G{j}" for j in range(2000)])
    options = {"chunk_size": 2000} if out.endswith(".arrow") else {}
    if out.endswith(".rds"):
        options = {"compress": True}
    bridge.write(m, out, **options)
""")


@pytest.mark.parametrize("signum", SIGNALS, ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("suffix", [".arrow", ".h5ad"])
def test_bridge_write(tmp_path: Path, suffix: str, signum: int) -> None:
    script = tmp_path / "write.py"
    script.write_text(PYTHON_WRITE)
    complete = arrow_complete if suffix == ".arrow" else h5ad_complete
    check_case(tmp_path, lambda n: [sys.executable, str(script), str(n), f"out{suffix}"],
               {f"out{suffix}": complete}, [], signum, (40_000, 120_000, 300_000))


@pytest.mark.needs_r
@pytest.mark.parametrize("signum", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_bridge_write_rds(tmp_path: Path, signum: int) -> None:
    script = tmp_path / "write.py"
    script.write_text(PYTHON_WRITE)
    check_case(tmp_path, lambda n: [sys.executable, str(script), str(n), "out.rds"],
               {"out.rds": rds_complete}, [], signum, (30_000, 100_000, 250_000))


@pytest.mark.parametrize("signum", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_scbridge_convert(tmp_path: Path, signum: int) -> None:
    def prepare(n: int) -> list[Path]:
        write_input_h5ad(tmp_path / f"in{n}.h5ad", n)
        return [tmp_path / f"in{n}.h5ad"]

    check_case(tmp_path, lambda n: [sys.executable, "-m", "bridge", "convert", f"in{n}.h5ad",
                                    "out.arrow", "--chunk-size", "2000"],
               {"out.arrow": arrow_complete}, [], signum, (30_000, 100_000, 250_000), prepare)


WRITE_BACK = textwrap.dedent("""
    import sys
    import pyarrow as pa
    import bridge
    n, source, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    cells = [f"c{i}" for i in range(n)]
    bridge.write_back(source, pa.table({"cell": cells, "cell_type": ["B cell"] * len(cells)}),
                      out, overwrite=True)
""")


@pytest.mark.parametrize("signum", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_write_back_h5ad(tmp_path: Path, signum: int) -> None:
    def prepare(n: int) -> list[Path]:
        write_input_h5ad(tmp_path / f"in{n}.h5ad", n)
        return [tmp_path / f"in{n}.h5ad"]

    script = tmp_path / "write_back.py"
    script.write_text(WRITE_BACK)

    def complete(path: Path, size: int) -> bool:
        import anndata

        back = anndata.read_h5ad(path)
        return back.n_obs == size and (back.obs["cell_type"] == "B cell").all()

    check_case(tmp_path, lambda n: [sys.executable, str(script), str(n), f"in{n}.h5ad",
                                    "out.h5ad"],
               {"out.h5ad": complete}, [], signum, (60_000, 200_000), prepare)


@pytest.mark.needs_r
@pytest.mark.parametrize("signum", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_write_back_rds(tmp_path: Path, signum: int) -> None:
    def prepare(n: int) -> list[Path]:
        subprocess.run(["Rscript", "-e", textwrap.dedent(f"""
            suppressMessages({{library(Matrix); library(SeuratObject)}})
            set.seed(1)
            m <- rsparsematrix(1000, {n}, 0.05); m@x <- abs(round(m@x * 10)) + 1
            dimnames(m) <- list(paste0("G", 1:1000), paste0("c", 0:({n} - 1)))
            saveRDS(CreateSeuratObject(m), "{tmp_path}/in{n}.rds", compress = FALSE)
        """)], check=True, capture_output=True)
        return [tmp_path / f"in{n}.rds"]

    script = tmp_path / "write_back.py"
    script.write_text(WRITE_BACK)

    def complete(path: Path, size: int) -> bool:
        out = subprocess.run(["Rscript", "-e", f'x <- readRDS("{path}"); '
                              'cat(ncol(x), all(x@meta.data$cell_type == "B cell"))'],
                             capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.split() == [str(size), "TRUE"]

    check_case(tmp_path, lambda n: [sys.executable, str(script), str(n), f"in{n}.rds",
                                    "out.rds"],
               {"out.rds": complete}, [], signum, (20_000, 80_000), prepare)


@pytest.mark.parametrize("signum", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_scbridge_annotate_outputs(tmp_path: Path, reference_file: Path, signum: int) -> None:
    """``--out``, ``--write-back`` and ``--report`` of one command: each old or complete."""
    import bridge
    from tests._server import synthetic_cells

    source = tmp_path / "in.h5ad"
    bridge.write(synthetic_cells(2000, seed=3), source)
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)

    def complete_back(path: Path, size: int) -> bool:
        import anndata

        return "cell_type" in anndata.read_h5ad(path).obs.columns

    check_case(tmp_path,
               lambda n: [sys.executable, str(script), "annotate", "in.h5ad",
                          "--model", "reference", "--atlas", str(reference_file), "--no-qc",
                          "--quiet", "--out", "calls.parquet", "--write-back", "back.h5ad",
                          "--report", "report.html"],
               {"calls.parquet": parquet_complete(2000), "back.h5ad": complete_back,
                "report.html": html_complete}, [source, reference_file], signum, (2000,))


@pytest.mark.parametrize("signum", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_scbridge_build_reference(tmp_path: Path, signum: int) -> None:
    import bridge
    from tests._server import synthetic_cells

    source = tmp_path / "labelled.arrow"
    bridge.write(synthetic_cells(3000, n_genes=3000, seed=5), source)

    def complete(path: Path, size: int) -> bool:
        from bridge.engines.reference import load_reference

        return load_reference(path).n_labels == 3

    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    check_case(tmp_path,
               lambda n: [sys.executable, str(script), "build-reference", "labelled.arrow",
                          "--label-column", "label", "--out", "ref.parquet", "--quiet",
                          "--genes-per-label", "20", "--no-calibrate"],
               {"ref.parquet": complete}, [source], signum, (0,))


@pytest.mark.parametrize("signum", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_scbridge_table_writers(tmp_path: Path, signum: int) -> None:
    """``write_table`` (qc, embed, rank-markers) through ``scbridge rank-markers --out``."""
    import bridge
    from tests._server import synthetic_cells

    source = tmp_path / "labelled.arrow"
    bridge.write(synthetic_cells(600, seed=6), source)
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    check_case(tmp_path,
               lambda n: [sys.executable, str(script), "rank-markers", "labelled.arrow",
                          "--groups", "label", "--top-n", "5", "--out", "markers.parquet",
                          "--quiet"],
               {"markers.parquet": parquet_complete(15)}, [source], signum, (0,))

"""Shared fixtures.

Tests marked ``needs_r`` skip where R / rpy2 / the R packages are missing, for outside users.
With ``SCBRIDGE_REQUIRE_R=1`` (set by ``.ci/run``) a missing R is a failure instead, so CI can
never pass by skipping the R tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

# ../shared/data beside the project; SCBRIDGE_SHARED_DATA points elsewhere (a git worktree).
SHARED_DATA = Path(os.environ.get("SCBRIDGE_SHARED_DATA")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "data")
R_PACKAGES = ("Matrix", "SeuratObject", "SingleCellExperiment", "DelayedArray")


@cache
def r_status() -> str | None:
    """None when R, rpy2 and the R packages are usable; otherwise why not."""
    try:
        import rpy2  # noqa: F401
    except ImportError as exc:
        return f"rpy2 is not installed ({exc})"
    rscript = shutil.which("Rscript")
    if rscript is None:
        return "Rscript is not on PATH"
    check = "ok <- sapply(c({}), requireNamespace, quietly = TRUE); cat(names(ok)[!ok])".format(
        ", ".join(f"'{p}'" for p in R_PACKAGES)
    )
    out = subprocess.run([rscript, "-e", check], capture_output=True, text=True, check=False)
    missing = out.stdout.strip()
    return f"R packages missing: {missing}" if missing or out.returncode else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("needs_r") for item in items):
        return
    reason = r_status()
    if reason is None:
        return
    if os.environ.get("SCBRIDGE_REQUIRE_R") == "1":
        raise pytest.UsageError(f"SCBRIDGE_REQUIRE_R=1 but R is unusable: {reason}")
    skip = pytest.mark.skip(reason=f"needs R: {reason}")
    for item in items:
        if item.get_closest_marker("needs_r"):
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    # In CI an R test that skips (for any reason, from inside the test too) is a failure.
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and item.get_closest_marker("needs_r")
            and os.environ.get("SCBRIDGE_REQUIRE_R") == "1"):
        report.outcome = "failed"
        report.longrepr = f"SCBRIDGE_REQUIRE_R=1 but this R test skipped: {report.longrepr}"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (sorted PBMC), or skip where it is absent."""
    if not (SHARED_DATA / "sorted_pbmc_seurat.rds").exists():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def r_fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """R fixtures built by tests/r/make_fixtures.R with the real R, plus R's expected values."""
    if r_status() is not None:
        pytest.skip(f"needs R: {r_status()}")
    out = tmp_path_factory.mktemp("r_fixtures")
    script = Path(__file__).parent / "r" / "make_fixtures.R"
    done = subprocess.run(["Rscript", str(script), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def run_r(code: str) -> str:
    """Run R code in a fresh Rscript process; returns stdout, fails the test on an R error."""
    done = subprocess.run(["Rscript", "-e", code], capture_output=True, text=True)
    assert done.returncode == 0, f"R failed:\n{done.stderr}"
    return done.stdout

"""Shared fixtures.

Tests marked ``needs_r`` skip where R / rpy2 / the R packages are missing, for outside users.
With ``SCBRIDGE_REQUIRE_R=1`` (set by ``.ci/run``) a missing R is a failure instead, so CI can
never pass by skipping the R tests.  Tests marked ``needs_browser`` (Playwright driving the
system Chromium) do the same under ``SCBRIDGE_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

# ../shared/data beside the repository (searched upwards, so git worktrees find it too);
# SCBRIDGE_SHARED_DATA points elsewhere.
SHARED_DATA = (Path(os.environ["SCBRIDGE_SHARED_DATA"]) if os.environ.get("SCBRIDGE_SHARED_DATA")
               else next((p / "shared" / "data" for p in Path(__file__).resolve().parents
                          if (p / "shared" / "data").is_dir()),
                         Path(__file__).resolve().parents[1].parent / "shared" / "data"))
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


CHROMIUM = os.environ.get("SCBRIDGE_CHROMIUM", "/usr/bin/chromium")


@cache
def browser_status() -> str | None:
    """None when Playwright and the system Chromium are usable; otherwise why not."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"playwright is not installed ({exc}; pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SCBRIDGE_CHROMIUM)"
    return None


# marker -> (what is missing, or None; the environment switch that makes a skip a failure)
_ENFORCED = {"needs_r": (r_status, "SCBRIDGE_REQUIRE_R"),
             "needs_browser": (browser_status, "SCBRIDGE_REQUIRE_BROWSER")}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for marker, (status, switch) in _ENFORCED.items():
        if not any(item.get_closest_marker(marker) for item in items):
            continue
        reason = status()
        if reason is None:
            continue
        if os.environ.get(switch) == "1":
            raise pytest.UsageError(f"{switch}=1 but {marker} tests cannot run: {reason}")
        skip = pytest.mark.skip(reason=f"{marker}: {reason}")
        for item in items:
            if item.get_closest_marker(marker):
                item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    # In CI an R or browser test that skips (for any reason, from inside the test too) is a
    # failure.
    outcome = yield
    report = outcome.get_result()
    if not report.skipped:
        return
    for marker, (_, switch) in _ENFORCED.items():
        if item.get_closest_marker(marker) and os.environ.get(switch) == "1":
            report.outcome = "failed"
            report.longrepr = f"{switch}=1 but this {marker} test skipped: {report.longrepr}"
            return


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

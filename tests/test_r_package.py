"""The R package's testthat suite (r-package/tests/testthat), run with the real R.

The package is installed into a temporary library and its tests run with a ListReporter whose
per-test results come back as JSON. Any failure or error fails this test. Engine tests need
the Python core: they get this interpreter (``SCBRIDGE_PYTHON``, default ``sys.executable``)
and its ``scbridge`` command. Under ``SCBRIDGE_REQUIRE_R=1`` (CI) a skipped testthat test is a
failure too, so the engines can never pass by not running, with one exception: the Arrow
transport's tests, which skip where neither the R package nanoarrow nor arrow is installed
(Debian packages neither); their skip message starts with ``Arrow transport:`` and names the
missing package, and it is printed (and warned) on every run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "r-package"

RUN_TESTS = r"""
args <- commandArgs(trailingOnly = TRUE)
.libPaths(c(args[[1]], .libPaths()))
suppressPackageStartupMessages(library(testthat))
reporter <- ListReporter$new()
res <- test_dir(args[[2]], package = "scbridge", load_package = "installed",
                reporter = reporter, stop_on_failure = FALSE, stop_on_warning = FALSE)
df <- as.data.frame(res)
messages <- lapply(res, function(t) vapply(t$results, function(r) {
  if (inherits(r, "expectation_success")) return("")
  paste(class(r)[[1]], conditionMessage(r))
}, character(1)))
out <- lapply(seq_len(nrow(df)), function(k) list(
  file = df$file[[k]], test = df$test[[k]], failed = df$failed[[k]],
  skipped = isTRUE(df$skipped[[k]]), error = isTRUE(df$error[[k]]), passed = df$passed[[k]],
  messages = unname(Filter(nzchar, messages[[k]]))))
writeLines(jsonlite::toJSON(out, auto_unbox = TRUE), args[[3]])
"""


def _engine_env() -> dict[str, str]:
    env = dict(os.environ)
    # testthat runs message snapshots (expect_snapshot) only off CRAN; they are part of the suite.
    env.setdefault("NOT_CRAN", "true")
    python = env.get("SCBRIDGE_PYTHON") or sys.executable
    env["SCBRIDGE_PYTHON"] = python
    cli = Path(python).parent / "scbridge"
    if "SCBRIDGE_CLI" not in env and cli.exists():
        env["SCBRIDGE_CLI"] = str(cli)
    return env


# The one testthat skip CI allows (r-package/tests/testthat/helper-scbridge.R, skip_if_no_arrow).
ALLOWED_SKIP = "Arrow transport:"


def _messages(result: dict[str, object]) -> str:
    # jsonlite unboxes a single message into a plain string.
    messages = result["messages"]
    return messages if isinstance(messages, str) else "; ".join(map(str, messages))  # type: ignore[call-overload]


@pytest.mark.needs_r
def test_r_package_testthat_suite(tmp_path: Path) -> None:
    if shutil.which("R") is None:
        pytest.skip("R is not installed")
    lib = tmp_path / "lib"
    lib.mkdir()
    installed = subprocess.run(["R", "CMD", "INSTALL", "--no-test-load", "-l", str(lib),
                                str(PACKAGE)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    script = tmp_path / "run_tests.R"
    script.write_text(RUN_TESTS)
    results_file = tmp_path / "results.json"
    done = subprocess.run(
        ["Rscript", str(script), str(lib), str(PACKAGE / "tests" / "testthat"),
         str(results_file)],
        capture_output=True, text=True, env=_engine_env(), cwd=tmp_path)
    assert done.returncode == 0 and results_file.exists(), done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads(results_file.read_text())
    assert results, "testthat ran no tests"

    failed = [r for r in results if r["failed"] or r["error"]]
    skipped = [r for r in results if r["skipped"]]
    passed = sum(r["passed"] for r in results)
    describe = "\n".join(f"  {r['file']}: {r['test']}: {_messages(r)}" for r in failed + skipped)
    assert not failed, f"{len(failed)} testthat test(s) failed:\n{describe}"
    allowed = [r for r in skipped if ALLOWED_SKIP in _messages(r)]
    if os.environ.get("SCBRIDGE_REQUIRE_R") == "1":
        other = [r for r in skipped if r not in allowed]
        assert not other, "SCBRIDGE_REQUIRE_R=1 but testthat skipped:\n" + "\n".join(
            f"  {r['file']}: {r['test']}: {_messages(r)}" for r in other)
    for r in allowed:
        note = f"testthat skipped (allowed): {r['file']}: {r['test']}: {_messages(r)}"
        print(note)
        warnings.warn(note, stacklevel=1)
    print(f"testthat: {len(results)} tests, {passed} expectations passed, "
          f"{len(skipped)} skipped")

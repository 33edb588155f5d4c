"""The bounded run of ``benchmarks/abuse.py``: a real server under the attacks of issue 12
(stalled uploads, the markers memory bomb, huge headers, every malformed input) while a good
client annotates.  Asserts what does not depend on timing: the server's peak memory stays
under 1.5 GB, nobody gets a 5xx, the good client never fails, and every malformed input gets a
4xx with a specific error code.  (The latency figures are the benchmark's to print.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests._server")
from tests._server import subprocess_env  # noqa: E402

pytestmark = pytest.mark.slow
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "abuse.py"


def test_bounded_abuse_run() -> None:
    done = subprocess.run([sys.executable, str(BENCHMARK), "--small", "--check"],
                          capture_output=True, text=True, env=subprocess_env(), timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    missed = next(line for line in lines if line.startswith("missed: "))
    assert missed.startswith("missed: none")
    rows = {line[:38].strip(): line[38:].split() for line in
            lines[lines.index(next(ln for ln in lines if ln.startswith("malformed input"))) + 1:]
            if line[:38].strip() and len(line[38:].split()) == 2}
    assert len(rows) >= 20  # every malformed input was sent
    for name, (status, code) in rows.items():
        assert 400 <= int(status) < 500, (name, status, code)
        assert code not in ("internal_error", "http_error", "None"), (name, code)

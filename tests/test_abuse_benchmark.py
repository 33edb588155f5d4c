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
    out = done.stdout
    assert "missed: none" in out.splitlines()[-1] or "missed: none;" in out
    table = out.split("malformed input", 1)[1]
    for name in ("Arrow genes metadata nested 100k deep", "Arrow values list<float16>",
                 "gzip JSON body", "markers one label per cell", "1 MiB header"):
        row = next(line for line in table.splitlines() if line.startswith(name))
        status = int(row[38:].split()[0])
        assert 400 <= status < 500, row

"""``scbridge worker``: commands read from stdin run one after another in one process, each
answered with its exit status and output, exactly as the command line would give them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from test_marker_engine import synthetic_matrix

import bridge
from bridge.cli import main

TYPES = ["naive B cell", "classical monocyte", "natural killer cell",
         "naive thymus-derived CD8-positive, alpha-beta T cell"]


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> Path:
    matrix, _ = synthetic_matrix(TYPES, n_per_type=10, seed=5)
    return bridge.write(matrix, tmp_path_factory.mktemp("worker") / "cells.arrow")


def worker(lines: list[str]) -> tuple[list[dict[str, object]], subprocess.CompletedProcess[str]]:
    """Runs `python -m bridge worker` on `lines`; its replies, one per command."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "bridge", "worker"], input="\n".join(lines),
                          capture_output=True, text=True, env=env, timeout=300)
    return [json.loads(line) for line in done.stdout.splitlines()], done


def test_commands_run_in_turn_with_the_results_of_the_command_line(cells: Path,
                                                                   tmp_path: Path) -> None:
    first, second, direct = tmp_path / "a.arrow", tmp_path / "b.arrow", tmp_path / "c.arrow"
    command = ["annotate", str(cells), "--no-qc", "--quiet", "--out"]
    replies, done = worker([json.dumps([*command, str(first)]),
                            json.dumps(["--version"]),
                            json.dumps([*command, str(second)])])
    assert done.returncode == 0, done.stderr
    assert [r["status"] for r in replies] == [0, 0, 0]
    assert replies[1]["stdout"] == f"scbridge {bridge.__version__}\n"
    assert main([*command, str(direct)]) == 0
    tables = [pa.ipc.open_file(pa.memory_map(str(p))).read_all() for p in (first, second, direct)]
    assert tables[0].equals(tables[2]) and tables[1].equals(tables[2])


def test_errors_warnings_and_logs_come_back_per_command(cells: Path, tmp_path: Path) -> None:
    replies, done = worker([
        json.dumps(["annotate", str(tmp_path / "missing.arrow"), "--out", str(tmp_path / "x.arrow")]),
        json.dumps(["annotate", "--bogus"]),
        "not json",
        json.dumps(["worker"]),
        json.dumps(["-v", "inspect", str(cells)]),
        json.dumps(["annotate", str(cells), "--out", str(tmp_path / "y.arrow"), "--quiet",
                    "--model", "no-such-model"]),
    ])
    assert done.returncode == 0, done.stderr
    assert [r["status"] for r in replies] == [2, 2, 2, 2, 0, 2]
    assert "error[invalid_input]" in str(replies[0]["stderr"])
    assert "the following arguments are required" in str(replies[1]["stderr"])
    assert "JSON array of strings" in str(replies[2]["stderr"])
    assert "a worker runs no worker" in str(replies[3]["stderr"])
    assert "Arrow CSR" in str(replies[4]["stdout"])
    assert "error[unknown_model]" in str(replies[5]["stderr"])
    # each reply holds its own command's output only
    assert "unknown_model" not in str(replies[0]["stderr"])


def test_an_empty_input_ends_the_worker_cleanly() -> None:
    replies, done = worker([])
    assert replies == [] and done.returncode == 0

"""``scbridge worker``: run scbridge commands one after another in one process.

For wrappers that run many commands (the R package's ``cli`` engine): the interpreter, the
imports, the gene tables and the engines built are paid for once per worker, not once per
command (about a second of every ``scbridge annotate``).

Protocol, one line per message, UTF-8: each line on stdin is a JSON array of strings, the
arguments of one command as they would follow ``scbridge`` (``["annotate", "in.arrows",
"--out", "calls.arrow", "--quiet"]``); for each, one JSON object on stdout::

    {"status": 0, "stdout": "...", "stderr": "..."}

``status`` is the exit status the command line would give (2 for a user error, whose
``stderr`` holds the usual ``scbridge CMD: error[CODE]: message`` line), ``stdout`` and
``stderr`` what the command printed there. Nothing else is written to stdout. End of input
ends the worker with status 0.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

NAME = "worker"
HELP = "run commands read from stdin, one JSON array of arguments per line (for wrappers)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker takes no arguments of its own: its commands come on stdin."""


def _exit_status(code: Any) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 2


def _fresh_logging() -> None:
    # The command line configures logging once per run (logging.basicConfig); its handler
    # writes to the stderr of that moment, so each command starts without one.
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)


def run_command(argv: list[str]) -> dict[str, Any]:
    """Run one command in this process; its status and what it printed."""
    from . import main

    if argv[:1] == [NAME]:
        return {"status": 2, "stdout": "",
                "stderr": f"scbridge {NAME}: error[invalid_input]: a worker runs no worker.\n"}
    out, err = io.StringIO(), io.StringIO()
    _fresh_logging()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse: --help, --version and usage errors
            status = _exit_status(exc.code)
        except Exception:  # a bug, not a user error: its traceback, as the CLI would show it
            traceback.print_exc()
            status = 1
    _fresh_logging()
    return {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}


def _arguments(line: str) -> list[str] | None:
    try:
        argv = json.loads(line)
    except ValueError:
        return None
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        return None
    return argv


def run(args: argparse.Namespace) -> int:
    protocol = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        argv = _arguments(line)
        if argv is None:
            reply: dict[str, Any] = {
                "status": 2, "stdout": "",
                "stderr": (f"scbridge {NAME}: error[invalid_input]: each line must be a JSON "
                           "array of strings, the arguments of one command.\n")}
        else:
            reply = run_command(argv)
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()
    return 0

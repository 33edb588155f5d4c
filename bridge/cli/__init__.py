"""The ``scbridge`` command line: one module per subcommand, registered in ``_COMMANDS``.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
Errors a user can cause (:class:`~bridge.BridgeError`) print one line,
``scbridge CMD: error[CODE]: message``, and exit 2 (the code is the error's stable code, which
wrappers such as the R package read); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Sequence
from typing import Any, TextIO

from .._errors import BridgeError

__all__ = ["main"]

# Subcommand modules, in the order ``scbridge --help`` lists them.
_COMMANDS = [
    "bridge.cli._inspect",
    "bridge.cli._convert",
    "bridge.cli._qc",
    "bridge.cli._annotate",
    "bridge.cli._build_reference",
    "bridge.cli._rank_markers",
    "bridge.cli._embed",
    "bridge.cli._serve",
    "bridge.cli._workspace",
    "bridge.cli._worker",
]


def _parser() -> argparse.ArgumentParser:
    from .._version import __version__

    parser = argparse.ArgumentParser(
        prog="scbridge",
        description="Single-cell matrices across R and Python, and cell-type annotation.",
    )
    parser.add_argument("--version", action="version", version=f"scbridge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in _COMMANDS:
        module = importlib.import_module(module_name)
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``scbridge`` command line; returns the exit status."""
    args = _parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="scbridge: %(levelname)s: %(message)s")
    try:
        with warnings.catch_warnings():
            # A warning is a message for the user, one line like the errors, not a source line.
            warnings.showwarning = _one_line_warning(args.command)
            return int(args._run(args) or 0)
    except BridgeError as exc:
        print(f"scbridge {args.command}: error[{exc.code}]: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scbridge {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line_warning(command: str) -> Any:
    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        print(f"scbridge {command}: warning: {message}", file=file or sys.stderr)
    return show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

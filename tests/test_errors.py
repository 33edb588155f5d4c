"""One error vocabulary: every raise site's code is documented, the CLI prints it, the server
maps it to a status in one table, and R failures are server faults."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bridge
from bridge._errors import CODES, BridgeError, RemoteError
from bridge.server._problems import STATUS, from_bridge_error

ROOT = Path(__file__).resolve().parents[1] / "bridge"


def _codes_used_in_the_source() -> set[str]:
    used: set[str] = set()
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "code" and isinstance(
                    node.value, ast.Constant) and isinstance(node.value.value, str):
                used.add(node.value.value)
    return used


def test_every_code_raised_is_in_the_vocabulary_or_the_servers_own() -> None:
    server_only = {"missing_api_key", "invalid_api_key", "unsupported_media_type",
                   "body_too_large", "server_busy", "out_of_memory", "unknown_atlas",
                   "invalid_labels", "not_found", "method_not_allowed", "http_error",
                   "internal_error"}
    unknown = _codes_used_in_the_source() - set(CODES) - server_only
    assert not unknown, f"codes raised but not listed in bridge._errors.CODES: {unknown}"


def test_an_unknown_code_is_refused_at_the_raise_site() -> None:
    with pytest.raises(ValueError, match="unknown error code"):
        bridge.InputError("x", code="no_such_code")


def test_every_code_has_an_http_status() -> None:
    for code, (family, _) in CODES.items():
        assert code in STATUS or family in STATUS, code


@pytest.mark.parametrize(("error", "status"), [
    (bridge.InputError("bad"), 422),
    (bridge.InputError("bad", code="non_finite_values"), 422),
    (bridge.GeneIdError("ids"), 422),
    (bridge.CapacityError("big"), 413),
    (bridge.FormatError("fmt"), 400),
    (bridge.FormatError("fmt", code="invalid_arrow"), 400),
    (bridge.NotFoundError("nf", code="unknown_model"), 422),
    (bridge.RError("R died"), 500),  # the server's R, not the client's request
    (bridge.MissingDependencyError("no rpy2"), 500),
    (RemoteError("upstream", code="whatever_they_said"), 502),
])
def test_statuses_come_from_one_table(error: BridgeError, status: int) -> None:
    api = from_bridge_error(error)
    assert api.status == status
    assert api.code == error.code
    assert api.hint  # every refusal says what to change


def test_the_cli_prints_the_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.cli import main

    assert main(["inspect", str(tmp_path / "missing.h5ad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scbridge inspect: error[") and err.count("\n") == 0
    code = err.split("error[", 1)[1].split("]", 1)[0]
    assert code in CODES

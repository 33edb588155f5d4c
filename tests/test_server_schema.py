"""A bounded schemathesis run against the live server's own /openapi.json.

Generated requests (valid and invalid by the schema, with a valid key) must never produce a
5xx, and every reply must match the documented status codes, content types and schemas.
"""

from __future__ import annotations

import pytest

pytest.importorskip("schemathesis")

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytest.register_assert_rewrite("tests._server")
from tests._server import API_KEY, LiveServer  # noqa: E402

pytest_plugins = ["tests._server"]

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_openapi_contract_holds(live_server: LiveServer, mode: str) -> None:
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(live_server.url + "/openapi.json")
    strategy = schema.as_strategy(generation_mode=GenerationMode(mode))
    headers = {"Authorization": f"Bearer {API_KEY}"}

    @settings(max_examples=60, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=live_server.url, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS, headers=headers)

    check()

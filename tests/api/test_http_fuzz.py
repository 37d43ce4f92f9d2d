"""Schemathesis against the committed OpenAPI document, on the running service: whatever
it generates (a bounded number of examples per operation, in CI too), nothing answers
500. The live SSE feed is left out: it never ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from live import LiveStack

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
SCHEMA = schemathesis.openapi.from_path(DOCUMENT).exclude(path="/api/v1/alerts/stream")
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_no_request_makes_a_server_error(
    stack: LiveStack, operation: schemathesis.APIOperation
) -> None:
    headers = {"Authorization": f"Bearer {stack.admin_key}"}

    @given(case=operation.as_strategy())
    @settings(
        max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=stack.base_url, headers=headers, timeout=30)
        case.validate_response(response, checks=[not_a_server_error])

    check()

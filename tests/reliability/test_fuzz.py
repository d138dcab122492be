"""The API fuzzed from its own OpenAPI schema: no 5xx and no hung request, for a bounded number of cases."""

from __future__ import annotations

import hypothesis
import schemathesis
from schemathesis import checks

from tests.stack import CALLER_KEY, Stack

EXAMPLES_PER_OPERATION = 40


def test_no_server_error_from_any_input(stack: Stack) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, "every route is in the schema"
    tried: dict[str, int] = {}
    for operation in operations:
        fuzz(stack, operation, tried)
    assert all(count > 0 for count in tried.values()), tried


def fuzz(stack: Stack, operation, tried: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    label = f"{operation.method.upper()} {operation.path}"
    tried[label] = 0

    @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=operation.as_strategy())
    def call(case) -> None:  # type: ignore[no-untyped-def]
        if case.query and isinstance(case.query.get("wait"), int | float):
            case.query["wait"] = min(case.query["wait"], 0.2)  # long-polls stay short
        response = case.call(base_url=stack.base_url, headers={"Authorization": f"Bearer {CALLER_KEY}"},
                             timeout=15)
        case.validate_response(response, checks=[checks.not_a_server_error])
        assert response.status_code < 500, f"{label}: {response.status_code} {response.text[:200]}"
        tried[label] += 1

    call()

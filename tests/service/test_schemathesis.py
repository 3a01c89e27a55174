"""Property-based requests generated from /openapi.json: no input earns a 5xx.

Bounded (a fixed number of derandomised examples per operation) so it is fast and
repeatable; it drives the real app with its models loaded.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.service.conftest import make_client

EXAMPLES_PER_OPERATION = 30


def test_no_generated_request_earns_a_server_error() -> None:
    with make_client(max_batch_wait_ms=0, max_side=64, max_video_side=32) as started:
        schema = schemathesis.openapi.from_asgi("/openapi.json", started.app)
        operations = [result.ok() for result in schema.get_all_operations()]
        paths = {(op.method.upper(), op.path) for op in operations}
        assert ("POST", "/v1/segment") in paths and ("POST", "/v1/segment/video") in paths
        statuses: dict[str, set[int]] = {}
        for operation in operations:
            label = operation.label

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                derandomize=True,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case) -> None:
                response = case.call()
                statuses.setdefault(label, set()).add(response.status_code)  # noqa: B023 - runs now
                case.validate_response(response, checks=[not_a_server_error])
                if response.status_code >= 400:
                    body = response.json()
                    if label.split(" ", 1)[1].startswith("/v2"):  # noqa: B023 - runs now
                        # the inference protocol's shape: Triton's client wants a string
                        assert isinstance(body["error"], str) and body["code"], body
                    else:
                        assert set(body["error"]) == {"code", "message"}, body

            try:
                check()
            except Exception as error:  # name the operation in the failure
                pytest.fail(f"{operation.label}: {error}")
        # the generated bodies really reached the handlers' validation paths
        assert statuses["POST /v1/segment"] - {200}, statuses

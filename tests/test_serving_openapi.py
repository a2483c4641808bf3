"""The OpenAPI document is the server's contract: a schema-driven fuzzer (schemathesis) sends requests
generated from ``/openapi.json`` (valid and invalid ones) to the real server over the fixture exports,
and every answer must be documented — no 5xx, a documented status, media type and body schema.

The admin routes (PUT/DELETE /v1/tasks/{name}) are left out: they change the task set the other
operations are fuzzed against. The server has a token, sent with every request (predictions may be
protected too).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings  # schemathesis brings hypothesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from serving_helpers import TOKEN, served_config

from aa_deploy.serving.app import create_app
from aa_deploy.serving.config import ServerConfig
from aa_deploy.serving.server import BackgroundServer

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def fuzzed_server(serving_exports: dict[str, Path]) -> Iterator[BackgroundServer]:
    config = served_config(serving_exports)
    config.protect_predict = True
    with BackgroundServer(config) as server:
        yield server


# The document of a fresh app (the routes do not depend on the tasks), so that pytest can make one test
# per operation when it collects; test_the_served_document_is_the_fuzzed_one ties it to the real server.
DOCUMENT = create_app(ServerConfig()).openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT).exclude(method=["PUT", "DELETE"])


def test_the_served_document_is_the_fuzzed_one(fuzzed_server: BackgroundServer) -> None:
    import httpx

    assert httpx.get(fuzzed_server.url + "/openapi.json").json() == DOCUMENT


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented(case: Any, fuzzed_server: BackgroundServer) -> None:
    case.call_and_validate(base_url=fuzzed_server.url, headers=AUTH, checks=CHECKS, timeout=30)

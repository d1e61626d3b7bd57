"""schemathesis against a real gateway's `/openapi.json`, with a valid token and bounded
examples per operation: no 5xx, every answer's status, content type, headers and body
as the description says, and a 405 (with `Allow`) for a method a route does not take.

Run as schemathesis's own CLI (every phase: examples, coverage, fuzzing), positive and
negative data. A schema-valid request may still be refused where OpenAPI cannot state
the rule (a query's retention rules across parameters): a documented 4xx, never a 5xx.
The client keeps the form's documented field order (tests/openapi_hooks.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingester_gateway.reference.processes import PYTHON
from tests.kit import DevKeys
from tests.stack import Stack, own_stack

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def described(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Stack]:
    with own_stack(tmp_path_factory.mktemp("openapi"), keys) as stack:
        yield stack


@pytest.mark.timeout(600)
def test_the_gateway_answers_as_its_openapi_description_says(
    described: Stack, keys: DevKeys, tmp_path: Path
) -> None:
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.openapi_hooks", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [
            PYTHON,
            "-m",
            "schemathesis.cli",
            "run",
            f"{described.gw.url}/openapi.json",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            "20",
            "--seed",
            "1010",
            "--header",
            f"Authorization: Bearer {keys.token()}",
            "--request-timeout",
            "60",
            "--generation-database",
            "none",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=580,
        cwd=tmp_path,  # schemathesis keeps a cache in its working directory
        env=env,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]

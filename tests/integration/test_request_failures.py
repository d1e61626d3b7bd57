"""A failure the request causes is not a node failure: it is answered 502 with the SE's
reason, tried at most once more, and never opens the node's circuit for everyone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ingester_gateway.reference.processes import (
    ServerProcess,
    gateway,
    running,
    se_entry,
    service_account_env,
    storage_element,
    token_service,
)
from tests.conftest import DevKeys, assert_error_envelope, http_call
from tests.integration.cluster import metric


@pytest.fixture(scope="module")
def strict_se_gateway(
    tmp_path_factory: pytest.TempPathFactory, keys: DevKeys
) -> Iterator[ServerProcess]:
    """The only SE answers 500 to a 0-byte file, as the real artStore SE does; the
    gateway's breaker would open after two node failures."""
    workdir: Path = tmp_path_factory.mktemp("strict")
    se = storage_element(workdir, keys.public_path, extra=["--fail-empty-files"])
    tokens = token_service(workdir, keys.private_path)
    with running(se, tokens):
        env = {**service_account_env(tokens), "INGESTER_BREAKER_FAILURES": "2"}
        gw = gateway(workdir, keys.public_path, [se_entry(se)], env=env)
        with running(gw):
            yield gw


def test_an_empty_file_the_se_refuses_with_500_is_a_502_and_the_circuit_stays_closed(
    strict_se_gateway: ServerProcess, keys: DevKeys
) -> None:
    gw = strict_se_gateway
    for _ in range(3):  # more than the breaker's threshold
        answer = http_call(
            gw.url, "PUT", "/api/v1/files/empty.txt?compress=false", b"", keys.auth()
        )
        error = assert_error_envelope(answer, 502, "storage_failed")
        assert "empty file cannot be stored" in error["message"]
        assert "retry-after" not in answer.headers
    assert metric(gw, "ingester_node_circuit_state", node="se-1") == 0
    assert metric(gw, "ingester_node_uploads_total", node="se-1", outcome="failed_over") == 6
    answer = http_call(gw.url, "PUT", "/api/v1/files/next.txt", b"not empty", keys.auth())
    assert answer.status == 201, answer.body

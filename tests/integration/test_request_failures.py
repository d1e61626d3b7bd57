"""A failure the request causes is not a node failure: it is answered 502 with the SE's
reason, tried at most once more, and never opens the node's circuit for everyone."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingester_gateway.reference.processes import (
    ServerProcess,
    admin_module,
    free_port,
    gateway,
    running,
    se_entry,
    service_account_env,
    storage_element,
)
from tests.kit import DevKeys, assert_error_envelope, eventually, http_call, metric


@pytest.fixture(scope="module")
def strict_se_gateway(
    tmp_path_factory: pytest.TempPathFactory, keys: DevKeys
) -> Iterator[ServerProcess]:
    """The only SE answers 500 to a 0-byte file, as the real artStore SE does; the
    gateway's breaker would open after two node failures."""
    workdir: Path = tmp_path_factory.mktemp("strict")
    se = storage_element(workdir, keys.public_path, extra=["--fail-empty-files"])
    tokens = admin_module(workdir, keys.private_path)
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


def test_with_no_writable_node_a_client_waiting_for_100_continue_gets_503_and_sends_nothing(
    tmp_path: Path, keys: DevKeys
) -> None:
    """`100 Continue` goes out only once a writable node is known: a client that waits
    for it is told 503 + Retry-After at once and never uploads its body."""
    dead = {"id": "se-gone", "url": f"http://127.0.0.1:{free_port()}", "mode": "rw"}
    gw = gateway(tmp_path, keys.public_path, [dead])
    gw.ready_path = "/health/live"  # it is never ready: no writable node
    with gw:
        eventually(lambda: metric(gw, "ingester_node_healthy", node="se-gone") == 0, 10, "probe")
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            token = keys.token()
            sock.sendall(
                b"PUT /api/v1/files/big.bin HTTP/1.1\r\nHost: gw\r\n"
                + f"Authorization: Bearer {token}\r\n".encode()
                + b"Content-Length: 1073741824\r\nExpect: 100-continue\r\n\r\n"
            )
            reply = b""
            while chunk := sock.recv(65536):  # the answer, then the gateway closes
                reply += chunk
        status_line = reply.split(b"\r\n", 1)[0]
        assert status_line == b"HTTP/1.1 503 Service Unavailable", reply[:300]
        assert b"100 Continue" not in reply
        assert b"retry-after: 5" in reply.lower()
        assert b'"no_storage_available"' in reply

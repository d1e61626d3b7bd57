"""Two gateways on one Redis and one staging directory (as behind nginx): a second
PATCH of one upload, sent to the other gateway, asks the first one's holder to let go
over Redis; one writes at a time, nothing is lost or mixed up, and the store that
follows the upload while it is received works across gateways."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ingester_gateway.reference.processes import (
    ServerProcess,
    admin_module,
    gateway,
    redis_server,
    running,
    se_entry,
    service_account_env,
)
from tests.kit import Answer, DevKeys, assert_error_envelope, log_events
from tests.resumable import (
    OFFSET_STREAM,
    TUS,
    TUS_VERSION,
    create,
    patch,
    read_answer,
    wait_stored,
)
from tests.stack import Stack, redis_url

MiB = 2**20


@dataclass
class Pair:
    one: ServerProcess
    two: ServerProcess
    staging: Path


@pytest.fixture(scope="module")
def pair(stack: Stack, keys: DevKeys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    workdir = tmp_path_factory.mktemp("tus-pair")
    redis_at = redis_server(workdir)
    tokens = admin_module(workdir, keys.private_path)
    with running(redis_at, tokens):
        env = {
            "INGESTER_REDIS_URL": redis_url(redis_at),
            "INGESTER_TUS_DIR": str(workdir / "shared-tus"),
            **service_account_env(tokens),
        }
        one = gateway(workdir, keys.public_path, [se_entry(stack.se)], env=env, name="gw-one")
        two = gateway(workdir, keys.public_path, [se_entry(stack.se)], env=env, name="gw-two")
        with running(one, two):
            yield Pair(one, two, workdir / "shared-tus" / "staging")


def test_a_second_patch_elsewhere_takes_the_upload_over(stack: Stack, pair: Pair) -> None:
    auth = stack.keys.auth()
    data = os.urandom(12 * MiB)
    path = create(pair.one, auth, len(data), {"filename": "shared.bin"})
    upload_id = path.removeprefix(TUS)
    headers = {
        **TUS_VERSION,
        **OFFSET_STREAM,
        **auth,
        "Upload-Offset": "0",
        "Content-Length": str(len(data)),
    }
    block = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    first = socket.create_connection(("127.0.0.1", pair.one.port), timeout=30)
    with contextlib.closing(first):
        first.sendall(f"PATCH {path} HTTP/1.1\r\nHost: x\r\n{block}\r\n".encode())
        sent = 0
        while sent < 3 * MiB:  # the first PATCH is under way on gateway one...
            first.sendall(data[sent : sent + 128 * 1024])
            sent += 128 * 1024
            time.sleep(0.02)
        second: list[Answer] = []
        # ...when the client, thinking it lost, PATCHes gateway two from the start.
        racer = threading.Thread(target=lambda: second.append(patch(pair.two, auth, path, 0, data)))
        racer.start()
        racer.join(60)
        first.settimeout(30)
        interrupted = read_answer(first)  # head and body, however they arrive
    assert_error_envelope(interrupted, 400, "upload_interrupted")  # the holder let go
    kept = int(interrupted.headers["upload-offset"])
    assert 0 < kept <= sent
    # The second PATCH got the lock, then found the offset moved: 409 with where to go on.
    assert_error_envelope(second[0], 409, "offset_mismatch")
    assert second[0].headers["upload-offset"] == str(kept)
    requests = [
        e for e in log_events(pair.one, "upload_release_requested") if e["upload_id"] == upload_id
    ]
    assert requests, "the release request did not reach the holder on gateway one"
    assert (pair.staging / upload_id).stat().st_size == kept  # no byte past the saved offset
    answer = patch(pair.two, auth, path, kept, data[kept:])
    assert answer.status == 204 and answer.headers["upload-offset"] == str(len(data))
    result = wait_stored(pair.one, auth, path)["result"]
    assert stack.download(result["file_id"]) == data
    stored = [
        e
        for gw in (pair.one, pair.two)
        for e in log_events(gw, "resumable_stored")
        if e["upload_id"] == upload_id
    ]
    assert len(stored) == 1  # stored once, by one gateway
    assert stored[0]["while_received"] is True  # followed the staging file across gateways
    assert not (pair.staging / upload_id).exists()

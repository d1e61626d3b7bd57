"""Cut connections and a killed gateway: whatever arrives is kept, offsets only grow, a
resumed upload stores the same bytes, and HEAD never names an offset that a crash can
take back."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingester_gateway.reference.processes import (
    ServerProcess,
    gateway,
    running,
    se_entry,
    storage_element,
)
from tests.kit import DevKeys, eventually, log_events
from tests.resumable import (
    OFFSET_STREAM,
    TUS,
    TUS_VERSION,
    create,
    offset_of,
    patch,
    read_answer,
    send_cut,
    status,
    wait_stored,
)
from tests.stack import Stack

MiB = 2**20


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(1, 600_000),
    cuts=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3),
)
def test_patches_cut_anywhere_then_resumed_store_the_same_bytes(
    stack: Stack, seed: int, size: int, cuts: list[float]
) -> None:
    auth = stack.keys.auth()
    data = random.Random(seed).randbytes(size)
    path = create(stack.gw, auth, size, {"filename": "cuts.bin"})
    offset = 0
    for fraction in cuts:
        rest = data[offset:]
        cut = int(len(rest) * fraction)
        headers = {**TUS_VERSION, **OFFSET_STREAM, **auth, "Upload-Offset": str(offset)}
        send_cut(stack.gw, "PATCH", path, headers, rest, cut, linger=0.05)
        now = offset_of(stack.gw, auth, path)
        assert offset <= now <= offset + cut  # never backwards, never past what was sent
        offset = now
    answer = patch(stack.gw, auth, path, offset, data[offset:])
    assert answer.status == 204, answer
    assert stack.download(wait_stored(stack.gw, auth, path)["file_id"]) == data


@pytest.fixture
def lone_gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A gateway of its own (no Redis: its state beside the staging files), to kill."""
    gw = gateway(
        tmp_path_factory.mktemp("tus-kill"),
        stack.keys.public_path,
        [se_entry(stack.se)],
        name="gw-kill",
    )
    with running(gw):
        yield gw


def test_a_gateway_killed_mid_patch_keeps_a_durable_offset_and_resumes(
    stack: Stack, lone_gateway: ServerProcess
) -> None:
    auth = stack.keys.auth()
    data = os.urandom(16 * MiB)
    path = create(lone_gateway, auth, len(data), {"filename": "killed.bin"})
    headers = {
        **TUS_VERSION,
        **OFFSET_STREAM,
        **auth,
        "Upload-Offset": "0",
        "Content-Length": str(len(data)),
    }
    head_block = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sent = 0
    with contextlib.closing(socket.create_connection(("127.0.0.1", lone_gateway.port))) as sock:
        sock.sendall(f"PATCH {path} HTTP/1.1\r\nHost: x\r\n{head_block}\r\n".encode())
        started = time.monotonic()
        # About 4 MiB/s for 2.5 s: past a checkpoint (4 MiB and 1 s), far from the end.
        while sent < 10 * MiB or time.monotonic() - started < 2.5:
            sock.sendall(data[sent : sent + 256 * 1024])
            sent += 256 * 1024
            time.sleep(0.06)
        lone_gateway.kill()
    lone_gateway.start()
    offset = offset_of(lone_gateway, auth, path)
    assert 0 < offset <= sent  # durable: it survived SIGKILL
    answer = patch(lone_gateway, auth, path, offset, data[offset:])
    assert answer.status == 204 and answer.headers["upload-offset"] == str(len(data))
    result = wait_stored(lone_gateway, auth, path)["result"]
    assert stack.download(result["file_id"]) == data
    assert any(
        e["upload_id"] == path.removeprefix(TUS)
        for e in log_events(lone_gateway, "resumable_stored")
    )


def test_a_store_that_fails_keeps_the_staged_bytes_and_is_tried_again(
    keys: DevKeys, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("tus-retry")
    se = storage_element(workdir, keys.public_path)
    gw = gateway(workdir, keys.public_path, [se_entry(se)], name="gw-retry")
    with running(se, gw):
        se.stop()  # no SE: the store cannot happen now
        auth = keys.auth()
        data = os.urandom(300_000)
        path = create(gw, auth, len(data), {"filename": "later.bin"})
        answer = patch(gw, auth, path, 0, data)
        assert answer.status == 204  # the last byte is answered at once, stored or not
        staged = Path(gw.env["INGESTER_STATE_DIR"]) / "tus" / "staging" / path.removeprefix(TUS)  # type: ignore[index]
        waiting = eventually(lambda: (s := status(gw, auth, path))["error"] and s, 30, "a failure")
        assert waiting["state"] == "storing" and staged.exists()
        se.start()
        result = wait_stored(gw, auth, path)["result"]
        assert Stack(se, gw, keys, workdir / "se-1-data").download(result["file_id"]) == data
        assert not staged.exists()


def test_sigterm_interrupts_a_patch_at_once_keeping_its_bytes(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A resumable body is not given the grace: on SIGTERM the PATCH is answered 503 with
    the offset of what arrived (kept), the process exits long before the grace ends, and
    the next process resumes from that offset."""
    gw = gateway(
        tmp_path_factory.mktemp("tus-drain"),
        stack.keys.public_path,
        [se_entry(stack.se)],
        env={"INGESTER_SHUTDOWN_GRACE": "60"},
        name="gw-drain",
    )
    auth = stack.keys.auth()
    data = os.urandom(8 * MiB)
    with running(gw):
        path = create(gw, auth, len(data), {"filename": "drained.bin"})
        headers = {
            **TUS_VERSION,
            **OFFSET_STREAM,
            **auth,
            "Upload-Offset": "0",
            "Content-Length": str(len(data)),
        }
        head_block = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sent = 3 * MiB
        with contextlib.closing(socket.create_connection(("127.0.0.1", gw.port))) as sock:
            sock.sendall(f"PATCH {path} HTTP/1.1\r\nHost: x\r\n{head_block}\r\n".encode())
            sock.sendall(data[:sent])
            time.sleep(1.0)  # the bytes are in the staging file, not yet synced
            signalled = time.monotonic()
            assert gw.process is not None
            os.killpg(gw.process.pid, signal.SIGTERM)
            sock.settimeout(10)
            answer = read_answer(sock)
        assert answer.status == 503, answer
        assert answer.json()["error"]["code"] == "shutting_down"
        kept = int(answer.headers["upload-offset"])
        assert 0 < kept <= sent
        gw.process.wait(15)
        assert time.monotonic() - signalled < 10  # not the 60 s grace
    with running(gw):
        assert offset_of(gw, auth, path) == kept  # durable
        answer = patch(gw, auth, path, kept, data[kept:])
        assert answer.status == 204, answer
        assert stack.download(wait_stored(gw, auth, path)["file_id"]) == data

"""Failure paths of an upload, end to end: real gateway and SE processes, real sockets.

After every failure the SE holds no new file and no partial, and the client got the
JSON error envelope (never a 500). Raw sockets play the clients that misbehave at
the HTTP level; a proxy in front of a real SE plays the SE that misbehaves.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ingester_gateway.reference.processes import (
    ServerProcess,
    admin_module,
    gateway,
    running,
    service_account_env,
    storage_element,
)
from tests.faults import (
    StorageElementProxy,
    se_upload_reply,
    wrong_checksum,
)
from tests.kit import (
    AS_SENT,
    Answer,
    CurlAnswer,
    DevKeys,
    MiB,
    assert_error_envelope,
    curl,
    eventually,
    http_call,
    metric,
    multipart_form,
    put,
    sha256_hex,
)
from tests.stack import Stack, start_stack

# -- helpers ---------------------------------------------------------------------------


def assert_nothing_left(stack: Stack, stored_before: list[str], wait: float = 5.0) -> None:
    """No new file on the SE, no partial (given `wait` s to go), no last-resort 500."""
    assert stack.settled_partials(wait) == [], "the SE still holds a partial file"
    assert stack.stored_ids() == stored_before, "the SE stored a file"
    assert "unhandled_error" not in stack.gw.log_path.read_text(errors="replace")


def raw_headers(stack: Stack, path: str, headers: dict[str, str], method: str = "PUT") -> bytes:
    """The head of an authorized request, for a raw socket client."""
    fields = {"Host": "127.0.0.1", **stack.keys.auth(), **headers}
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


ROUTES = ("put", "multipart")
FILE_PART_HEAD = (
    b'--b0undary\r\nContent-Disposition: form-data; name="compress"\r\n\r\nfalse\r\n'
    b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="x.bin"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
)


def start_chunked_upload(stack: Stack, route: str) -> socket.socket:
    """A raw socket that has sent the head of a chunked upload, uncompressed so the SE
    gets every byte (and, on the multipart route, the opening of the `file` part); the
    caller sends the data chunks."""
    sock = connect(stack)
    chunked = {"Transfer-Encoding": "chunked"}
    if route == "put":
        sock.sendall(raw_headers(stack, "/api/v1/files/x.bin?compress=false", chunked))
    else:
        form = {**chunked, "Content-Type": "multipart/form-data; boundary=b0undary"}
        sock.sendall(raw_headers(stack, "/api/v1/files/upload", form, "POST"))
        sock.sendall(chunk(FILE_PART_HEAD))
    return sock


def read_until_close(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    received = b""
    try:
        while piece := sock.recv(65536):
            received += piece
    except ConnectionResetError:
        pass
    return received


def parse_response(raw: bytes) -> Answer:
    """The first HTTP response in what a raw socket received."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP response in {raw[:300]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    return Answer(int(status_line.split()[1]), headers, rest[:length])


def connect(stack: Stack) -> socket.socket:
    return socket.create_connection(("127.0.0.1", stack.gw.port), timeout=10)


def idle(gw: ServerProcess, timeout: float = 5.0) -> None:
    """Wait until the gateway has no upload in flight."""
    eventually(
        lambda: metric(gw, "ingester_uploads_in_flight") == 0, timeout, "no upload in flight"
    )


def process_counts(pid: int) -> tuple[int, int]:
    """(open file descriptors, threads) of a process."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^Threads:\s+(\d+)$", status, re.MULTILINE)
    assert match is not None
    return fds, int(match.group(1))


# -- size limit, Content-Length mismatch, slow client: a gateway with tight limits --------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Stack]:
    """1 MiB limit, 1 s body timeout, and 64 KiB blocks so the SE request is already
    streaming (the SE holds a partial) well before the limit or the timeout trips."""
    env = {
        "INGESTER_MAX_UPLOAD_BYTES": "1MiB",
        "INGESTER_CLIENT_BODY_TIMEOUT_SECONDS": "1",
        "INGESTER_BLOCK_SIZE": "64KiB",
    }
    yield from start_stack(tmp_path_factory.mktemp("limited"), keys, env=env)


def test_chunked_upload_growing_past_the_limit_is_413_and_the_partial_removed(
    limited: Stack,
) -> None:
    stored = limited.stored_ids()
    pieces = (os.urandom(64 * 1024) for _ in range(48))  # 3 MiB, chunked
    answer = limited.put(pieces, query=AS_SENT)
    assert_error_envelope(answer, 413, "payload_too_large")
    assert answer.headers.get("connection") == "close"
    assert_nothing_left(limited, stored)


def test_upload_of_exactly_the_limit_is_stored(limited: Stack) -> None:
    """The control case for the limit: 1 MiB itself is allowed."""
    data = os.urandom(MiB)
    answer = limited.put(iter([data[: MiB // 2], data[MiB // 2 :]]), query=AS_SENT)
    assert answer.status == 201, answer.body
    assert limited.download(answer.json()["file_id"]) == data


def curl_put(stack: Stack, path: Path, expect: str) -> CurlAnswer:
    """curl -T with an `Expect` header (10 s patience for a 100): a reset is a curl error."""
    auth = f"Authorization: Bearer {stack.keys.token()}"
    url = stack.gw.url + "/api/v1/files/four.bin"
    return curl("--expect100-timeout", "10", "-H", auth, "-H", expect, "-T", str(path), url)


@pytest.fixture(scope="module")
def four_mib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sizes") / "four.bin"
    path.write_bytes(os.urandom(4 * MiB))
    return path


def test_content_length_over_the_limit_with_expect_is_refused_before_any_body_byte(
    limited: Stack, four_mib: Path
) -> None:
    stored = limited.stored_ids()
    answer = curl_put(limited, four_mib, "Expect: 100-continue")
    assert (answer.status, answer.uploaded) == (413, 0)
    assert_nothing_left(limited, stored)


def test_content_length_over_the_limit_without_expect_still_gets_413_not_a_reset(
    limited: Stack, four_mib: Path
) -> None:
    """Without `Expect` the client sends its body at once; the gateway refuses on the
    header, reads (and drops) a bounded amount, then answers 413 and closes, so the
    client reads the answer instead of an ECONNRESET (curl would exit non-zero)."""
    stored = limited.stored_ids()
    assert curl_put(limited, four_mib, "Expect:").status == 413
    sock = connect(limited)
    with sock:
        sock.sendall(raw_headers(limited, "/api/v1/files/x", {"Content-Length": str(4 * MiB)}))
        sock.sendall(four_mib.read_bytes())
        answer = parse_response(read_until_close(sock, 10))
    assert_error_envelope(answer, 413, "payload_too_large")
    assert_nothing_left(limited, stored)


def test_body_shorter_than_content_length_then_stalled_is_408_and_nothing_stored(
    limited: Stack,
) -> None:
    """Observed: Content-Length 1000, 500 bytes sent, then silence. After the 1 s body
    timeout the gateway gives up, drains for up to 2 s more (so the answer is not lost
    to a reset), then answers 408 with `Connection: close` — about 3 s in all."""
    stored = limited.stored_ids()
    sock = connect(limited)
    with sock:
        sock.sendall(raw_headers(limited, "/api/v1/files/x", {"Content-Length": "1000"}))
        sock.sendall(b"a" * 500)
        started = time.monotonic()
        answer = parse_response(read_until_close(sock, 10))
        waited = time.monotonic() - started
    assert_error_envelope(answer, 408, "request_timeout")
    assert answer.headers.get("connection") == "close"
    assert 0.9 < waited < 6
    assert_nothing_left(limited, stored)


def test_body_shorter_than_content_length_then_closed_stores_nothing(limited: Stack) -> None:
    """Observed: Content-Length 1000, 500 bytes sent, socket closed. uvicorn reports a
    disconnect, the gateway aborts (no response is possible) and the gateway stays up."""
    stored = limited.stored_ids()
    sock = connect(limited)
    with sock:
        sock.sendall(raw_headers(limited, "/api/v1/files/x", {"Content-Length": "1000"}))
        sock.sendall(b"a" * 500)
    idle(limited.gw)
    assert_nothing_left(limited, stored)
    assert http_call(limited.gw.url, "GET", "/health/live").status == 200


def test_body_longer_than_content_length_ends_the_request_and_refuses_the_rest(
    limited: Stack,
) -> None:
    """Content-Length 10 and 20 bytes in one write. HTTP framing ends the request after
    10 bytes; the other 10 (`0123456789`) are parsed as a next pipelined request, which
    is not HTTP: the edge answers it 400 `malformed_request` (JSON) and closes. The first
    request is whole, so it may be answered 201, and then its file is the client's;
    when the connection is closed before that answer, the client never learns of the
    file, so the gateway must not keep it. Either way nothing unknown is left."""
    stored = limited.stored_ids()
    sock = connect(limited)
    with sock:
        head = raw_headers(limited, "/api/v1/files/x?compress=false", {"Content-Length": "10"})
        sock.sendall(head + b"ABCDEFGHIJ" + b"0123456789")
        received = read_until_close(sock, 10)
    assert b"HTTP/1.1 400 " in received, received[:300]
    assert b'"malformed_request"' in received
    idle(limited.gw)
    first = parse_response(received)
    if first.status == 201:  # answered before the garbage was refused: the client knows
        told = first.json()["file_id"]
        assert limited.stored_ids() == sorted([*stored, told])
        assert limited.download(told) == b"ABCDEFGHIJ"
        return
    assert first.status == 400
    assert_nothing_left(limited, stored)


def test_client_leaving_after_a_complete_body_leaves_nothing(limited: Stack) -> None:
    """The whole body arrives, then the client closes before the answer: the upload
    may have reached the SE, but nobody will ever learn its file_id, so it goes."""
    stored = limited.stored_ids()
    for _ in range(5):
        sock = connect(limited)
        body = os.urandom(300 * 1024)
        head = raw_headers(
            limited, "/api/v1/files/x?compress=false", {"Content-Length": str(len(body))}
        )
        sock.sendall(head + body)
        sock.close()
    idle(limited.gw)
    assert_nothing_left(limited, stored)


@pytest.mark.parametrize("route", ROUTES)
def test_client_stalling_mid_body_is_408_and_the_se_partial_removed(
    limited: Stack, route: str
) -> None:
    stored = limited.stored_ids()
    with start_chunked_upload(limited, route) as sock:
        for _ in range(8):  # 512 KiB: eight blocks already streamed to the SE
            sock.sendall(chunk(os.urandom(64 * 1024)))
        eventually(lambda: limited.partials(), 0.9, "the SE request opening")
        answer = parse_response(read_until_close(sock, 10))
    assert_error_envelope(answer, 408, "request_timeout")
    assert_nothing_left(limited, stored)


# -- client disconnects, digests, malformed multipart: the default stack ------------------


def abort_chunked_upload(stack: Stack, size: int, route: str = "put") -> None:
    """Send `size` bytes of a chunked upload, then close the socket without the end."""
    with start_chunked_upload(stack, route) as sock:
        block = os.urandom(256 * 1024)
        for _ in range(size // len(block)):
            sock.sendall(chunk(block))
        eventually(lambda: stack.partials(), what="the SE request opening")


def test_client_disconnect_mid_upload_leaves_nothing_and_leaks_nothing(stack: Stack) -> None:
    stored = stack.stored_ids()
    pid = stack.gw.pid

    def settled() -> bool:
        return metric(stack.gw, "ingester_uploads_in_flight") == 0 and not stack.partials()

    for _ in range(3):  # warm-up: connection pool, encoder threads
        abort_chunked_upload(stack, 3 * MiB)
    eventually(settled, what="the warm-up uploads settled")
    fds_before, threads_before = process_counts(pid)
    for _ in range(20):
        abort_chunked_upload(stack, 3 * MiB)
    eventually(settled, what="no aborted upload in flight, no partial")
    fds_after, threads_after = process_counts(pid)
    assert stack.gw.log_path.read_text().count('"upload_aborted"') >= 23
    assert fds_after <= fds_before + 4, (fds_before, fds_after)
    assert threads_after <= threads_before + 2, (threads_before, threads_after)
    assert metric(stack.gw, "ingester_uploads_in_flight") == 0
    assert_nothing_left(stack, stored)


def test_client_disconnect_mid_multipart_file_part_leaves_nothing(stack: Stack) -> None:
    stored = stack.stored_ids()
    abort_chunked_upload(stack, 3 * MiB, "multipart")
    idle(stack.gw)
    assert_nothing_left(stack, stored)


def test_put_without_content_length_or_chunking_is_411(stack: Stack) -> None:
    """HTTP/1.1 framing: no Content-Length and no chunking means no body at all."""
    with connect(stack) as sock:
        sock.sendall(raw_headers(stack, "/api/v1/files/x.bin", {"Connection": "close"}))
        answer = parse_response(read_until_close(sock, 10))
    assert_error_envelope(answer, 411, "length_required")


def content_digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


@pytest.fixture(scope="module")
def payload() -> bytes:
    """Over two 1 MiB blocks: the SE is receiving before the digest can be judged."""
    return os.urandom(2 * MiB + 12345)


@pytest.mark.parametrize(
    "header",
    ["content-digest", "x-checksum-sha256"],
)
def test_wrong_client_digest_is_422_and_nothing_stored(
    stack: Stack, payload: bytes, header: str
) -> None:
    stored = stack.stored_ids()
    wrong = b"something else"
    if header == "content-digest":
        headers = {"Content-Digest": content_digest(wrong)}
    else:
        headers = {"X-Checksum-SHA256": sha256_hex(wrong)}
    assert_error_envelope(
        stack.put(payload, query=AS_SENT, headers=headers), 422, "digest_mismatch"
    )
    assert_nothing_left(stack, stored)


def test_wrong_client_digest_on_the_multipart_route_is_422_and_nothing_stored(
    stack: Stack, payload: bytes
) -> None:
    stored = stack.stored_ids()
    body, content_type = multipart_form({"compress": "false"}, payload)
    answer = stack.post_form(body, content_type, headers={"X-Checksum-SHA256": "0" * 64})
    assert_error_envelope(answer, 422, "digest_mismatch")
    assert_nothing_left(stack, stored)


def test_right_client_digest_is_stored(stack: Stack, payload: bytes) -> None:
    headers = {
        "Content-Digest": content_digest(payload),
        "X-Checksum-SHA256": sha256_hex(payload),
    }
    answer = stack.put(payload, query=AS_SENT, headers=headers)
    assert answer.status == 201, answer.body
    assert stack.download(answer.json()["file_id"]) == payload


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Digest": "sha-256=:not base64!:"},
        {"Content-Digest": "sha-256=:" + base64.b64encode(b"short").decode() + ":"},
        {"Content-Digest": "sha-256 abc"},
        {"X-Checksum-SHA256": "xyz"},
        {"X-Checksum-SHA256": "ab" * 31},
    ],
    ids=["cd_not_base64", "cd_wrong_length", "cd_not_a_dictionary", "hex_garbage", "hex_short"],
)
def test_malformed_digest_header_is_400_and_nothing_stored(
    stack: Stack, payload: bytes, headers: dict[str, str]
) -> None:
    stored = stack.stored_ids()
    assert_error_envelope(stack.put(payload, query=AS_SENT, headers=headers), 400, "invalid_digest")
    assert_nothing_left(stack, stored)


def big_form_without_end(data: bytes) -> bytes:
    body, _ = multipart_form({}, data)
    return body[: -len(b"\r\n--b0undary--\r\n")]


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        pytest.param(
            os.urandom(300_000), "multipart/form-data; boundary=b0undary", 400, id="garbage"
        ),
        pytest.param(
            big_form_without_end(os.urandom(3 * MiB)),
            "multipart/form-data; boundary=b0undary",
            400,
            id="missing_closing_boundary",
        ),
        pytest.param(
            b'--b0undary\r\nContent-Disposition: form-data; name="description"\r\n\r\nx\r\n'
            b"--b0undary--\r\n",
            "multipart/form-data; boundary=b0undary",
            400,
            id="no_file_part",
        ),
        pytest.param(
            multipart_form({}, b"x" * 1000)[0]
            .replace(b"--b0undary--\r\n", b"")
            .__add__(
                b'--b0undary\r\nContent-Disposition: form-data; name="description"\r\n\r\n'
                b"late\r\n--b0undary--\r\n"
            ),
            "multipart/form-data; boundary=b0undary",
            400,
            id="field_after_file",
        ),
        pytest.param(
            multipart_form({}, b"x" * 1000)[0], "multipart/form-data", 400, id="no_boundary"
        ),
        pytest.param(b'{"file": "x"}', "application/json", 415, id="json_content_type"),
        pytest.param(b"abc", "text/plain", 415, id="text_content_type"),
    ],
)
def test_malformed_multipart_is_a_4xx_and_the_gateway_stays_up(
    stack: Stack, body: bytes, content_type: str, status: int
) -> None:
    stored = stack.stored_ids()
    assert_error_envelope(stack.post_form(body, content_type), status)
    assert_nothing_left(stack, stored)
    good_body, good_type = multipart_form({"description": "after"}, b"still here")
    assert stack.post_form(good_body, good_type).status == 201


# -- a Storage Element that lies about the checksum ----------------------------------------


@dataclass
class ProxiedStack:
    gw: ServerProcess
    rw: Stack  # rw SE behind `rw_proxy`: retention_policy=permanent lands here
    edit: Stack  # edit SE behind `edit_proxy`: retention_policy=temporary lands here
    rw_proxy: StorageElementProxy
    edit_proxy: StorageElementProxy


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[ProxiedStack]:
    workdir = tmp_path_factory.mktemp("tamper")
    rw_data, edit_data = workdir / "rw-data", workdir / "edit-data"
    rw_se = storage_element(workdir, keys.public_path, element_id="se-rw", data_dir=rw_data)
    edit_se = storage_element(
        workdir, keys.public_path, element_id="se-edit", mode="edit", data_dir=edit_data
    )
    with (
        running(rw_se, edit_se),
        StorageElementProxy(rw_se.url) as rw_proxy,
        StorageElementProxy(edit_se.url) as edit_proxy,
    ):
        entries = [
            {"id": "se-rw", "url": rw_proxy.url, "mode": "rw", "priority": 100},
            {"id": "se-edit", "url": edit_proxy.url, "mode": "edit", "priority": 100},
        ]
        gw = gateway(workdir, keys.public_path, entries)
        with running(gw):
            yield ProxiedStack(
                gw,
                Stack(rw_se, gw, keys, rw_data),
                Stack(edit_se, gw, keys, edit_data),
                rw_proxy,
                edit_proxy,
            )


def upload_through_a_lying_se(
    env: ProxiedStack,
    se: Stack,
    proxy: StorageElementProxy,
    token: str,
    lie: Callable[[int, bytes], tuple[int, bytes]] = wrong_checksum,
    code: str = "checksum_mismatch",
) -> tuple[str, list[tuple[str, int]]]:
    """Upload through a proxy that falsifies the SE's 201: the client gets 502 and the
    file the SE did store is gone. Returns its id and the deletes the SE received."""
    stored = se.stored_ids()
    uploads, deletes = len(proxy.uploads()), len(proxy.deletes())
    policy = "temporary" if se is env.edit else "permanent"
    proxy.rewrite = se_upload_reply(lie)
    try:
        query = f"retention_policy={policy}"
        answer = put(env.gw, {"Authorization": token}, os.urandom(3 * MiB), "lie.bin", query)
    finally:
        proxy.rewrite = None
    assert_error_envelope(answer, 502, code)
    (upload,) = proxy.uploads()[uploads:]
    assert upload.status == 201, "the SE did not store the file: nothing to compensate"
    file_id = json.loads(upload.reply)["file_id"]
    assert file_id not in se.stored_ids(), "the file the SE stored is still there"
    assert se.stored_ids() == stored
    assert se.settled_partials() == []
    return file_id, [(d.path, d.status) for d in proxy.deletes()[deletes:]]


def test_se_checksum_mismatch_falls_back_to_the_edit_mode_delete(
    proxied: ProxiedStack, keys: DevKeys
) -> None:
    """Compensation with a plain user token: gc is refused (not a service account),
    the edit-mode `DELETE /api/v1/files/{id}` by the uploader removes the file."""
    token = "Bearer " + keys.token("bob")
    file_id, deletes = upload_through_a_lying_se(proxied, proxied.edit, proxied.edit_proxy, token)
    assert deletes == [(f"/api/v1/gc/{file_id}", 403), (f"/api/v1/files/{file_id}", 200)]


def test_se_checksum_mismatch_with_a_user_token_on_rw_is_compensated_by_the_service_account(
    tmp_path: Path, keys: DevKeys
) -> None:
    """A plain user on an rw SE: only gc deletes there, and gc wants a service account.
    The gateway's own service account (client credentials from the token service) does it."""
    rw_data = tmp_path / "rw-data"
    rw_se = storage_element(tmp_path, keys.public_path, element_id="se-rw", data_dir=rw_data)
    tokens = admin_module(tmp_path, keys.private_path)
    with running(rw_se, tokens), StorageElementProxy(rw_se.url) as proxy:
        entry = [{"id": "se-rw", "url": proxy.url, "mode": "rw"}]
        gw = gateway(tmp_path, keys.public_path, entry, env=service_account_env(tokens))
        with running(gw):
            env = ProxiedStack(
                gw, Stack(rw_se, gw, keys, rw_data), Stack(rw_se, gw, keys, rw_data), proxy, proxy
            )
            file_id, deletes = upload_through_a_lying_se(
                env, env.rw, proxy, "Bearer " + keys.token("carol")
            )
    assert deletes == [(f"/api/v1/gc/{file_id}", 200)]


# -- the SE is down, or full ---------------------------------------------------------------


@pytest.fixture(scope="module")
def small_se(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Stack]:
    yield from start_stack(tmp_path_factory.mktemp("small"), keys, capacity="1MiB")


def test_full_se_is_507_for_a_chunked_upload_and_nothing_stored(small_se: Stack) -> None:
    """The gateway cannot know the size: the SE refuses mid-stream with 507."""
    pieces = (os.urandom(256 * 1024) for _ in range(12))  # 3 MiB
    answer = small_se.put(pieces, query=AS_SENT)
    assert_error_envelope(answer, 507, "insufficient_storage")
    assert_nothing_left(small_se, [])


def test_full_se_is_507_for_a_content_length_upload_and_nothing_stored(small_se: Stack) -> None:
    """The gateway knows the size and the SE's free space: no node can take it."""
    answer = small_se.put(os.urandom(3 * MiB), query=AS_SENT)
    assert_error_envelope(answer, 507, "insufficient_storage")
    assert_nothing_left(small_se, [])


# -- a Storage Element that stops reading mid-body ----------------------------------------

# Well past what the gateway needs (1 s upstream timeout, then a bounded drain of the
# client's body), so a loaded machine does not read as waiting out the stall.
STALL_SECONDS = 8.0


@pytest.fixture(scope="module")
def stalling(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[ProxiedStack]:
    """A real SE behind a proxy that can stop reading; the gateway gives the SE 1 s."""
    workdir = tmp_path_factory.mktemp("stalling")
    data_dir = workdir / "se-1-data"
    se = storage_element(workdir, keys.public_path, data_dir=data_dir)
    with running(se), StorageElementProxy(se.url) as proxy:
        entry = [{"id": "se-1", "url": proxy.url, "mode": "rw", "priority": 100}]
        env = {"INGESTER_UPSTREAM_RESPONSE_TIMEOUT_SECONDS": "1"}
        gw = gateway(workdir, keys.public_path, entry, env=env)
        with running(gw):
            se_stack = Stack(se, gw, keys, data_dir)
            yield ProxiedStack(gw, se_stack, se_stack, proxy, proxy)


def test_se_that_stops_reading_is_a_502_after_the_upstream_timeout(
    stalling: ProxiedStack,
) -> None:
    """Backpressure is not a hang: an SE that takes no data for the upstream timeout
    fails the upload (the client is answered, after a bounded drain of its body)."""
    stack, proxy = stalling.rw, stalling.rw_proxy
    stored = stack.stored_ids()
    proxy.stall_upload(after_bytes=MiB, seconds=STALL_SECONDS)
    started = time.monotonic()
    answer = stack.put((os.urandom(256 * 1024) for _ in range(64)), query=AS_SENT)  # 16 MiB
    assert proxy.stalled.is_set()
    assert time.monotonic() - started < STALL_SECONDS, "the gateway waited out the stall"
    assert_error_envelope(answer, 502)
    assert_nothing_left(stack, stored, wait=STALL_SECONDS + 5)


def test_client_gone_while_the_se_stalls_is_aborted_within_the_upstream_timeout(
    stalling: ProxiedStack,
) -> None:
    """While the gateway is blocked handing a block to a stuck SE it reads nothing from
    the client, so it cannot see the client leave: without a bound on the SE's silence
    the upload (task, client socket, SE socket) would live as long as the SE stalls."""
    stack, proxy = stalling.rw, stalling.rw_proxy
    stored = stack.stored_ids()
    proxy.stall_upload(after_bytes=MiB, seconds=STALL_SECONDS)
    with start_chunked_upload(stack, "put") as sock:
        sock.settimeout(0.5)
        block = chunk(os.urandom(256 * 1024))
        with contextlib.suppress(TimeoutError):
            for _ in range(256):  # until the gateway stops taking data (64 MiB at most)
                sock.sendall(block)
        assert proxy.stalled.wait(5)
    stall_began = time.monotonic()
    idle(stack.gw, 10)
    assert time.monotonic() - stall_began < STALL_SECONDS - 1, "aborted only when the SE woke"
    assert_nothing_left(stack, stored, wait=STALL_SECONDS + 5)

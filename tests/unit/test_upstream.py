"""The SE side of the wire (pure, or aiohttp with its transport replaced): the form the
gateway writes, how SE answers are classified, and the client's error branches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingester_gateway.pipeline.multipart import MultipartReader, boundary_from
from ingester_gateway.registry import NodeRecord
from ingester_gateway.upstream.client import StorageClient, UpstreamError, classify_status
from ingester_gateway.upstream.form import SeForm
from ingester_gateway.upstream.wire import describe_error
from tests.kit import FakeSession, Route, pieces_of, run

NODE = NodeRecord(id="se-1", url="http://se-1:8010", mode="rw")
UPLOAD_URL = "http://se-1:8010/api/v1/files/upload"


async def parse(body: bytes, content_type: str) -> list[tuple[str, str | None, bytes]]:
    reader = MultipartReader(pieces_of([body]), boundary_from(content_type))
    parts = []
    while (part := await reader.next_part()) is not None:
        data = b"".join([chunk async for chunk in reader.iter_data()])
        parts.append((part.name, part.filename, data))
    return parts


def test_the_form_is_a_multipart_body_any_parser_reads() -> None:
    form = SeForm()
    body = (
        form.preamble([("file_id", "f-1"), ("description", "q1 report")], "r.pdf", "x/y")
        + b"file bytes\r\n--not-a-boundary"
        + form.closing([("original_size", "30")])
    )
    assert run(parse(body, form.content_type)) == [
        ("file_id", None, b"f-1"),
        ("description", None, b"q1 report"),
        ("file", "r.pdf", b"file bytes\r\n--not-a-boundary"),
        ("original_size", None, b"30"),
    ]


@given(st.from_regex(r"[A-Za-z0-9._-]{1,40}", fullmatch=True), st.text(max_size=80))
def test_no_field_value_adds_a_part_to_the_form(name: str, value: str) -> None:
    form = SeForm()
    body = form.preamble([("description", value)], name, "text/plain") + b"data" + form.closing()
    parts = run(parse(body, form.content_type))
    assert [p[0] for p in parts] == ["description", "file"]
    assert parts[0][2] == value.encode() and parts[1][2] == b"data"


@pytest.mark.parametrize(
    ("status", "text", "raw", "kind"),
    [
        (507, "why", b"", "full"),
        (413, "why", b"", "too_large"),
        (400, "storage element is in mode 'ro'", b"", "refused"),  # the Python SE
        (409, "not writable", b'{"error":{"code":"MODE_NOT_ALLOWED"}}', "refused"),  # Go SE
        (400, "invalid file_id", b"", "rejected"),
        (409, "file exists", b"", "rejected"),
        (422, "why", b"", "rejected"),
        (401, "why", b"", "unauthorized"),
        (403, "why", b"", "unauthorized"),
        (503, "why", b"", "unavailable"),
        (500, "why", b"", "server"),
        (502, "why", b"", "server"),
        (302, "why", b"", "protocol"),
    ],
)
def test_se_statuses_map_to_failure_kinds(status: int, text: str, raw: bytes, kind: str) -> None:
    error = classify_status(status, text, raw)
    assert (error.kind, error.status) == (kind, status)
    assert error.message == f"storage element answered {status}: {text}"


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b'{"detail": "Storage mode rw"}', "Storage mode rw"),  # the Python SE
        (b'{"error": {"code": "MODE_NOT_ALLOWED", "message": "ro"}}', "ro"),  # the Go SE
        (b'{"error": {"code": "MODE_NOT_ALLOWED"}}', "MODE_NOT_ALLOWED"),
        (b"<html>bad gateway</html>", "<html>bad gateway</html>"),
        (b"\xff" * 500, "\ufffd" * 200),
    ],
)
def test_an_se_error_body_becomes_one_line(raw: bytes, text: str) -> None:
    assert describe_error(raw) == text


Answer = tuple[int, bytes] | BaseException


def answering(*answers: Answer) -> Route:
    """A FakeSession route that gives these answers in turn (raising the exceptions)."""
    queue = list(answers)

    async def route(url: str, kwargs: Mapping[str, Any]) -> tuple[int, bytes]:
        answer = queue.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    return route


def client(answers: dict[tuple[str, str], list[Answer]]) -> StorageClient:
    session = FakeSession({key: answering(*queue) for key, queue in answers.items()})
    return StorageClient(session)  # type: ignore[arg-type]


def upload(answer: Answer) -> object:
    async def go() -> object:
        try:
            return await client({("POST", UPLOAD_URL): [answer]}).upload(NODE, b"x", "m/f", {})
        except UpstreamError as exc:
            return exc

    return run(go())


def test_a_refused_connection_is_a_connect_failure() -> None:
    key = aiohttp.client_reqrep.ConnectionKey("se-1", 8010, False, True, None, None, None)
    error = upload(aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused")))
    assert isinstance(error, UpstreamError) and error.kind == "connect"


def test_an_se_that_does_not_answer_in_time_is_a_timeout() -> None:
    error = upload(aiohttp.ServerTimeoutError())
    assert isinstance(error, UpstreamError) and error.kind == "timeout"


def test_a_connection_lost_mid_request_is_a_server_failure() -> None:
    error = upload(aiohttp.ServerDisconnectedError())
    assert isinstance(error, UpstreamError) and error.kind == "dropped"


def test_a_reply_that_is_not_the_contracts_is_a_protocol_failure() -> None:
    error = upload((201, b'{"ok": true}'))
    assert isinstance(error, UpstreamError) and error.kind == "protocol"


def test_an_se_error_status_carries_its_reason() -> None:
    error = upload((507, b'{"detail": "disk full"}'))
    assert isinstance(error, UpstreamError)
    assert (error.kind, error.status) == ("full", 507)
    assert "disk full" in error.message


def test_a_stored_reply_is_decoded() -> None:
    stored = upload((201, b'{"file_id": "f", "checksum": "ab", "file_size": 1, "x": 2}'))
    assert not isinstance(stored, UpstreamError)


def test_a_delete_falls_back_to_the_edit_route_and_404_counts_as_gone() -> None:
    base = "http://se-1:8010/api/v1"
    storage = client(
        {
            ("DELETE", f"{base}/gc/f-1"): [(403, b"{}")],
            ("DELETE", f"{base}/files/f-1"): [(404, b"{}")],
            ("DELETE", f"{base}/gc/f-2"): [aiohttp.ClientOSError()],
            ("DELETE", f"{base}/gc/f-3"): [(400, b"{}")],
            ("DELETE", f"{base}/files/f-3"): [(400, b"{}")],
            ("DELETE", f"{base}/gc/f-4"): [(403, b"{}")],
            ("DELETE", f"{base}/files/f-4"): [(400, b"{}")],
        }
    )

    async def go() -> list[str]:
        return [await storage.delete(NODE, f"f-{n}", {}) for n in (1, 2, 3, 4)]

    # f-4: an rw SE refused our credential on the gc route: a service account is missing
    assert run(go()) == ["deleted", "failed", "failed", "forbidden"]


def test_a_capacity_probe_that_fails_in_any_way_is_no_answer() -> None:
    url = "http://se-1:8010/api/v1/capacity"
    storage = client(
        {
            ("GET", url): [
                (200, b'{"capacity": {"total": 9, "used": 1, "available": 8}}'),
                (500, b""),
                (200, b"not json"),
                aiohttp.ClientOSError(),
            ]
        }
    )

    async def go() -> list[object]:
        return [await storage.capacity(NODE) for _ in range(4)]

    first, *rest = run(go())
    assert first is not None and first.capacity.available == 8  # type: ignore[attr-defined]
    assert rest == [None, None, None]

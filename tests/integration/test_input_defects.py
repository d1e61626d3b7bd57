"""Input the gateway used to mishandle, each answered as it should be now (issue 10):
through a real gateway and SE, and nothing of it stored."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from tests.kit import (
    assert_error_envelope,
    files_path,
    http_call,
    log_events,
    multipart_body,
    raw_exchange,
    status_of,
)
from tests.stack import Stack

# Deep enough for a RecursionError in a decoder (its limit is 1000), short enough for a
# query string within the request-target limit.
DEEP = '{"a": ' + "[" * 1200 + "]" * 1200 + "}"


def test_deeply_nested_metadata_is_400_in_the_query_and_in_the_form(stack: Stack) -> None:
    before = stack.stored_ids()
    query = "metadata=" + urllib.parse.quote(DEEP)
    raw = stack.put(b"data", "deep.bin", query=query)
    assert (
        "deeper than 10 levels" in assert_error_envelope(raw, 400, "invalid_parameter")["message"]
    )
    form = stack.post_form(
        *multipart_body([("metadata", None, DEEP.encode()), ("file", "f", b"x")])
    )
    assert_error_envelope(form, 400, "invalid_parameter")
    assert stack.stored_ids() == before


def test_a_non_utf8_part_header_is_400_and_its_bytes_are_in_no_answer_or_log(
    stack: Stack,
) -> None:
    marker = b"do-not-echo-me"
    body = (
        b'--B\r\nContent-Disposition: form-data; name="description"\r\nX-Junk: \xff'
        + marker * 100
        + b'\r\n\r\nv\r\n--B\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
        b"\r\nx\r\n--B--\r\n"
    )
    answer = stack.post_form(body, "multipart/form-data; boundary=B")
    error = assert_error_envelope(answer, 400, "malformed_multipart")
    assert marker.decode() not in error["message"]
    logged = json.dumps(log_events(stack.gw))
    assert marker.decode() not in logged


def test_a_repeated_boundary_parameter_is_400(stack: Stack) -> None:
    body, content_type = multipart_body([("file", "f.bin", b"data")])
    answer = stack.post_form(body, content_type + "; boundary=other")
    assert "repeated" in assert_error_envelope(answer, 400, "bad_request")["message"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("TRACE", "/api/v1/files/upload", "POST, PUT"),
        ("GET", "/api/v1/files/upload", "POST, PUT"),
        ("TRACE", "/api/v1/files/x.bin", "PUT"),
        ("DELETE", "/api/v1/files/x.bin", "PUT"),
    ],
)
def test_other_methods_on_the_upload_routes_are_405_with_allow(
    stack: Stack, method: str, path: str, allowed: str
) -> None:
    answer = http_call(stack.gw, method, path, headers=stack.keys.auth())
    assert_error_envelope(answer, 405, "method_not_allowed")
    assert answer.headers["allow"] == allowed


def test_trace_on_another_route_is_405_too(stack: Stack) -> None:
    answer = http_call(stack.gw, "TRACE", "/metrics")
    assert_error_envelope(answer, 405, "method_not_allowed")


@pytest.mark.parametrize("name", ["invoice\u202efdp.exe", "a\u0085b.txt", "..", "dir/"])
def test_a_file_name_with_bidi_or_control_characters_or_no_name_is_400(
    stack: Stack, name: str
) -> None:
    raw = stack.put(b"data", name)
    assert_error_envelope(raw, 400, "invalid_filename")
    form = stack.post_form(*multipart_body([("file", name, b"data")]))
    assert_error_envelope(form, 400, "invalid_filename")


def test_a_malformed_chunked_body_is_400_and_nothing_is_stored(stack: Stack) -> None:
    before = stack.stored_ids()
    token = stack.keys.token()
    head = (
        f"PUT {files_path('chunks.bin')} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    body = b"10000\r\n" + b"c" * 0x10000 + b"\r\nnot-hex\r\n"
    response = raw_exchange(stack.gw, head + body)
    assert status_of(response) == 400, response[:300]
    assert b'"malformed_request"' in response
    assert stack.settled_partials() == []
    assert stack.stored_ids() == before

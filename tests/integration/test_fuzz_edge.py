"""Fuzz (hypothesis, bounded) of what a hostile client sends a real gateway with a
valid token: malformed multipart bodies, broken chunked framing, bad query values.
Every answer is a 4xx, the gateway stays up, and nothing is left on the SE."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kit import DevKeys, files_path, http_call, raw_exchange, status_of
from tests.stack import Stack, own_stack

EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
OPTION_NAMES = [
    "description",
    "retention_policy",
    "storage_mode",
    "ttl_days",
    "compress",
    "compression_algorithm",
    "metadata",
]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Stack]:
    env = {"INGESTER_CLIENT_BODY_TIMEOUT_SECONDS": "2", "INGESTER_HEADER_TIMEOUT_SECONDS": "2"}
    with own_stack(tmp_path_factory.mktemp("fuzz"), keys, env=env) as stack:
        before = stack.stored_ids()
        yield stack
        # After every example: the gateway is up, and the SE holds nothing new.
        assert stack.gw.process is not None and stack.gw.process.poll() is None
        assert http_call(stack.gw, "GET", "/health/live", timeout=10).status == 200
        assert stack.settled_partials(timeout=10) == []
        assert stack.stored_ids() == before


def _request(stack: Stack, head: str, body: bytes) -> int:
    token = stack.keys.token()
    request = head.replace("{token}", token).encode("latin-1") + b"\r\n" + body
    response = raw_exchange(stack.gw, request, timeout=60)
    return status_of(response)


def _assert_client_error(status: int) -> None:
    assert 400 <= status < 500, status


VALID_FORM = (
    b'--B\r\nContent-Disposition: form-data; name="description"\r\n\r\nd\r\n'
    b'--B\r\nContent-Disposition: form-data; name="compress"\r\n\r\nfalse\r\n'
    b'--B\r\nContent-Disposition: form-data; name="file"; filename="f.bin"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n" + b"file data " * 20 + b"\r\n"
)  # no closing delimiter: whatever is done to it, the form never ends


@EXAMPLES
@given(
    cut=st.integers(0, len(VALID_FORM)),
    edits=st.lists(st.tuples(st.integers(0, len(VALID_FORM)), st.binary(max_size=6)), max_size=5),
    epilogue=st.sampled_from([b"", b"--B-", b"\r\n--C--\r\n", b"\r\n--B\r\n"]),
)
def test_malformed_multipart_is_only_ever_a_4xx(
    target: Stack, cut: int, edits: list[tuple[int, bytes]], epilogue: bytes
) -> None:
    body = bytearray(VALID_FORM[:cut])
    for at, replacement in edits:
        body[at : at + len(replacement)] = replacement
    body += epilogue
    head = (
        "POST /api/v1/files/upload HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {len(body)}\r\n"
    )
    _assert_client_error(_request(target, head, bytes(body)))


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


BROKEN_FRAMING = [
    b"zz\r\n",  # not a hex size
    b"5\r\nabcdeXY",  # no CRLF after the data
    b"ffffffffffffffffffff\r\n",  # a size past 64 bits
    b"-1\r\n",
    b"\r\n\r\n",  # an empty size line
    b"5\x00\r\nabcde\r\n",
    b"0\r\nbad trailer\r\n\r\n",  # a trailer field without a colon
]


@EXAMPLES
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=3000), max_size=4),
    broken=st.sampled_from(BROKEN_FRAMING),
    route=st.sampled_from(["put", "form"]),
)
def test_broken_chunked_framing_is_only_ever_a_4xx(
    target: Stack, chunks: list[bytes], broken: bytes, route: str
) -> None:
    if route == "put":
        head = f"PUT {files_path('chunked.bin', 'compress=false')} HTTP/1.1\r\n"
        prefix = b""
    else:
        head = "POST /api/v1/files/upload HTTP/1.1\r\n"
        head += "Content-Type: multipart/form-data; boundary=B\r\n"
        prefix = _chunk(b'--B\r\nContent-Disposition: form-data; name="file"; filename="c"\r\n\r\n')
    head += "Host: t\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n"
    body = prefix + b"".join(_chunk(c) for c in chunks) + broken
    _assert_client_error(_request(target, head, body))


def _bad_value(name: str) -> st.SearchStrategy[str]:
    """A value the option never takes (so the upload must be refused)."""
    if name in ("retention_policy", "storage_mode", "compression_algorithm", "compress"):
        valid = {"temporary", "permanent", "edit", "rw", "zstd", "brotli", "gzip", "none"}
        valid |= {"true", "false", "1", "0", "yes", "no", "on", "off", ""}
        return st.text(min_size=1, max_size=40).filter(lambda v: v.lower() not in valid)
    if name == "ttl_days":
        return st.one_of(
            st.integers().filter(lambda n: not 1 <= n <= 365).map(str),
            st.text(min_size=1, max_size=12).filter(lambda v: not v.strip().isdigit()),
        )
    if name == "metadata":
        return st.one_of(
            st.text(min_size=1, max_size=60).filter(lambda v: not v.strip().startswith("{")),
            st.integers(11, 400).map(lambda depth: '{"a":' + "[" * depth + "]" * depth + "}"),
        )
    return st.text(min_size=1001, max_size=1200)  # description: past artStore's 1000


@EXAMPLES
@given(
    bad=st.sampled_from(OPTION_NAMES).flatmap(lambda n: st.tuples(st.just(n), _bad_value(n))),
    others=st.dictionaries(
        st.sampled_from([*OPTION_NAMES, "x", "file_id", ""]), st.text(max_size=30), max_size=4
    ),
    raw_tail=st.sampled_from(["", "&", "&&=", "&%ZZ", "&a=%E2%82", "&=%00"]),
)
def test_bad_query_values_are_only_ever_a_4xx(
    target: Stack, bad: tuple[str, str], others: dict[str, str], raw_tail: str
) -> None:
    name, value = bad
    pairs = [(k, v) for k, v in others.items() if k != name] + [(name, value)]
    query = urllib.parse.urlencode(pairs) + raw_tail
    head = (
        f"PUT {files_path('q.bin', query)} HTTP/1.1\r\nHost: t\r\n"
        "Authorization: Bearer {token}\r\nContent-Length: 4\r\n"
    )
    _assert_client_error(_request(target, head, b"data"))

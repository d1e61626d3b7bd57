"""The shortest path through the stack: one raw upload, stored as sent."""

from tests.kit import AS_SENT, sha256_hex
from tests.stack import Stack


def test_raw_upload_roundtrip(stack: Stack) -> None:
    data = b"hello " * 1000
    answer = stack.put(data, "hello.txt", query=AS_SENT)
    assert answer.status == 201, answer.body
    body = answer.json()
    assert body["checksum"] == sha256_hex(data)
    assert stack.download(body["file_id"]) == data

import json
import urllib.request

from tests.conftest import Stack, sha256_hex


def test_raw_upload_roundtrip(stack: Stack) -> None:
    data = b"hello " * 1000
    req = urllib.request.Request(
        f"{stack.gw.url}/api/v1/files/hello.txt?compress=false",
        data=data,
        method="PUT",
        headers=stack.keys.auth(),
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 201
        body = json.loads(resp.read())
    assert body["checksum"] == sha256_hex(data)
    assert stack.download(body["file_id"]) == data

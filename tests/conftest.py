"""Shared fixtures: dev keys and tokens, and a running SE + gateway stack."""

from __future__ import annotations

import hashlib
import http.client
import json
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from ingester_gateway.reference.processes import (
    ServerProcess,
    gateway,
    running,
    se_entry,
    service_account_env,
    storage_element,
    token_service,
)
from ingester_gateway.reference.tokens import generate_keypair, mint_token

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile("default")


@dataclass
class DevKeys:
    private_pem: bytes
    public_path: Path
    private_path: Path

    def token(self, sub: str = "alice", role: str = "user", **kwargs: object) -> str:
        return mint_token(self.private_pem, sub=sub, role=role, **kwargs)  # type: ignore[arg-type]

    def auth(self, sub: str = "alice", role: str = "user", **kwargs: object) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, role, **kwargs)}"}


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> DevKeys:
    private, public = generate_keypair(tmp_path_factory.mktemp("keys"))
    return DevKeys(private.read_bytes(), public, private)


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> DevKeys:
    private, public = generate_keypair(tmp_path_factory.mktemp("other-keys"))
    return DevKeys(private.read_bytes(), public, private)


@dataclass
class Stack:
    se: ServerProcess
    gw: ServerProcess
    keys: DevKeys
    data_dir: Path

    def stored_ids(self) -> list[str]:
        files = self.data_dir / "files"
        return sorted(p.name[: -len(".attr.json")] for p in files.glob("*.attr.json"))

    def partials(self) -> list[str]:
        return sorted(p.name for p in (self.data_dir / "tmp").iterdir())

    def download(self, file_id: str) -> bytes:
        request = urllib.request.Request(
            f"{self.se.url}/api/v1/files/{file_id}/download", headers=self.keys.auth()
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            return bytes(resp.read())

    def settled_partials(self, timeout: float = 5.0) -> list[str]:
        """The SE's partial files once it has had up to `timeout` s to drop them (it
        removes a partial asynchronously, after the gateway aborted the request)."""
        deadline = time.monotonic() + timeout
        while (left := self.partials()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left


def start_stack(
    workdir: Path,
    keys: DevKeys,
    *,
    mode: str = "rw",
    env: dict[str, str] | None = None,
    capacity: str = "10GiB",
    service_account: bool = True,
) -> Iterator[Stack]:
    """An SE and a gateway; with `service_account`, also the reference token service, so
    the gateway can compensate on an rw SE (gc needs a service-account token)."""
    data_dir = workdir / "se-1-data"
    se = storage_element(workdir, keys.public_path, mode=mode, capacity=capacity, data_dir=data_dir)
    tokens = token_service(workdir, keys.private_path)
    services = (se, tokens) if service_account else (se,)
    with running(*services):
        gw_env = {**(service_account_env(tokens) if service_account else {}), **(env or {})}
        gw = gateway(workdir, keys.public_path, [se_entry(se, mode)], env=gw_env)
        with running(gw):
            yield Stack(se, gw, keys, data_dir)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Stack]:
    """One reference SE (rw) and one gateway, shared by a test module."""
    yield from start_stack(tmp_path_factory.mktemp("stack"), keys)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_call(
    url: str,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Answer:
    """One request with http.client: any status comes back as an Answer, never raised.
    An iterable body is sent chunked."""
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        chunked = body is not None and not isinstance(body, bytes)
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        resp = conn.getresponse()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def assert_error_envelope(answer: Answer, status: int, code: str | None = None) -> dict[str, str]:
    """`answer` is the gateway's JSON error envelope with `status` (and `code`)."""
    assert answer.status == status, (answer.status, answer.body[:500])
    assert answer.headers.get("content-type", "").startswith("application/json"), answer.headers
    error = answer.json()["error"]
    assert set(error) == {"code", "message", "request_id"}, error
    assert error["message"] and error["request_id"]
    assert error["request_id"] == answer.headers.get("x-request-id")
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


def multipart_form(
    fields: dict[str, str], data: bytes, filename: str = "data.bin", boundary: str = "b0undary"
) -> tuple[bytes, str]:
    """A multipart/form-data body: control fields, then the `file` part; and its type."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"'
        f"\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"

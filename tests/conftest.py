"""Shared fixtures: dev keys and tokens, and a running SE + gateway stack."""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from ingester_gateway.tokens import generate_keypair, mint_token
from tests.servers import ServerProcess, gateway, running, se_entry, storage_element

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


def start_stack(
    workdir: Path,
    keys: DevKeys,
    *,
    mode: str = "rw",
    env: dict[str, str] | None = None,
    capacity: str = "10GiB",
) -> Iterator[Stack]:
    data_dir = workdir / "se-1-data"
    se = storage_element(workdir, keys.public_path, mode=mode, capacity=capacity, data_dir=data_dir)
    with running(se):
        gw = gateway(workdir, keys.public_path, [se_entry(se, mode)], env=env)
        with running(gw):
            yield Stack(se, gw, keys, data_dir)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Stack]:
    """One reference SE (rw) and one gateway, shared by a test module."""
    yield from start_stack(tmp_path_factory.mktemp("stack"), keys)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

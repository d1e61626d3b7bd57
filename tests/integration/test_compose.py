"""compose.yaml, checked without a Docker engine: the file against the Compose
Specification's schema (the copy check-jsonschema ships), the stack's shape, and every
service's command run from the same arguments: ours with `ingester-gateway --check`
(arguments parsed, key files read, settings validated, nothing started; the `keys`
one-shot runs for real), Redis started with its arguments, and nginx's configuration
(deploy/nginx.conf, mounted as is) tested by `nginx -t`. The named volumes a service
mounts are temporary directories here, put where the container paths were."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingester_gateway.reference.processes import find_binary, redis_server, running

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
BIN = Path(sys.executable).parent  # the venv's console scripts: ingester-gateway, ...


def stack() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def services() -> dict[str, dict[str, Any]]:
    return dict(stack()["services"])


class Volumes:
    """Each named volume a directory of its own (shared by the services that mount it);
    a bind mount (`./deploy/nginx.conf:...`) is the repository's file."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def mounts(self, service: dict[str, Any]) -> dict[str, Path]:
        """Container path -> where it is here."""
        found = {}
        for entry in service.get("volumes", []):
            source, target = entry.split(":")[:2]
            if source.startswith("."):
                found[target] = ROOT / source
            else:
                found[target] = self.base / source
                found[target].mkdir(parents=True, exist_ok=True)
        return found


def localized(text: str, mounts: dict[str, Path]) -> str:
    for target in sorted(mounts, key=len, reverse=True):
        text = re.sub(rf"(?<![\w/]){re.escape(target)}(?=/|\b|$)", str(mounts[target]), text)
    return text


def command_of(service: dict[str, Any]) -> list[str]:
    """The service's command as Compose splits it (a string is split like a shell's)."""
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def run_here(
    argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("INGESTER_")}
    base["PATH"] = f"{BIN}{os.pathsep}{base.get('PATH', '')}"
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**base, **(env or {})}
    )


def test_the_compose_file_follows_the_compose_specification() -> None:
    checked = run_here(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)]
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_stack_is_redis_the_admin_module_two_ses_two_gateways_and_nginx() -> None:
    found = services()
    gateways = {n: s for n, s in found.items() if command_of(s)[:1] == ["serve"]}
    modes = {
        n: command_of(s)[command_of(s).index("--mode") + 1]
        for n, s in found.items()
        if command_of(s)[:1] == ["storage-element"]
    }
    assert sorted(modes.values()) == ["edit", "rw"]
    assert all("--redis-url" in command_of(found[n]) for n in modes)  # self-registering
    assert len(gateways) == 2
    assert {s.get("image", "").split(":")[0] for s in found.values()} >= {"redis", "nginx"}
    assert any(command_of(s)[:1] == ["admin-module"] for s in found.values())

    # One tus staging volume shared at INGESTER_TUS_DIR; a journal (state dir) each.
    tus_volumes, state_volumes = set(), set()
    for gateway in gateways.values():
        env = gateway["environment"]
        by_target = {v.split(":")[1]: v.split(":")[0] for v in gateway["volumes"]}
        tus_volumes.add(by_target[env["INGESTER_TUS_DIR"]])
        state_volumes.add(by_target[env["INGESTER_STATE_DIR"]])
    assert len(tus_volumes) == 1 and len(state_volumes) == 2

    # nginx serves deploy/nginx.conf, whose upstream is exactly the two gateways.
    [nginx] = [s for s in found.values() if s.get("image", "").startswith("nginx")]
    assert "./deploy/nginx.conf:/etc/nginx/conf.d/default.conf:ro" in nginx["volumes"]
    upstream = re.findall(
        r"^\s*server 127\.0\.0\.1:(\d+);", (ROOT / "deploy/nginx.conf").read_text(), re.M
    )
    ports = {g["environment"]["INGESTER_PORT"] for g in gateways.values()}
    assert sorted(upstream) == sorted(ports)
    nginx_name = next(n for n, s in found.items() if s is nginx)
    assert all(g["network_mode"] == f"service:{nginx_name}" for g in gateways.values())

    declared = set(stack()["volumes"])
    used = {
        v.split(":")[0]
        for s in found.values()
        for v in s.get("volumes", [])
        if not v.startswith(".")
    }
    assert used == declared


@pytest.mark.parametrize("name", sorted(n for n, s in services().items() if "build" in s))
def test_each_service_of_our_image_accepts_its_arguments(name: str, tmp_path: Path) -> None:
    found = services()
    volumes = Volumes(tmp_path)
    # The keys one-shot first, for real: the others read the keys it writes.
    keys_service = found["keys"]
    keys_mounts = volumes.mounts(keys_service)
    made = run_here([localized(part, keys_mounts) for part in keys_service["entrypoint"]])
    assert made.returncode == 0, made.stderr
    assert (keys_mounts["/keys"] / "public.pem").is_file()
    if name == "keys":
        again = run_here([localized(part, keys_mounts) for part in keys_service["entrypoint"]])
        assert again.returncode == 0 and again.stdout == ""  # keys kept on a restart
        return

    service = found[name]
    mounts = volumes.mounts(service)
    argv = [localized(part, mounts) for part in command_of(service)]
    env = {k: localized(str(v), mounts) for k, v in service.get("environment", {}).items()}
    checked = run_here([str(BIN / "ingester-gateway"), "--check", *argv], env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"ingester-gateway {argv[0]}: arguments and configuration ok" in checked.stdout


def test_redis_starts_with_the_compose_arguments(tmp_path: Path) -> None:
    [redis_service] = [s for s in services().values() if s.get("image", "").startswith("redis")]
    program, *arguments = command_of(redis_service)
    assert program == "redis-server"
    server = redis_server(tmp_path)  # loopback, a free port, its own directory
    server.argv += arguments
    with running(server):
        assert server.process is not None and server.process.poll() is None


def test_nginx_accepts_deploy_nginx_conf_as_compose_mounts_it(tmp_path: Path) -> None:
    [nginx_service] = [s for s in services().values() if s.get("image", "").startswith("nginx")]
    mounts = Volumes(tmp_path).mounts(nginx_service)
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    for target, source in mounts.items():
        assert target.startswith("/etc/nginx/conf.d/")
        (conf_d / Path(target).name).write_text(source.read_text())
    main = tmp_path / "nginx.conf"
    # What the image's /etc/nginx/nginx.conf does: conf.d/*.conf inside http {}.
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\n"
        "events {}\n"
        f"http {{ client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;\n"
        f"       include {conf_d}/*.conf; }}\n"
    )
    tested = subprocess.run(
        [
            find_binary("nginx"),
            "-t",
            "-c",
            str(main),
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert tested.returncode == 0, tested.stderr
    assert "test is successful" in tested.stderr

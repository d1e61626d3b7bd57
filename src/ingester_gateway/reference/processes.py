"""Real server processes for `make run`, the tests and the benchmarks: reference SEs,
gateways, the Admin Module, the token service, redis (and its Sentinels), nginx.

Each server runs on a free loopback port, logs to a file, and is always stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary(name: str) -> str:
    """A Debian binary the suite needs; `make test` installs it (never a skip)."""
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise RuntimeError(f"{name} is not installed: run `make system-deps` (Debian package)")
    return found


@dataclass
class ServerProcess:
    name: str
    argv: list[str]
    port: int
    log_path: Path | None  # None: the process writes to this one's stdout
    env: dict[str, str] | None = None
    ready_path: str | None = "/health/ready"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 20.0) -> ServerProcess:
        log = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the process lifetime)
        self.process = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        if log is not None:
            log.close()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()  # one that never got ready is not left running
            raise
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.process.returncode}):\n{self.log_tail()}"
                )
            if self._is_ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout:g} s:\n{self.log_tail()}")

    def _is_ready(self) -> bool:
        if self.ready_path is None:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.5),
            ):
                return True
            return False
        try:
            with urllib.request.urlopen(self.url + self.ready_path, timeout=1) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return "(its output went to the terminal)"
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def kill(self) -> None:
        """SIGKILL, no goodbyes: what a crash looks like."""
        self.stop(signal.SIGKILL)

    def __enter__(self) -> ServerProcess:
        return self if self.process is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def storage_element(
    workdir: Path,
    public_key: Path,
    *,
    element_id: str = "se-1",
    mode: str = "rw",
    capacity: str = "10GiB",
    port: int | None = None,
    data_dir: Path | None = None,
    extra: Sequence[str] = (),
) -> ServerProcess:
    port = port or free_port()
    data = data_dir or workdir / f"{element_id}-data"
    argv = [
        PYTHON,
        "-m",
        "ingester_gateway",
        "storage-element",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data),
        "--mode",
        mode,
        "--element-id",
        element_id,
        "--capacity-bytes",
        capacity,
        "--public-key-file",
        str(public_key),
        "--quiet",
        *extra,
    ]
    return ServerProcess(element_id, argv, port, workdir / f"{element_id}.log")


def gateway(
    workdir: Path,
    public_key: Path,
    storage_elements: Sequence[Mapping[str, object]],
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    name: str = "gateway",
) -> ServerProcess:
    port = port or free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTER_")} | {
        "INGESTER_HOST": "127.0.0.1",
        "INGESTER_PORT": str(port),
        "INGESTER_AUTH_PUBLIC_KEY_FILE": str(public_key),
        "INGESTER_STORAGE_ELEMENTS": json.dumps(list(storage_elements)),
        "INGESTER_HEALTH_CHECK_INTERVAL_SECONDS": "1",
        "INGESTER_STATE_DIR": str(workdir / f"{name}-state"),
        "INGESTER_LOG_LEVEL": "info",
        **(env or {}),
    }
    argv = [PYTHON, "-m", "ingester_gateway", "serve"]
    return ServerProcess(name, argv, port, workdir / f"{name}.log", env=full_env)


SERVICE_CLIENT = ("ingester", "test-secret")


ADMIN_USER = ("admin", "admin-password")


def admin_module(
    workdir: Path,
    private_key: Path,
    *,
    redis_url: str | None = None,
    storage_elements: Sequence[ServerProcess] = (),
    poll_interval: float = 1.0,
    port: int | None = None,
    db: Path | None = None,
    extra: Sequence[str] = (),
) -> ServerProcess:
    """The reference Admin Module with one service account (SERVICE_CLIENT, role admin)
    and one admin user (ADMIN_USER, super_admin); with `redis_url` it announces file
    events, and lists `storage_elements` (polled every `poll_interval` s) there."""
    port = port or free_port()
    client_id, secret = SERVICE_CLIENT
    user, password = ADMIN_USER
    argv = [
        PYTHON,
        "-m",
        "ingester_gateway",
        "admin-module",
        "--port",
        str(port),
        "--private-key",
        str(private_key),
        "--db",
        str(db or workdir / f"admin-{port}.db"),
        "--service-account",
        f"{client_id}:{secret}",
        "--admin-user",
        f"{user}:{password}",
        "--poll-interval",
        str(poll_interval),
    ]
    if redis_url is not None:
        argv += ["--redis-url", redis_url]
    for se in storage_elements:
        argv += ["--storage-element", f"{se.name}={se.url}"]
    name = f"admin-module-{port}"
    return ServerProcess(name, [*argv, *extra], port, workdir / f"{name}.log")


def service_account_env(tokens: ServerProcess) -> dict[str, str]:
    """Gateway settings that use `tokens` for a service account."""
    client_id, secret = SERVICE_CLIENT
    return {
        "INGESTER_SERVICE_TOKEN_URL": f"{tokens.url}/api/v1/auth/token",
        "INGESTER_SERVICE_CLIENT_ID": client_id,
        "INGESTER_SERVICE_CLIENT_SECRET": secret,
    }


def se_entry(se: ServerProcess, mode: str = "rw", priority: int = 100) -> dict[str, object]:
    return {"id": se.name, "url": se.url, "mode": mode, "priority": priority}


@contextlib.contextmanager
def running(*servers: ServerProcess) -> Iterator[tuple[ServerProcess, ...]]:
    started: list[ServerProcess] = []
    try:
        for server in servers:
            started.append(server.start())
        yield servers
    finally:
        for server in reversed(started):
            server.stop()


def redis_server(
    workdir: Path, port: int | None = None, *, replica_of: int | None = None
) -> ServerProcess:
    """A redis-server on loopback without persistence; with `replica_of`, a replica of
    the server on that port."""
    port = port or free_port()
    data = workdir / f"redis-{port}"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        find_binary("redis-server"),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data),
        "--protected-mode",
        "no",
    ]
    if replica_of is not None:
        argv += ["--replicaof", "127.0.0.1", str(replica_of)]
    return ServerProcess(
        f"redis-{port}", argv, port, workdir / f"redis-{port}.log", ready_path=None
    )


SENTINEL_CONF = """\
port {port}
bind 127.0.0.1
protected-mode no
dir {workdir}
sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}
sentinel down-after-milliseconds {master_name} {down_after_ms}
sentinel failover-timeout {master_name} {failover_timeout_ms}
sentinel parallel-syncs {master_name} 1
"""


def redis_sentinel(
    workdir: Path,
    master_port: int,
    *,
    master_name: str = "ingester",
    quorum: int = 2,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 5000,
    port: int | None = None,
) -> ServerProcess:
    """A Redis Sentinel (Debian's redis-sentinel) watching the master on `master_port`;
    it rewrites its own configuration file, so each has one of its own."""
    port = port or free_port()
    conf_dir = workdir / f"sentinel-{port}"
    conf_dir.mkdir(parents=True, exist_ok=True)
    conf = conf_dir / "sentinel.conf"
    conf.write_text(
        SENTINEL_CONF.format(
            port=port,
            workdir=conf_dir,
            master_name=master_name,
            master_port=master_port,
            quorum=quorum,
            down_after_ms=down_after_ms,
            failover_timeout_ms=failover_timeout_ms,
        )
    )
    argv = [find_binary("redis-sentinel"), str(conf)]
    return ServerProcess(f"sentinel-{port}", argv, port, conf_dir / "sentinel.log", ready_path=None)


NGINX_MAIN = """\
daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    include {servers};
}}
"""

NGINX_PROXY = """\
upstream backend {{ server {upstream}; keepalive 64; }}
server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    location / {{
        proxy_pass http://backend;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_read_timeout 300s;
        proxy_send_timeout 300s;
    }}
}}
"""


def nginx_serving(workdir: Path, servers: str, port: int) -> ServerProcess:
    """nginx running `servers` (what goes in `http {}`: upstreams and a server listening
    on 127.0.0.1:`port`, such as deploy/nginx.conf), its files all in `workdir`."""
    conf_dir = workdir / f"nginx-{port}"
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "servers.conf").write_text(servers)
    conf = conf_dir / "nginx.conf"
    conf.write_text(NGINX_MAIN.format(workdir=conf_dir, servers=conf_dir / "servers.conf"))
    argv = [
        find_binary("nginx"),
        "-c",
        str(conf),
        "-p",
        str(conf_dir),
        "-e",
        str(conf_dir / "error.log"),
    ]
    return ServerProcess(f"nginx-{port}", argv, port, conf_dir / "stdout.log", ready_path=None)


def nginx(workdir: Path, upstream: str, port: int | None = None) -> ServerProcess:
    """nginx proxying everything to `upstream` (host:port) without buffering bodies."""
    port = port or free_port()
    return nginx_serving(workdir, NGINX_PROXY.format(upstream=upstream, port=port), port)

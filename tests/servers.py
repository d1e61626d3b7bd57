"""Real server processes for tests and benchmarks: reference SEs, gateways, redis, nginx.

Each server runs on a free loopback port, logs to a file, and is always stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

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
    log_path: Path
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
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the process lifetime)
        self.process = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()
        self.wait_ready(timeout)
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
            with urllib.request.urlopen(self.url + self.ready_path, timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 40) -> str:
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


def token_service(workdir: Path, private_key: Path, port: int | None = None) -> ServerProcess:
    """The reference Admin token endpoint, with one service account (SERVICE_CLIENT)."""
    port = port or free_port()
    client_id, secret = SERVICE_CLIENT
    argv = [
        PYTHON,
        "-m",
        "ingester_gateway",
        "token-service",
        "--port",
        str(port),
        "--private-key",
        str(private_key),
        "--client",
        f"{client_id}:{secret}",
    ]
    return ServerProcess(f"token-service-{port}", argv, port, workdir / f"token-service-{port}.log")


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


def redis_server(workdir: Path, port: int | None = None) -> ServerProcess:
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
    return ServerProcess(
        f"redis-{port}", argv, port, workdir / f"redis-{port}.log", ready_path=None
    )


NGINX_CONF = """\
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
}}
"""


def nginx(workdir: Path, upstream: str, port: int | None = None) -> ServerProcess:
    """nginx proxying everything to `upstream` (host:port) without buffering bodies."""
    port = port or free_port()
    conf_dir = workdir / f"nginx-{port}"
    conf_dir.mkdir(parents=True, exist_ok=True)
    conf = conf_dir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workdir=conf_dir, upstream=upstream, port=port))
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


@dataclass
class ProxiedRequest:
    method: str
    path: str
    status: int = 0  # 0 until the SE has answered
    body_bytes: int = 0
    reply: bytes = b""  # what the SE answered, before any rewrite


ReplyRewrite = Callable[[str, str, int, bytes], tuple[int, bytes]]


class StorageElementProxy:
    """A reverse proxy on loopback in front of a real SE, run by aiohttp in a thread of
    the test process: it records every request it forwards (method, path, status, body
    bytes) and may rewrite the SE's replies, which makes a misbehaving SE out of a real one.

    `rewrite(method, path, status, body) -> (status, body)` may be swapped between tests.
    `refuse(method, path) -> status | None` answers `status` without forwarding (the SE
    never sees the request: a delete refused here leaves the file on the SE), and
    `delay(method, path) -> seconds` holds a request that long before forwarding it.
    `stall_upload(after_bytes, seconds)` makes the SE stop reading an upload body for a
    while, as a stuck disk or a hung SE would; `stalled` is set once it has stopped.
    """

    def __init__(self, upstream: str, name: str = "se-proxy", port: int | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.name = name
        self.port = port or free_port()
        self.rewrite: ReplyRewrite | None = None
        self.refuse: Callable[[str, str], int | None] | None = None
        self.delay: Callable[[str, str], float] | None = None
        self.requests: list[ProxiedRequest] = []
        self.stalled = threading.Event()
        self._stall: tuple[int, float] | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def uploads(self) -> list[ProxiedRequest]:
        """The upload requests that reached the SE through this proxy."""
        with self._lock:
            return [r for r in self.requests if r.path == "/api/v1/files/upload"]

    def stall_upload(self, after_bytes: int, seconds: float) -> None:
        """The next upload stops being read after `after_bytes` for `seconds`."""
        self.stalled.clear()
        self._stall = (after_bytes, seconds)

    def deletes(self) -> list[ProxiedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == "DELETE"]

    def start(self) -> StorageElementProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> StorageElementProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        record = ProxiedRequest(request.method, request.path)
        with self._lock:
            self.requests.append(record)  # on arrival: a request that later fails still counts
        refused = self.refuse(request.method, request.path) if self.refuse else None
        if refused is not None:
            record.status = refused
            return web.json_response({"detail": "refused by the test proxy"}, status=refused)
        if self.delay is not None:
            await asyncio.sleep(self.delay(request.method, request.path))

        async def body() -> AsyncIterator[bytes]:
            async for chunk in request.content.iter_any():
                record.body_bytes += len(chunk)
                yield chunk
                if self._stall is not None and record.body_bytes >= self._stall[0]:
                    seconds, self._stall = self._stall[1], None
                    self.stalled.set()
                    await asyncio.sleep(seconds)  # read nothing: TCP backpressure

        skip = {"host", "content-length", "transfer-encoding", "connection"}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        has_body = request.body_exists
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body() if has_body else None,
            chunked=True if has_body else None,
            timeout=aiohttp.ClientTimeout(total=120),
        ) as upstream:
            record.reply = payload = await upstream.read()
            record.status = status = upstream.status
            content_type = upstream.headers.get("Content-Type", "application/json")
        if self.rewrite is not None:
            status, payload = self.rewrite(request.method, request.path, status, payload)
        return web.Response(status=status, body=payload, headers={"Content-Type": content_type})

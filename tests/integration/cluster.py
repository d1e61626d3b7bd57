"""A small artStore on loopback for the distributed tests: one redis-server, reference
SEs that register and heartbeat themselves in it, the token service (gc deletes on rw
SEs need a service account), and gateways reading the Redis node registry.

Shared by the failover, Redis registry and events/backlog tests. Heartbeats, TTLs and
refreshes are short so that every scenario settles in a second or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from ingester_gateway.reference.processes import (
    ServerProcess,
    free_port,
    gateway,
    redis_server,
    service_account_env,
    storage_element,
    token_service,
)
from tests.conftest import Answer, DevKeys, Stack, http_call
from tests.integration.test_registry_write import redis_url

MiB = 2**20
HEARTBEAT_INTERVAL = 0.3
HEARTBEAT_TTL = 2.0
REFRESH_SECONDS = 0.5  # INGESTER_REGISTRY_REFRESH_SECONDS of the gateways


def registered_se(
    workdir: Path,
    keys: DevKeys,
    redis_at: ServerProcess,
    element_id: str,
    *,
    capacity: str = "10GiB",
    priority: int = 100,
    public_url: str | None = None,
    port: int | None = None,
) -> ServerProcess:
    """A reference SE that announces itself (at `public_url`, its own URL by default)
    every HEARTBEAT_INTERVAL s with a HEARTBEAT_TTL s TTL; data in workdir/<id>-data."""
    port = port or free_port()
    flags = {
        "--redis-url": redis_url(redis_at),
        "--public-url": public_url or f"http://127.0.0.1:{port}",
        "--heartbeat-interval": str(HEARTBEAT_INTERVAL),
        "--heartbeat-ttl": str(HEARTBEAT_TTL),
        "--priority": str(priority),
    }
    return storage_element(
        workdir,
        keys.public_path,
        element_id=element_id,
        capacity=capacity,
        port=port,
        extra=[part for flag in flags.items() for part in flag],
    )


def redis_gateway(
    workdir: Path,
    keys: DevKeys,
    redis_at: ServerProcess,
    tokens: ServerProcess,
    *,
    name: str = "gateway",
    registry: str = "redis",
    env: Mapping[str, str] | None = None,
) -> ServerProcess:
    """A gateway whose nodes come from Redis (`registry` redis or artstore), with the
    service account of `tokens`."""
    settings = {
        "INGESTER_REGISTRY": registry,
        "INGESTER_REDIS_URL": redis_url(redis_at),
        "INGESTER_REGISTRY_REFRESH_SECONDS": str(REFRESH_SECONDS),
        **service_account_env(tokens),
        **(env or {}),
    }
    return gateway(workdir, keys.public_path, [], env=settings, name=name)


@dataclass
class Cluster:
    """Redis, the token service, SEs by id and the gateways, all on loopback. Started by
    the caller in that order; `stop()` stops whatever runs, newest first."""

    workdir: Path
    keys: DevKeys
    redis: ServerProcess
    tokens: ServerProcess
    ses: dict[str, ServerProcess] = field(default_factory=dict)
    gateways: list[ServerProcess] = field(default_factory=list)

    @classmethod
    @contextlib.contextmanager
    def running(cls, workdir: Path, keys: DevKeys) -> Iterator[Cluster]:
        cluster = cls(
            workdir, keys, redis_server(workdir), token_service(workdir, keys.private_path)
        )
        try:
            cluster.redis.start()
            cluster.tokens.start()
            yield cluster
        finally:
            cluster.stop()

    @property
    def gw(self) -> ServerProcess:
        return self.gateways[0]

    def add_se(self, se: ServerProcess) -> ServerProcess:
        self.ses[se.name] = se
        return se.start()

    def add_gateway(self, gw: ServerProcess) -> ServerProcess:
        self.gateways.append(gw)
        return gw.start()

    def restart_redis(self) -> None:
        """A new, empty redis-server on the same port (what a crash and restart of a
        Redis without persistence looks like)."""
        self.redis.stop()
        self.redis = redis_server(self.workdir, port=self.redis.port).start()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.redis.port, decode_responses=True, socket_timeout=5)

    def files(self, se_id: str) -> Stack:
        """The files of SE `se_id` (stored ids, partials, downloads)."""
        se = self.ses[se_id]
        return Stack(se, self.gw, self.keys, self.workdir / f"{se_id}-data")

    def partial_bytes(self, se_id: str) -> int:
        tmp = self.workdir / f"{se_id}-data" / "tmp"
        total = 0
        for path in tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def stop(self) -> None:
        for server in [*reversed(self.gateways), *reversed(self.ses.values())]:
            server.stop()
        self.tokens.stop()
        self.redis.stop()


# -- talking to a gateway -------------------------------------------------------------------


def put(
    gw: ServerProcess,
    auth: Mapping[str, str],
    data: bytes | Iterable[bytes],
    name: str = "data.bin",
    query: str = "compress=false",
    headers: Mapping[str, str] | None = None,
) -> Answer:
    path = f"/api/v1/files/{name}" + (f"?{query}" if query else "")
    return http_call(gw.url, "PUT", path, data, {**auth, **(headers or {})})


def ready(gw: ServerProcess) -> dict[str, Any]:
    """`/health/ready` as JSON, ready or not."""
    answer = http_call(gw.url, "GET", "/health/ready", timeout=5)
    assert answer.status in (200, 503), answer.body[:300]
    return dict(answer.json())


def node_view(gw: ServerProcess) -> dict[str, dict[str, Any]]:
    """The nodes the gateway sees now, by id (from `/health/ready` details)."""
    return dict(ready(gw)["nodes"])


def metric(gw: ServerProcess, name: str, **labels: str) -> float | None:
    """One sample of the gateway's `/metrics`; None when it is not there."""
    text = http_call(gw.url, "GET", "/metrics", timeout=5).body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def log_events(server: ServerProcess, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of `server` whose event is `event`."""
    found = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
    return found


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _answered(sock: socket.socket | None) -> bool:
    return sock is not None and bool(select.select([sock], [], [], 0)[0])


def paced_put(
    gw: ServerProcess,
    path: str,
    headers: Mapping[str, str],
    data: bytes,
    *,
    chunk: int,
    pause: float,
    between: Callable[[int], None] = lambda sent: None,
) -> Answer:
    """PUT `data` with a Content-Length, `chunk` bytes per write with `pause` s between
    writes, calling `between(bytes_sent)` after each: a slow client whose upload the
    test can act on mid-body. It stops sending as soon as the gateway answers."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.putrequest("PUT", path)
        for name, value in {**headers, "Content-Length": str(len(data))}.items():
            conn.putheader(name, value)
        conn.endheaders()
        sent = 0
        with contextlib.suppress(OSError):  # the gateway answered and closed
            while sent < len(data) and not _answered(conn.sock):
                conn.send(data[sent : sent + chunk])
                sent = min(len(data), sent + chunk)
                between(sent)
                time.sleep(pause)
        resp = conn.getresponse()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


class AnswerLosingLink:
    """A TCP relay to a Redis on loopback that can lose answers: once a connection sends
    a command holding `lose_answers_to` (bytes), Redis runs it, but nothing Redis says on
    that connection comes back (a network failing between a command and its reply). The
    client times out and reconnects; other connections are untouched."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.lose_answers_to: bytes | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def __enter__(self) -> AnswerLosingLink:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        relays = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in relays:
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        try:
            redis_in, redis_out = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_out.close()
            return
        lost = False

        async def commands() -> None:
            nonlocal lost
            with contextlib.suppress(OSError):
                while data := await client_in.read(65536):
                    if self.lose_answers_to is not None and self.lose_answers_to in data:
                        lost = True
                    redis_out.write(data)
                    await redis_out.drain()
            redis_out.close()

        async def answers() -> None:
            with contextlib.suppress(OSError):
                while data := await redis_in.read(65536):
                    if not lost:
                        client_out.write(data)
                        await client_out.drain()
            client_out.close()

        await asyncio.gather(commands(), answers())

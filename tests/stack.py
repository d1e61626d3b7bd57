"""Everything the tests start: an SE + gateway `Stack`, a Redis `Cluster` of self-
registering SEs and gateways, the operator's `nodes` command, a slow client, a Redis
link that loses answers; and the checks that read what an SE holds.

The process primitives (`ServerProcess`, `storage_element`, `gateway`, `admin_module`,
`redis_server`, `nginx`, `running`, `free_port`) live in
`ingester_gateway.reference.processes`, shared with `make run` and the benchmarks.
Heartbeats, TTLs and refreshes here are short so that every scenario settles in a
second or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import select
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from ingester_gateway.reference.processes import (
    PYTHON,
    SERVICE_CLIENT,
    ServerProcess,
    admin_module,
    free_port,
    gateway,
    redis_sentinel,
    redis_server,
    running,
    se_entry,
    service_account_env,
    storage_element,
)
from tests.kit import (
    Answer,
    DevKeys,
    assert_result_matches,
    decompressor,
    eventually,
    http_call,
    multipart_form,
    post_form,
    put,
)

HEARTBEAT_INTERVAL = 0.3  # --heartbeat-interval of self-registering SEs
HEARTBEAT_TTL = 2.0  # --heartbeat-ttl of self-registering SEs
REFRESH_SECONDS = 0.5  # INGESTER_REGISTRY_REFRESH_SECONDS of the gateways


# -- reading a Storage Element --------------------------------------------------------------


def se_get(se: ServerProcess, keys: DevKeys, path: str, timeout: float = 30.0) -> bytes:
    """A GET to the SE as alice; the body (an HTTP error raises)."""
    request = urllib.request.Request(f"{se.url}{path}", headers=keys.auth())
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return bytes(resp.read())


@dataclass
class Stack:
    """An SE and a gateway in front of it; the SE's files on disk in `data_dir`."""

    se: ServerProcess
    gw: ServerProcess
    keys: DevKeys
    data_dir: Path

    def stored_ids(self) -> list[str]:
        files = self.data_dir / "files"
        return sorted(p.name[: -len(".attr.json")] for p in files.glob("*.attr.json"))

    def partials(self) -> list[str]:
        return sorted(p.name for p in (self.data_dir / "tmp").iterdir())

    def partial_bytes(self) -> int:
        total = 0
        for path in (self.data_dir / "tmp").iterdir():
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def settled_partials(self, timeout: float = 5.0) -> list[str]:
        """The SE's partial files once it has had up to `timeout` s to drop them (it
        removes a partial asynchronously, after the gateway aborted the request)."""
        deadline = time.monotonic() + timeout
        while (left := self.partials()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left

    def download(self, file_id: str) -> bytes:
        return se_get(self.se, self.keys, f"/api/v1/files/{file_id}/download")

    def put(
        self,
        data: bytes | Iterable[bytes],
        name: str = "data.bin",
        query: str = "",
        headers: Mapping[str, str] | None = None,
        auth: Mapping[str, str] | None = None,
    ) -> Answer:
        """A raw upload to the gateway, as alice unless `auth` says otherwise."""
        return put(self.gw, self.keys.auth() if auth is None else auth, data, name, query, headers)

    def post_form(
        self,
        body: bytes | Iterable[bytes],
        content_type: str,
        headers: Mapping[str, str] | None = None,
        auth: Mapping[str, str] | None = None,
    ) -> Answer:
        """A multipart upload to the gateway, as alice unless `auth` says otherwise."""
        return post_form(
            self.gw, self.keys.auth() if auth is None else auth, body, content_type, headers
        )


def assert_stored(stack: Stack, result: Mapping[str, Any], original: bytes) -> bytes:
    """The SE holds `stored_checksum`/`stored_size` bytes that decode to `original`;
    returns the stored bytes."""
    stored = stack.download(result["file_id"])
    assert_result_matches(result, original, stored)
    return stored


def se_metadata(stack: Stack, file_id: str) -> dict[str, Any]:
    """What the SE recorded for a file (`GET /api/v1/files/{id}`)."""
    return dict(json.loads(se_get(stack.se, stack.keys, f"/api/v1/files/{file_id}")))


def stream_stored_digests(stack: Stack, file_id: str, algorithm: str) -> tuple[str, str, int, int]:
    """sha256 of the stored bytes and of their decoding, and both sizes, streamed (a big
    object is never held twice)."""
    request = urllib.request.Request(
        f"{stack.se.url}/api/v1/files/{file_id}/download", headers=stack.keys.auth()
    )
    stored_hash, original_hash = hashlib.sha256(), hashlib.sha256()
    stored_size = original_size = 0
    step = decompressor(algorithm)
    with urllib.request.urlopen(request, timeout=120) as resp:
        while chunk := resp.read(1 << 20):
            stored_hash.update(chunk)
            stored_size += len(chunk)
            out = step(chunk)
            original_hash.update(out)
            original_size += len(out)
    tail = step(b"")
    original_hash.update(tail)
    original_size += len(tail)
    return stored_hash.hexdigest(), original_hash.hexdigest(), stored_size, original_size


def rss_bytes(server: ServerProcess) -> int:
    """The resident memory of a server's process (VmRSS)."""
    for line in Path(f"/proc/{server.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {server.name}")


# -- an SE and a gateway ------------------------------------------------------------------------


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
    the gateway can compensate on an rw SE (gc needs a service-account token). A
    generator for `yield from` in a fixture; `own_stack` is the same as a `with`."""
    data_dir = workdir / "se-1-data"
    se = storage_element(workdir, keys.public_path, mode=mode, capacity=capacity, data_dir=data_dir)
    tokens = admin_module(workdir, keys.private_path)
    services = (se, tokens) if service_account else (se,)
    with running(*services):
        gw_env = {**(service_account_env(tokens) if service_account else {}), **(env or {})}
        gw = gateway(workdir, keys.public_path, [se_entry(se, mode)], env=gw_env)
        with running(gw):
            yield Stack(se, gw, keys, data_dir)


own_stack = contextlib.contextmanager(start_stack)


# -- Redis, self-registering SEs, gateways reading the registry ------------------------------


def redis_url(server: ServerProcess | str) -> str:
    """The URL of a redis-server; a URL (a Sentinel one, say) as it is."""
    return server if isinstance(server, str) else f"redis://127.0.0.1:{server.port}"


def registered_se(
    workdir: Path,
    keys: DevKeys,
    redis_at: ServerProcess | str,
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
    redis_at: ServerProcess | str,
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
            workdir, keys, redis_server(workdir), admin_module(workdir, keys.private_path)
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

    def stop(self) -> None:
        for server in [*reversed(self.gateways), *reversed(self.ses.values())]:
            server.stop()
        self.tokens.stop()
        self.redis.stop()


# -- Redis with Sentinel ------------------------------------------------------------------

SENTINEL_MASTER = "ingester"


@dataclass
class SentinelSet:
    """One master, one replica and three Sentinels (Debian's redis-sentinel) on loopback,
    quick to fail over: a master silent for 1 s is down. `url` is what clients are given."""

    master: ServerProcess
    replica: ServerProcess
    sentinels: list[ServerProcess]

    @classmethod
    @contextlib.contextmanager
    def running(cls, workdir: Path) -> Iterator[SentinelSet]:
        master = redis_server(workdir)
        replica = redis_server(workdir, replica_of=master.port)
        sentinels = [
            redis_sentinel(workdir, master.port, master_name=SENTINEL_MASTER) for _ in range(3)
        ]
        with running(master, replica, *sentinels):
            watched = cls(master, replica, sentinels)
            watched.wait_settled()
            yield watched

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SENTINEL_MASTER}/0"

    def _sentinel(self, sentinel: ServerProcess) -> redis.Redis:
        return redis.Redis(port=sentinel.port, socket_timeout=5, decode_responses=True)

    def master_port(self) -> int:
        """Where the Sentinels (all of them) say the master is now."""
        answers = set()
        for sentinel in self.sentinels:
            with self._sentinel(sentinel) as db:
                answers.add(int(db.sentinel_get_master_addr_by_name(SENTINEL_MASTER)[1]))
        assert len(answers) == 1, f"the Sentinels disagree: {answers}"
        return answers.pop()

    def wait_settled(self, timeout: float = 30.0) -> None:
        """Every Sentinel knows the two others and a replica in sync: a failover can be
        agreed on (quorum 2) and has somewhere to go."""

        def settled() -> bool:
            for sentinel in self.sentinels:
                with self._sentinel(sentinel) as db:
                    state = db.sentinel_master(SENTINEL_MASTER)
                    replicas = db.sentinel_slaves(SENTINEL_MASTER)
                synced = [
                    r for r in replicas if r["master-link-status"] == "ok" and not r["is_sdown"]
                ]
                if state["num-other-sentinels"] != 2 or not synced:
                    return False
            return True

        eventually(settled, timeout, "Sentinels that know each other and a synced replica")

    def wait_failover(self, old_port: int, timeout: float = 40.0) -> int:
        """The port of the new master once the Sentinels agree on it and it says so."""

        def promoted() -> int | None:
            try:
                port = self.master_port()
            except (AssertionError, redis.RedisError):
                return None  # mid-failover the Sentinels may disagree for a moment
            if port == old_port:
                return None
            with redis.Redis(port=port, socket_timeout=5, decode_responses=True) as db:
                return port if db.info("replication")["role"] == "master" else None

        return eventually(promoted, timeout, "a replica promoted by the Sentinels")


def nodes(url: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """`ingester-gateway nodes [--redis-url url] args...`, the operator's command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTER_")}
    prefix = ["--redis-url", url] if url else []
    return subprocess.run(
        [PYTHON, "-m", "ingester_gateway", "nodes", *prefix, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def ready(gw: ServerProcess) -> dict[str, Any]:
    """`/health/ready` as JSON, ready or not."""
    answer = http_call(gw.url, "GET", "/health/ready", timeout=5)
    assert answer.status in (200, 503), answer.body[:300]
    return dict(answer.json())


def node_view(gw: ServerProcess) -> dict[str, dict[str, Any]]:
    """The nodes the gateway sees now, by id (from `/health/ready` details)."""
    return dict(ready(gw)["nodes"])


def upload_to_se(se: ServerProcess, keys: DevKeys, data: bytes) -> Answer:
    """An upload straight to an SE (no gateway), as alice."""
    body, content_type = multipart_form({}, data)
    return post_form(se, keys.auth(), body, content_type)


# -- clients and links that misbehave -------------------------------------------------------


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


class HeldUpload:
    """A raw PUT whose body is sent only in part until `finish()`: an upload in flight
    for as long as the test wants (its slot held, its bytes partly in)."""

    def __init__(
        self, gw: ServerProcess, auth: Mapping[str, str], data: bytes, upload_id: str
    ) -> None:
        self.gw, self.auth, self.data, self.upload_id = gw, auth, data, upload_id
        self.conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
        self.sent = 0

    def begin(self, first: int) -> HeldUpload:
        """Send the headers and the first `first` bytes; return once the gateway shows the
        upload in progress (so it has been admitted)."""
        self.conn.putrequest("PUT", f"/api/v1/files/held-{self.upload_id}.bin?compress=false")
        headers = {
            **self.auth,
            "Content-Length": str(len(self.data)),
            "X-Upload-Id": self.upload_id,
        }
        for name, value in headers.items():
            self.conn.putheader(name, value)
        self.conn.endheaders()
        self.conn.send(self.data[:first])
        self.sent = first

        def in_progress() -> bool:
            path = f"/api/v1/uploads/{self.upload_id}"
            return http_call(self.gw, "GET", path, headers=self.auth, timeout=5).status == 200

        eventually(in_progress, timeout=15, what=f"upload {self.upload_id} in progress")
        return self

    def finish(self) -> Answer:
        """Send the rest of the body; the gateway's answer."""
        self.conn.send(self.data[self.sent :])
        self.sent = len(self.data)
        resp = self.conn.getresponse()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())

    def close(self) -> None:
        self.conn.close()


@contextlib.contextmanager
def held_upload(
    gw: ServerProcess, auth: Mapping[str, str], upload_id: str, size: int = 256 * 1024
) -> Iterator[HeldUpload]:
    """An upload in flight on `gw` (half its `size` bytes sent) until the block ends or
    the test calls `finish()`; its connection is always closed."""
    upload = HeldUpload(gw, auth, os.urandom(size), upload_id)
    try:
        yield upload.begin(size // 2)
    finally:
        upload.close()


class LoopbackRelay:
    """A TCP relay on loopback, run on a thread of its own; `_relay` moves the bytes."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def __enter__(self) -> Any:
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
        raise NotImplementedError


class AnswerLosingLink(LoopbackRelay):
    """A TCP relay to a Redis on loopback that can lose answers: once a connection sends
    a command holding `lose_answers_to` (bytes), Redis runs it, but nothing Redis says on
    that connection comes back (a network failing between a command and its reply). The
    client times out and reconnects; other connections are untouched."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.lose_answers_to: bytes | None = None

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


class DemotedMasterLink(LoopbackRelay):
    """What a client sees when its master was demoted without its connections being
    dropped (a healed partition): connections go to `upstream_port`, a replica, until it
    answers `-READONLY`; from then on new connections go to `master_port`. `connections`
    counts the connections made through it."""

    def __init__(self, upstream_port: int, master_port: int) -> None:
        super().__init__(upstream_port)
        self.master_port = master_port
        self.connections = 0

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        redis_in, redis_out = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def commands() -> None:
            with contextlib.suppress(OSError):
                while data := await client_in.read(65536):
                    redis_out.write(data)
                    await redis_out.drain()
            redis_out.close()

        async def answers() -> None:
            with contextlib.suppress(OSError):
                while data := await redis_in.read(65536):
                    if b"-READONLY" in data:
                        self.upstream_port = self.master_port  # the promotion, as seen
                    client_out.write(data)
                    await client_out.drain()
            client_out.close()

        await asyncio.gather(commands(), answers())


# -- a small artStore: Redis, the reference Admin Module, an rw SE and an edit SE ---------


@dataclass
class Artstore:
    workdir: Path
    keys: DevKeys
    redis: ServerProcess
    admin: ServerProcess
    se: ServerProcess
    edit_se: ServerProcess

    def gateway_env(self) -> dict[str, str]:
        client_id, secret = SERVICE_CLIENT
        return {
            "INGESTER_ADMIN_URL": self.admin.url,
            "INGESTER_SERVICE_CLIENT_ID": client_id,
            "INGESTER_SERVICE_CLIENT_SECRET": secret,
            "INGESTER_REDIS_URL": redis_url(self.redis),
        }

    def gateway(self, name: str, extra: dict[str, str] | None = None) -> ServerProcess:
        entries = [se_entry(self.se, "rw"), se_entry(self.edit_se, "edit")]
        env = {**self.gateway_env(), **(extra or {})}
        return gateway(self.workdir, self.keys.public_path, entries, env=env, name=name)

    def service_token(self) -> str:
        client_id, secret = SERVICE_CLIENT
        body = json.dumps(
            {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
        ).encode()
        answer = http_call(self.admin, "POST", "/api/v1/auth/token", body)
        assert answer.status == 200, answer.body
        return str(answer.json()["access_token"])

    def record(self, file_id: str) -> dict[str, Any] | None:
        auth = {"Authorization": f"Bearer {self.service_token()}"}
        answer = http_call(self.admin, "GET", f"/api/v1/files/{file_id}", headers=auth)
        if answer.status == 404:
            return None
        assert answer.status == 200, answer.body
        return dict(answer.json())

    def events(self, file_id: str) -> list[dict[str, str]]:
        with redis.Redis(port=self.redis.port) as db:
            entries = [
                {k.decode(): v.decode() for k, v in fields.items()}
                for _, fields in db.xrange("file-events")
            ]
        return [e for e in entries if e["file_id"] == file_id]

    def se_of(self, node_id: str) -> ServerProcess:
        return self.se if node_id == self.se.name else self.edit_se


@contextlib.contextmanager
def start_artstore(workdir: Path, keys: DevKeys) -> Iterator[Artstore]:
    """Redis, the reference Admin Module announcing on it, SEs se-rw and se-edit."""
    redis_at = redis_server(workdir)
    with running(redis_at):
        admin = admin_module(workdir, keys.private_path, redis_url=redis_url(redis_at))
        se = storage_element(workdir, keys.public_path, element_id="se-rw")
        edit_se = storage_element(workdir, keys.public_path, element_id="se-edit", mode="edit")
        with running(admin, se, edit_se):
            yield Artstore(workdir, keys, redis_at, admin, se, edit_se)

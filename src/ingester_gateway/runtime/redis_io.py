"""Every Redis client of the project is built here: the gateway's, the reference SE's
heartbeat, the reference Admin Module's, the `nodes` command's. Each command is bounded
by a short timeout, so Redis being slow or away never holds an upload for long.

`INGESTER_REDIS_URL` (and every `--redis-url`) is one of

    redis://[[user]:password@]host:port[/db]       rediss://... (TLS)    unix:///path
    redis+sentinel://[[user]:password@]host:port[,host:port...]/master-name[/db]
    rediss+sentinel://...                           (TLS to the Sentinels and the master)

The Sentinel spelling is the `limits` library's; as there, the URL's credentials are
sent to the Sentinels and to the master alike. Through Sentinel the client asks for the
master's address whenever it connects, so after a failover it follows the new master.

What is retried here, and only this: a command Redis certainly did not run. Connecting
is tried again (jittered backoff, within one connect timeout) when it fails fast (refused,
no master known yet during a failover); a write the server refused because it is a
replica now (READONLY: the old master, demoted) is sent again, at most twice, over a
fresh connection to the master. A command whose answer was lost (a reset or a timeout
after it was sent) is never repeated by the client: it may have run, and only its
caller knows whether running it twice is safe (the outbox's jobs and the events' once-
markers make it so; see outbox/).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

# What a Redis command raises when Redis is away or too slow.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError)

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CONNECT_ATTEMPTS = 3
RESEND_ATTEMPTS = 2  # a write a demoted master refused, sent again to the new one
_BACKOFF = ExponentialWithJitterBackoff(cap=0.25, base=0.05)  # 0-0.1 s, 0-0.2 s, ...


class CommandNotRun(RedisConnectionError):
    """The server refused the command as a replica: nothing ran; safe to send again."""


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """A parsed `redis+sentinel://` URL."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0] in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelUrl:
    """`redis+sentinel://[[user]:password@]host:port[,host:port...]/master[/db]` (pure);
    ValueError naming what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a Sentinel URL (expected {' or '.join(SENTINEL_SCHEMES)}://)")
    if "?" in rest or "#" in rest:
        raise ValueError("a Sentinel URL takes no query or fragment")
    netloc, _, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon and secret else None
    sentinels = tuple(_host_port(part) for part in hosts.split(","))
    segments = path.split("/")
    if len(segments) > 2 and any(segments[2:]):
        raise ValueError(f"expected /master-name[/db] after the Sentinels, got /{path}")
    master = urllib.parse.unquote(segments[0])
    if not master:
        raise ValueError("no master name: expected /master-name[/db] after the Sentinels")
    db_text = segments[1] if len(segments) > 1 else ""
    if db_text and not db_text.isdigit():
        raise ValueError(f"the database must be a number, not {db_text!r}")
    return SentinelUrl(
        sentinels=sentinels,
        master=master,
        db=int(db_text or 0),
        username=username,
        password=password,
        tls=scheme.startswith("rediss"),
    )


def _host_port(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:26379
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port for each Sentinel, got {text!r}")
    return host, int(port)


def redact_url(url: str) -> str:
    """`url` with its password replaced by ***, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.partition(':')[0]}:***@{hosts}{slash}{path}"


def redis_client(url: str, timeout: float) -> aioredis.Redis:
    """A client whose every command gives up after `timeout` seconds; through Sentinel
    for a `redis+sentinel://` URL. Building it never connects."""
    if is_sentinel_url(url):
        return _sentinel_client(parse_sentinel_url(url), timeout)
    pool = ConnectionPool.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=0,
        retry=_resend_policy(),
    )
    pool.connection_class = _RECONNECTING[pool.connection_class]
    return aioredis.Redis.from_pool(pool)


def _resend_policy() -> Retry:
    return Retry(_BACKOFF, RESEND_ATTEMPTS, supported_errors=(CommandNotRun,))


def _sentinel_client(address: SentinelUrl, timeout: float) -> aioredis.Redis:
    credentials = {"username": address.username, "password": address.password}
    timeouts = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        list(address.sentinels),
        # Asking a Sentinel is never retried by redis-py: the next one is asked instead.
        sentinel_kwargs={
            **credentials,
            **timeouts,
            "ssl": address.tls,
            "retry": Retry(NoBackoff(), 0),
        },
        db=address.db,
        health_check_interval=0,
        retry=_resend_policy(),
        connection_class=_SentinelTlsConnection if address.tls else _SentinelConnection,
        **credentials,
        **timeouts,
    )
    return cast(
        aioredis.Redis, sentinel.master_for(address.master, redis_class=_SentinelMasterClient)
    )


class _SentinelMasterClient(aioredis.Redis):
    """The master's client also closes the connections to the Sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = cast(SentinelConnectionPool, self.connection_pool)
        await pool.sentinel_manager.aclose()


class _Reconnecting(AbstractConnection):
    """Connects with bounded retries and turns a replica's READONLY into CommandNotRun
    (after dropping the connection), which the client's retry policy sends again."""

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.socket_connect_timeout or 1.0)
        failures = 0
        while True:
            try:
                await super().connect()  # type: ignore[no-untyped-call]
                return
            except (RedisConnectionError, RedisTimeoutError):
                failures += 1
                delay = _BACKOFF.compute(failures)
                if failures >= CONNECT_ATTEMPTS or loop.time() + delay >= deadline:
                    raise
                await self.disconnect()
                await asyncio.sleep(delay)

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            # Through connect(): under Sentinel it asks where the master is now, where a
            # bare reconnect would go back to the address it had.
            await self.connect()
        await super().send_packed_command(command, check_health)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ReadOnlyError as exc:
            await self.disconnect()
            raise CommandNotRun(f"{exc} (a replica answered; reconnecting)") from exc
        except RedisConnectionError as exc:
            # Sentinel's connection has already dropped itself and says "now a slave".
            if isinstance(exc.__context__, ReadOnlyError) and not isinstance(exc, CommandNotRun):
                raise CommandNotRun(str(exc)) from exc
            raise


class _TcpConnection(_Reconnecting, Connection):
    pass


class _TlsConnection(_Reconnecting, SSLConnection):
    pass


class _UnixConnection(_Reconnecting, UnixDomainSocketConnection):
    pass


class _SentinelConnection(_Reconnecting, SentinelManagedConnection):
    pass


class _SentinelTlsConnection(_Reconnecting, SentinelManagedSSLConnection):
    pass


_RECONNECTING: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _TcpConnection,
    SSLConnection: _TlsConnection,
    UnixDomainSocketConnection: _UnixConnection,
}

"""Redis commands on one connection of their own, pipelined: each is sent without
waiting for the replies before it (the commands of one event-loop iteration in one
write), and one reader matches the replies in order.

Why not the client's own `execute_command`: on this machine one call through it costs
~100 µs of CPU (connection pool, locks, retry machinery, a timeout per call); a command
here costs ~15-25 µs, and fair use makes two per upload (see README, "Fair use"). The
connection is made by redis-py (`make_connection()` of the client's pool), so the URL,
AUTH, TLS and a Sentinel-managed pool work as they do for every other command; only its
stream is read and written here. Error replies raise `ResponseError`; a reply that takes
longer than `timeout` fails every command waiting on the connection with `TimeoutError`
and drops it (the replies would no longer match), and the next command connects again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

_Pending = tuple[asyncio.Future[Any], float]


def pack_command(args: tuple[str | bytes | int | float, ...]) -> bytes:
    """One command in RESP (twice as fast as redis-py's general packer: no encoder
    options, one join)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class PipelinedRedis:
    def __init__(self, client: aioredis.Redis, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._conn: AbstractConnection | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._pending: collections.deque[_Pending] = collections.deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._unsent: list[bytes] = []

    async def call(self, *args: str | bytes | int | float) -> Any:
        """One command; its reply (hiredis' types: bytes, int, list)."""
        writer = self._writer
        if writer is None:
            writer = await self._connect()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((future, loop.time()))
        if not self._unsent:  # the commands of one loop iteration go in one write
            loop.call_soon(self._send)
        self._unsent.append(pack_command(args))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout, self._check_overdue)
        return await future

    def _send(self) -> None:
        unsent, self._unsent = self._unsent, []
        if unsent and self._writer is not None:  # (a dropped connection's were dropped)
            self._writer.write(b"".join(unsent))

    async def close(self) -> None:
        task = self._reader_task
        self._drop(RedisConnectionError("closed"))
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _connect(self) -> asyncio.StreamWriter:
        if self._connecting is not None:  # another call is connecting: wait for it
            await asyncio.shield(self._connecting)
        else:
            self._connecting = asyncio.get_running_loop().create_future()
            try:
                conn = self._client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
                async with asyncio.timeout(self._timeout):
                    await conn.connect()
                reader, writer = conn._reader, conn._writer  # redis-py made and set it up
                assert reader is not None and writer is not None
                # Kept referenced: redis-py closes a connection's stream when it is collected.
                self._conn, self._writer = conn, writer
                self._reader_task = asyncio.create_task(
                    self._read_replies(reader), name="redis-pipeline"
                )
                self._connecting.set_result(None)
            except BaseException as exc:
                # Waiters see a Redis error, never this caller's own cancellation.
                failed = exc if isinstance(exc, Exception) else RedisConnectionError("interrupted")
                self._connecting.set_exception(failed)
                self._connecting.exception()  # retrieved: waiters see it through shield
                raise
            finally:
                self._connecting = None
        if self._writer is None:
            raise RedisConnectionError("Redis connection lost")
        return self._writer

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        parser = hiredis.Reader()
        pending = self._pending
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    if not pending:
                        raise RedisConnectionError("a reply nobody asked for")
                    future, _ = pending.popleft()
                    if future.done():
                        continue
                    if isinstance(reply, hiredis.ReplyError):
                        future.set_exception(ResponseError(str(reply)))
                    else:
                        future.set_result(reply)
            raise RedisConnectionError("Redis closed the connection")
        except (OSError, RedisConnectionError, hiredis.ProtocolError) as exc:
            if self._reader_task is asyncio.current_task():
                lost = exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(exc)
                self._drop(lost)

    def _check_overdue(self) -> None:
        self._watchdog = None
        if not self._pending:
            return
        loop = asyncio.get_running_loop()
        due = self._pending[0][1] + self._timeout
        if due <= loop.time():
            self._drop(TimeoutError(f"no reply from Redis within {self._timeout:g} s"))
        else:
            self._watchdog = loop.call_at(due, self._check_overdue)

    def _drop(self, error: Exception) -> None:
        """Forget the connection; everything waiting on it fails with `error`."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._writer is not None:
            self._writer.close()
        self._writer = self._conn = None
        self._unsent.clear()
        task, self._reader_task = self._reader_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(error)

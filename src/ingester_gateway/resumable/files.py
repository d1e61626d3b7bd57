"""Staging files in a directory (`INGESTER_TUS_DIR/staging/<id>`), and the upload states
kept beside them (`INGESTER_TUS_DIR/state/<id>.json`) when there is no Redis.

Data is written with `pwrite` at its offset by worker threads, hashed there as it is
written, and made durable with `fdatasync` before any offset that covers it is saved.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import msgspec

from ingester_gateway import errors
from ingester_gateway.resumable.state import UploadState
from ingester_gateway.upload.ports import BodySource
from ingester_gateway.upload.progress import valid_upload_id
from ingester_gateway.upload.sources import Available, StagedFiles

_FULL = (errno.ENOSPC, errno.EDQUOT)


def _checked(upload_id: str) -> str:
    if not valid_upload_id(upload_id):  # never a path of the client's making
        raise ValueError(f"not an upload id: {upload_id!r}")
    return upload_id


def _staging_error(exc: OSError) -> Exception:
    """A full disk is a 507; anything else stays what it is."""
    if exc.errno in _FULL:
        return errors.INSUFFICIENT_STORAGE("the staging directory is full")
    return exc


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class FileWriter:
    """One request's data appended to a staging file (the `StagedWriter` Protocol)."""

    def __init__(self, fd: int, start: int, executor: Executor, digests: Sequence[Any]) -> None:
        self._fd = fd
        self._start = start
        self._position = start
        self._executor = executor
        self._digests = list(digests)
        self._written = 0  # updated by the worker thread once a piece is on its way to disk
        self._pending: concurrent.futures.Future[None] | None = None

    @property
    def written(self) -> int:
        return self._written

    def _put(self, piece: bytes, position: int) -> None:
        view = memoryview(piece)
        while view:
            done = os.pwrite(self._fd, view, position)
            view, position = view[done:], position + done
        for digest in self._digests:
            digest.update(piece)
        self._written += len(piece)

    async def _settle(self) -> None:
        """Wait for the piece in flight. It is never cancelled: a request interrupted
        here still knows exactly which bytes reached the file."""
        pending = self._pending
        if pending is None:
            return
        if not pending.done():
            loop = asyncio.get_running_loop()
            done = loop.create_future()

            def wake(_: object) -> None:
                loop.call_soon_threadsafe(_resolve, done)

            pending.add_done_callback(wake)
            await done
        self._pending = None
        try:
            pending.result()
        except OSError as exc:
            raise _staging_error(exc) from None

    async def write(self, piece: bytes) -> None:
        await self._settle()
        self._pending = self._executor.submit(self._put, piece, self._position)
        self._position += len(piece)

    async def sync(self) -> int:
        await self._settle()
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, os.fdatasync, self._fd)
        except OSError as exc:
            raise _staging_error(exc) from None
        return self._written

    async def rollback(self) -> None:
        await self._settle()
        await asyncio.to_thread(os.ftruncate, self._fd, self._start)
        self._written = 0

    async def close(self) -> None:
        with contextlib.suppress(errors.ApiError, OSError):
            await self._settle()
        os.close(self._fd)


class FileStagingArea:
    """The `Staging` Protocol on a local (or shared) directory."""

    def __init__(self, directory: str | Path, executor: Executor) -> None:
        self.dir = Path(directory) / "staging"
        self._executor = executor

    def path(self, upload_id: str) -> Path:
        return self.dir / _checked(upload_id)

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    async def create(self, upload_id: str) -> None:
        path = self.path(upload_id)
        await asyncio.to_thread(lambda: os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)))

    async def writer(self, upload_id: str, offset: int, digests: Sequence[Any]) -> FileWriter:
        path = self.path(upload_id)

        def prepare() -> int:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size < offset:
                    raise errors.UPLOAD_EXPIRED("the upload's staged bytes are gone")
                if size > offset:  # a cut request's or a dead process's bytes, never saved
                    os.ftruncate(fd, offset)
            except BaseException:
                os.close(fd)
                raise
            return fd

        try:
            fd = await asyncio.to_thread(prepare)
        except OSError as exc:
            raise _staging_error(exc) from None
        return FileWriter(fd, offset, self._executor, digests)

    def source(
        self, parts: Sequence[tuple[str, int]], available: Available | None = None
    ) -> BodySource:
        files = [(self.path(upload_id), size) for upload_id, size in parts]
        return StagedFiles(files, self._executor, available)

    async def remove(self, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self.path(upload_id).unlink)

    async def orphans(self, older_than: float) -> list[str]:
        def scan() -> list[str]:
            found = []
            for path in self.dir.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if valid_upload_id(path.name) and path.stat().st_mtime < older_than:
                        found.append(path.name)
            return found

        return await asyncio.to_thread(scan)


_decoder = msgspec.json.Decoder(UploadState)
_encoder = msgspec.json.Encoder()


class FileStateStore:
    """The `StateStore` Protocol in a directory, for a gateway without Redis (one
    process: its writes are serialised by one asyncio lock)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory) / "state"
        self._lock = asyncio.Lock()

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, upload_id: str) -> Path:
        return self.dir / f"{_checked(upload_id)}.json"

    def _read(self, upload_id: str) -> UploadState | None:
        try:
            return _decoder.decode(self._path(upload_id).read_bytes())
        except (FileNotFoundError, msgspec.DecodeError):
            return None

    def _write(self, state: UploadState) -> None:
        path = self._path(state.id)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(_encoder.encode(state))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    async def get(self, upload_id: str) -> UploadState | None:
        if not valid_upload_id(upload_id):
            return None
        return await asyncio.to_thread(self._read, upload_id)

    async def put(self, state: UploadState) -> None:
        async with self._lock:
            await asyncio.to_thread(self._write, state)

    async def advance(self, state: UploadState, expected_offset: int) -> bool:
        async with self._lock:
            current = await asyncio.to_thread(self._read, state.id)
            if current is None or current.offset != expected_offset:
                return False
            await asyncio.to_thread(self._write, state)
            return True

    async def delete(self, upload_id: str) -> None:
        async with self._lock:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(self._path(upload_id).unlink)

    async def expiring(self, now: float, limit: int) -> list[str]:
        def scan() -> list[str]:
            found = []
            for path in self.dir.glob("*.json"):
                state = self._read(path.stem)
                if state is not None and state.expired(now) and state.final_of is None:
                    found.append(state.id)
                    if len(found) >= limit:
                        break
            return found

        return await asyncio.to_thread(scan)

    async def postpone(self, upload_id: str, until: float) -> None:
        return None  # `expiring` reads every state: it skips the busy ones by itself

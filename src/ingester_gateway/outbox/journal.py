"""A local, durable journal of work that could not reach Redis yet (the jobs of
`jobs.py`). Each process appends (with fsync) to its own file, locked while it lives;
a file whose owner died is adopted by the next process that starts, so nothing
written here is lost across crashes and restarts."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import socket
from pathlib import Path

import msgspec

from ingester_gateway.observability import get_logger
from ingester_gateway.outbox.jobs import Job

_log = get_logger("ingester_gateway.outbox.journal")
COMPACT_AT_BYTES = 1 << 20


class Done(msgspec.Struct, tag="done", frozen=True):
    id: str


class JournalClosed(OSError):
    """Nothing can be written: the journal is not open (an OSError, as a full disk is:
    callers that fall back on the journal handle both alike)."""


Entry = Job | Done
_decoder = msgspec.json.Decoder(Entry)
_encoder = msgspec.json.Encoder()


class Journal:
    def __init__(self, directory: str | Path) -> None:
        self._dir = Path(directory)
        self._pending: dict[str, Job] = {}
        self._fd: int | None = None
        self._path: Path | None = None
        self._lock = asyncio.Lock()

    def open(self) -> None:
        """Create this process's file and adopt the files of dead processes."""
        self._dir.mkdir(parents=True, exist_ok=True)
        name = f"journal-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        self._path = self._dir / name
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        adopted: list[tuple[int, Path]] = []
        for other in sorted(self._dir.glob("journal-*.jsonl")):
            fd = _claim(other) if other != self._path else None
            if fd is None:
                continue
            for entry in _read_entries(other):
                if isinstance(entry, Done):
                    self._pending.pop(entry.id, None)
                else:
                    self._pending[entry.id] = entry
            adopted.append((fd, other))
        if self._pending:
            self._rewrite()  # our own file holds them now, synced
            _log.info("journal_adopted", pending=len(self._pending))
        for fd, path in adopted:  # only then do the dead processes' files go
            path.unlink(missing_ok=True)
            os.close(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the file stays for the next process
            self._fd = None
            if not self._pending and self._path is not None:
                self._path.unlink(missing_ok=True)

    def pending(self) -> list[Job]:
        return list(self._pending.values())

    async def append(self, entry: Job) -> None:
        """Durably record `entry` (write + fsync in a worker thread)."""
        async with self._lock:
            await asyncio.to_thread(self._write, [entry])
            self._pending[entry.id] = entry

    async def done(self, entry_id: str) -> None:
        async with self._lock:
            if self._pending.pop(entry_id, None) is None:
                return
            await asyncio.to_thread(self._write, [Done(entry_id)])
            if not self._pending and self._size() > COMPACT_AT_BYTES:
                await asyncio.to_thread(self._rewrite)

    def _write(self, entries: list[Entry]) -> None:
        if self._fd is None:  # not yet opened, or closed by a stop racing an upload
            raise JournalClosed("the journal is not open")
        data = b"".join(_encoder.encode(e) + b"\n" for e in entries)
        os.write(self._fd, data)
        os.fsync(self._fd)

    def _size(self) -> int:
        assert self._fd is not None
        return os.fstat(self._fd).st_size

    def _rewrite(self) -> None:
        """Replace this process's file by its pending entries only."""
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        if self._pending:
            self._write(list(self._pending.values()))
        else:
            os.fsync(self._fd)


def _claim(path: Path) -> int | None:
    """A locked descriptor of a journal whose owner is gone; None if it lives."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _read_entries(path: Path) -> list[Entry]:
    entries: list[Entry] = []
    with open(path, "rb") as fh:
        for line in fh:
            with contextlib.suppress(msgspec.DecodeError):  # a torn last line
                entries.append(_decoder.decode(line))
    return entries

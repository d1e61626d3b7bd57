"""The file registry in SQLite: one file (`--db`), WAL, every commit synced, so records
survive a restart or a crash of the process.

All database work runs on one worker thread: the event loop never waits on the disk,
and one connection used by one thread needs no locking of its own. Deletes are soft,
as in artStore: the row stays (so its `file_id` cannot be registered again), reads no
longer see it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import msgspec

from ingester_gateway.reference.admin_module.records import DeletedFile, FilePage, FileRecord

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    file_id TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL,
    deleted_at TEXT,
    deletion_reason TEXT
);
CREATE TABLE IF NOT EXISTS storage_elements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE
);
"""

_encode = msgspec.json.Encoder().encode
_record = msgspec.json.Decoder(FileRecord)


class FileExists(Exception):
    """A record with this `file_id` exists (or existed: deleted rows keep their id)."""


class FileRegistry:
    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="admin-db")
        self._db: sqlite3.Connection | None = None

    @property
    def is_open(self) -> bool:
        return self._db is not None

    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    async def register(self, record: FileRecord) -> None:
        """Insert `record`; FileExists when its `file_id` is taken."""
        await self._run(self._register, record)

    async def get(self, file_id: str) -> FileRecord | None:
        return await self._run(self._get, file_id)

    async def update(
        self, file_id: str, change: Callable[[FileRecord], FileRecord]
    ) -> FileRecord | None:
        """Replace the record with `change(record)` in one transaction (whatever `change`
        raises leaves it as it was); None when there is no such record."""
        return await self._run(self._update, file_id, change)

    async def delete(
        self, file_id: str, reason: str, now: str
    ) -> tuple[FileRecord, DeletedFile, bool] | None:
        """Mark the record deleted: (record, deletion, whether this call deleted it), or
        None when it was never registered. A repeat answers the first deletion."""
        return await self._run(self._delete, file_id, reason, now)

    async def page(self, limit: int, offset: int) -> FilePage:
        return await self._run(self._page, limit, offset)

    async def element_ids(self, names: list[str]) -> dict[str, int]:
        """A stable integer id per storage element name (artStore's database id): the
        same name gets the same id after a restart, whatever the order of the names."""
        return await self._run(self._element_ids, names)

    # -- on the worker thread ------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a 201 means the record is on disk
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        self._db = db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the registry is not open")
        return self._db

    def _register(self, record: FileRecord) -> None:
        try:
            self._connection().execute(
                "INSERT INTO files (file_id, record) VALUES (?, ?)",
                (record.file_id, _encode(record).decode()),
            )
        except sqlite3.IntegrityError:
            raise FileExists(record.file_id) from None

    def _get(self, file_id: str) -> FileRecord | None:
        row = (
            self._connection()
            .execute(
                "SELECT record FROM files WHERE file_id = ? AND deleted_at IS NULL", (file_id,)
            )
            .fetchone()
        )
        return None if row is None else _record.decode(row[0])

    def _update(
        self, file_id: str, change: Callable[[FileRecord], FileRecord]
    ) -> FileRecord | None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT record FROM files WHERE file_id = ? AND deleted_at IS NULL", (file_id,)
            ).fetchone()
            if row is None:
                return None
            record = change(_record.decode(row[0]))
            db.execute(
                "UPDATE files SET record = ? WHERE file_id = ?",
                (_encode(record).decode(), file_id),
            )
            return record

    def _delete(
        self, file_id: str, reason: str, now: str
    ) -> tuple[FileRecord, DeletedFile, bool] | None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT record, deleted_at, deletion_reason FROM files WHERE file_id = ?",
                (file_id,),
            ).fetchone()
            if row is None:
                return None
            record = _record.decode(row[0])
            if row[1] is not None:
                return record, DeletedFile(file_id, row[1], row[2]), False
            db.execute(
                "UPDATE files SET deleted_at = ?, deletion_reason = ? WHERE file_id = ?",
                (now, reason, file_id),
            )
            return record, DeletedFile(file_id, now, reason), True

    def _page(self, limit: int, offset: int) -> FilePage:
        db = self._connection()
        rows = db.execute(
            "SELECT record FROM files WHERE deleted_at IS NULL ORDER BY seq LIMIT ? OFFSET ?",
            (limit, offset),
        ).fetchall()
        (total,) = db.execute("SELECT count(*) FROM files WHERE deleted_at IS NULL").fetchone()
        return FilePage([_record.decode(r[0]) for r in rows], total, limit, offset)

    def _element_ids(self, names: list[str]) -> dict[str, int]:
        with self._transaction() as db:
            ids = dict(db.execute("SELECT name, id FROM storage_elements").fetchall())
            for name in names:
                if name not in ids:
                    cursor = db.execute("INSERT INTO storage_elements (name) VALUES (?)", (name,))
                    ids[name] = cursor.lastrowid
        return {name: ids[name] for name in names}

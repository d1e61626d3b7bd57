"""Files on disk: streamed into `tmp/` with sha256, fsynced, renamed into `files/`,
with `<id>.attr.json` beside each file. Survives restarts: usage is rebuilt from the
attribute files and leftovers in `tmp/` are removed at start."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
from pathlib import Path

import msgspec

_FILE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class FileAttributes(msgspec.Struct):
    file_id: str
    original_filename: str
    content_type: str
    file_size: int
    checksum: str  # sha256 hex of the stored bytes
    created_at: str
    uploaded_by: str
    retention_policy: str | None = None
    description: str | None = None
    version: str | None = None
    fields: dict[str, str] = msgspec.field(default_factory=dict)  # other form fields, kept
    # time.time() when the first byte of the file part arrived (benchmarks: streaming delay)
    first_byte_at: float | None = None
    # The upload request's W3C trace context, when it carried one (tests: tracing)
    traceparent: str | None = None


class StoreFull(Exception):
    pass


class FileExists(Exception):
    pass


def valid_file_id(file_id: str) -> bool:
    return bool(_FILE_ID.match(file_id))


class PartialFile:
    """A file being received: `write()` blocks (thread-safe to call from a worker
    thread, one at a time), then `commit()` or `abort()`."""

    def __init__(self, store: FileStore, file_id: str, path: Path) -> None:
        self.store = store
        self.file_id = file_id
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        self._sha = hashlib.sha256()
        self.size = 0
        self.committed = False
        self._closed = False
        self._discarded = False

    def write(self, block: bytes) -> None:
        self.store.reserve(len(block))
        self.size += len(block)
        self._sha.update(block)
        view = memoryview(block)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    @property
    def checksum(self) -> str:
        return self._sha.hexdigest()

    def commit(self, attrs: FileAttributes) -> None:
        """fsync the data, rename it into place, then write the attributes atomically."""
        os.fsync(self._fd)
        os.close(self._fd)
        self._closed = True
        target = self.store.file_path(self.file_id)
        with self.store.lock:
            if target.exists():
                self._discard()
                raise FileExists(self.file_id)
            os.rename(self.path, target)
            self.committed = True
        self.store.write_attrs(attrs)
        self.store.fsync_dir()
        self.store.committed(self.size)

    def abort(self) -> None:
        if not self._closed:
            os.close(self._fd)
            self._closed = True
        self._discard()

    def _discard(self) -> None:
        if self._discarded:
            return
        self._discarded = True
        self.store.release(self.size)
        self.path.unlink(missing_ok=True)


class FileStore:
    def __init__(self, root: str | Path, capacity_bytes: int) -> None:
        self.root = Path(root)
        self.files = self.root / "files"
        self.tmp = self.root / "tmp"
        self.files.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity_bytes
        self.lock = threading.Lock()
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)  # partials of a previous run can never complete
        for data in self.files.iterdir():
            # A crash between the rename and the attribute write leaves data without
            # attributes: never acknowledged to anyone, so it goes.
            if not data.name.endswith(".attr.json") and not self.attr_path(data.name).exists():
                data.unlink(missing_ok=True)
        self.used = 0
        self.file_count = 0
        for attr_path in self.files.glob("*.attr.json"):
            attrs = self._decode(attr_path)
            if attrs is not None:
                self.used += attrs.file_size
                self.file_count += 1
        self._pending = 0  # bytes of uploads in progress

    @property
    def available(self) -> int:
        return max(0, self.capacity - self.used - self._pending)

    def reserve(self, size: int) -> None:
        with self.lock:
            if self.used + self._pending + size > self.capacity:
                raise StoreFull()
            self._pending += size

    def release(self, size: int) -> None:
        with self.lock:
            self._pending -= size

    def committed(self, size: int) -> None:
        with self.lock:
            self._pending -= size
            self.used += size
            self.file_count += 1

    def file_path(self, file_id: str) -> Path:
        return self.files / file_id

    def attr_path(self, file_id: str) -> Path:
        return self.files / f"{file_id}.attr.json"

    def exists(self, file_id: str) -> bool:
        return self.attr_path(file_id).exists() or self.file_path(file_id).exists()

    def begin(self, file_id: str) -> PartialFile:
        path = self.tmp / f"{file_id}.{secrets.token_hex(6)}.part"
        return PartialFile(self, file_id, path)

    def write_attrs(self, attrs: FileAttributes) -> None:
        target = self.attr_path(attrs.file_id)
        tmp = self.tmp / f"{attrs.file_id}.{secrets.token_hex(6)}.attr"
        data = msgspec.json.encode(attrs)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target)

    def fsync_dir(self) -> None:
        fd = os.open(self.files, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def attrs(self, file_id: str) -> FileAttributes | None:
        if not valid_file_id(file_id):
            return None
        return self._decode(self.attr_path(file_id))

    def delete(self, file_id: str) -> bool:
        """Remove a file and its attributes; False when it did not exist."""
        attrs = self.attrs(file_id)
        if attrs is None:
            return False
        with self.lock:
            self.file_path(file_id).unlink(missing_ok=True)
            self.attr_path(file_id).unlink(missing_ok=True)
            self.used -= attrs.file_size
            self.file_count -= 1
        self.fsync_dir()
        return True

    @staticmethod
    def _decode(path: Path) -> FileAttributes | None:
        try:
            return msgspec.json.decode(path.read_bytes(), type=FileAttributes)
        except (FileNotFoundError, msgspec.DecodeError):
            return None

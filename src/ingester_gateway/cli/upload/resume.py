"""The local record of an upload in flight, so that a stopped `upload` (a cut network,
Ctrl-C, a killed process) goes on where the server is when it is run again.

One small JSON file per upload, `<state dir>/uploads/<key>.json`, where the key is a
digest of the file's identity: its absolute path, size and modification time, and the
gateway's URL. A changed file is another file (it starts anew); two uploads of different
files never write the same record. The server stays the truth about offsets: the record
holds only the upload URLs and what was asked at creation.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec

APP_DIR = "ingester-gateway"
VERSION = 1


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What makes two runs of `upload` the same upload."""

    path: str  # absolute, symbolic links resolved
    size: int
    mtime_ns: int
    gateway: str

    @classmethod
    def of(cls, path: Path, gateway: str) -> FileIdentity:
        resolved = path.resolve()
        stat = resolved.stat()
        return cls(str(resolved), stat.st_size, stat.st_mtime_ns, gateway.rstrip("/"))

    def key(self) -> str:
        text = "\0".join((self.path, str(self.size), str(self.mtime_ns), self.gateway))
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


class PartRecord(msgspec.Struct):
    url: str  # the tus upload (absolute)
    start: int  # its first byte in the file
    length: int


class ResumeEntry(msgspec.Struct, kw_only=True):
    version: int = VERSION
    path: str
    size: int
    mtime_ns: int
    gateway: str
    upload_metadata: str  # the Upload-Metadata sent at creation
    sha256: str  # of the whole file (hex), sent as Repr-Digest and checked at the end
    parts: list[PartRecord]  # one: a plain upload; more: tus concatenation
    final: str | None = None  # the final upload, once created
    created_at: float = msgspec.field(default_factory=time.time)

    def matches(self, identity: FileIdentity) -> bool:
        return (self.path, self.size, self.mtime_ns, self.gateway) == (
            identity.path,
            identity.size,
            identity.mtime_ns,
            identity.gateway,
        )


_decoder = msgspec.json.Decoder(ResumeEntry)


def default_state_dir(env: Mapping[str, str], home: Path) -> Path:
    """`$XDG_STATE_HOME/ingester-gateway`, else `~/.local/state/ingester-gateway` (the XDG
    base directory rules: a relative XDG_STATE_HOME is ignored)."""
    xdg = env.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else home / ".local" / "state"
    return base / APP_DIR


class ResumeBook:
    """The records of uploads in flight under one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "uploads"

    def path_of(self, identity: FileIdentity) -> Path:
        return self.directory / f"{identity.key()}.json"

    def load(self, identity: FileIdentity) -> ResumeEntry | None:
        """The record of this file's upload; None when there is none, or one that is
        unreadable or of another file (a digest collision), which is dropped."""
        path = self.path_of(identity)
        try:
            entry = _decoder.decode(path.read_bytes())
        except FileNotFoundError:
            return None
        except (msgspec.DecodeError, OSError):
            self.remove(identity)
            return None
        if entry.version != VERSION or not entry.matches(identity):
            self.remove(identity)
            return None
        return entry

    def save(self, identity: FileIdentity, entry: ResumeEntry) -> None:
        """Written whole or not at all (a temporary file renamed over the record)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.path_of(identity)
        temporary = path.parent / f"{path.name}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(msgspec.json.encode(entry))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise

    def remove(self, identity: FileIdentity) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_of(identity).unlink()

"""Progress of uploads in flight and recently finished, readable by their uploader.

With several worker processes a poll may reach a worker that does not run the
upload: then each worker mirrors its entries into a shared directory (tmpfs) — every
half second for running uploads, at once when one finishes — and reads its siblings'.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import msgspec

from ingester_gateway.models import UploadProgress

_UPLOAD_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def valid_upload_id(text: str) -> bool:
    """8 to 64 of [A-Za-z0-9_-]: safe in a path, hard to collide by accident."""
    return 8 <= len(text) <= 64 and set(text) <= _UPLOAD_ID_CHARS


class _SharedEntry(msgspec.Struct):
    owner: str
    progress: UploadProgress


_shared_decoder = msgspec.json.Decoder(_SharedEntry)


Key = tuple[str, str]  # (owner, upload id): an id names an upload among its owner's only


class ProgressBook:
    """Bounded in-memory book: finished entries are kept for `retention` seconds.

    Entries are the owner's: another user's upload of the same id is another entry, so
    naming an id neither blocks anyone else's nor tells whether it exists. An owner may
    reuse the id of a finished upload of theirs (the new one replaces it)."""

    def __init__(
        self,
        retention: float = 3600.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        shared_dir: Path | None = None,
    ) -> None:
        self._entries: OrderedDict[Key, UploadProgress] = OrderedDict()
        # Finish times in finishing order; always a subset of `_entries`.
        self._finished_at: OrderedDict[Key, float] = OrderedDict()
        self._retention = retention
        self._max = max_entries
        self._clock = clock
        self._shared = shared_dir
        self._running: set[Key] = set()
        self._mirrored: set[Key] = set()  # entries a sibling worker may be asked about
        if shared_dir is not None:
            shared_dir.mkdir(parents=True, exist_ok=True)

    def open(
        self, upload_id: str, owner: str, progress: UploadProgress, named: bool = False
    ) -> bool:
        """Register a new upload; False while the owner's upload of that id runs. A
        `named` upload (the client chose its id, so it means to poll) is always mirrored."""
        self._expire()
        key = (owner, upload_id)
        if key in self._running:
            return False
        if key in self._entries:  # the owner's finished upload of that id: replaced
            del self._entries[key]
            self._finished_at.pop(key, None)
        while len(self._entries) >= self._max:
            # Finished entries go first; running ones only when nothing else is left.
            if self._finished_at:
                oldest, _ = self._finished_at.popitem(last=False)
                del self._entries[oldest]
            else:
                evicted, _ = self._entries.popitem(last=False)
                self._running.discard(evicted)
        self._entries[key] = progress
        self._running.add(key)
        if named and self._shared is not None:
            self._mirrored.add(key)
        return True

    def close(self, upload_id: str, owner: str) -> None:
        key = (owner, upload_id)
        self._running.discard(key)
        if key in self._entries:  # an entry evicted while running is not recorded
            self._finished_at[key] = self._clock()
            self._finished_at.move_to_end(key)
            # Its final state matters to whoever may poll it: a client that named it,
            # or one that could have seen it running. A quick anonymous upload's 201
            # already said everything.
            if key in self._mirrored:
                self._mirrored.discard(key)
                self._write_shared(key, self._entries[key])

    def registered(self, file_id: str) -> None:
        """A file registered late (from the outbox): its upload's entry says so now."""
        for progress in self._entries.values():
            if progress.file_id == file_id and progress.registration == "pending":
                progress.registration = "registered"

    def get(self, upload_id: str, owner: str) -> UploadProgress | None:
        """The owner's entry of that id, if there is one (others see nothing)."""
        self._expire()
        key = (owner, upload_id)
        entry = self._entries.get(key)
        if entry is None and self._shared is not None:
            entry = self._read_shared(key)
        return entry

    # -- the shared directory (several workers) ----------------------------------

    def mirror_running(self) -> None:
        """Write the entries of running uploads for the sibling workers to read."""
        if self._shared is None:
            return
        for key in list(self._running):
            entry = self._entries.get(key)
            if entry is not None:
                self._write_shared(key, entry)
                self._mirrored.add(key)

    def sweep_shared(self, max_age: float | None = None) -> None:
        """Remove mirrored entries older than the retention (any worker's)."""
        if self._shared is None:
            return
        horizon = time.time() - (self._retention if max_age is None else max_age)
        for path in self._shared.glob("*.json"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < horizon:
                    path.unlink()

    def _path(self, key: Key) -> Path:
        assert self._shared is not None
        owner, upload_id = key
        # The owner's part of the name: any text (a token's `sub`), hashed to be a name.
        owned = hashlib.sha256(owner.encode()).hexdigest()[:32]
        return self._shared / f"{owned}-{upload_id}.json"

    def _write_shared(self, key: Key, progress: UploadProgress) -> None:
        path = self._path(key)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(msgspec.json.encode(_SharedEntry(key[0], progress)))
        os.replace(tmp, path)  # readers see the old or the new snapshot, never half of one

    def _read_shared(self, key: Key) -> UploadProgress | None:
        if not valid_upload_id(key[1]):
            return None
        try:
            entry = _shared_decoder.decode(self._path(key).read_bytes())
        except (FileNotFoundError, msgspec.DecodeError):
            return None
        return entry.progress if entry.owner == key[0] else None

    def _expire(self) -> None:
        horizon = self._clock() - self._retention
        while self._finished_at:
            oldest, finished = next(iter(self._finished_at.items()))
            if finished > horizon:
                break
            del self._finished_at[oldest]
            del self._entries[oldest]

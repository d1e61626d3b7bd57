"""Progress of uploads in flight and recently finished, readable by their uploader.

With several worker processes a poll may reach a worker that does not run the
upload: then each worker mirrors its entries into a shared directory (tmpfs) — every
half second for running uploads, at once when one finishes — and reads its siblings'.
"""

from __future__ import annotations

import contextlib
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


class ProgressBook:
    """Bounded in-memory book: finished entries are kept for `retention` seconds."""

    def __init__(
        self,
        retention: float = 3600.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        shared_dir: Path | None = None,
    ) -> None:
        self._entries: OrderedDict[str, tuple[str, UploadProgress]] = OrderedDict()
        # Finish times in finishing order; always a subset of `_entries`.
        self._finished_at: OrderedDict[str, float] = OrderedDict()
        self._retention = retention
        self._max = max_entries
        self._clock = clock
        self._shared = shared_dir
        self._running: set[str] = set()
        self._mirrored: set[str] = set()  # ids a sibling worker may be asked about
        if shared_dir is not None:
            shared_dir.mkdir(parents=True, exist_ok=True)

    def open(
        self, upload_id: str, owner: str, progress: UploadProgress, named: bool = False
    ) -> bool:
        """Register a new upload; False if the id is already taken. A `named` upload
        (the client chose its id, so it means to poll) is always mirrored."""
        self._expire()
        if upload_id in self._entries:
            return False
        while len(self._entries) >= self._max:
            # Finished entries go first; running ones only when nothing else is left.
            if self._finished_at:
                oldest, _ = self._finished_at.popitem(last=False)
                del self._entries[oldest]
            else:
                self._entries.popitem(last=False)
        self._entries[upload_id] = (owner, progress)
        self._running.add(upload_id)
        if named and self._shared is not None:
            self._mirrored.add(upload_id)
        return True

    def close(self, upload_id: str) -> None:
        self._running.discard(upload_id)
        if upload_id in self._entries:  # an entry evicted while running is not recorded
            self._finished_at[upload_id] = self._clock()
            self._finished_at.move_to_end(upload_id)
            # Its final state matters to whoever may poll it: a client that named it,
            # or one that could have seen it running. A quick anonymous upload's 201
            # already said everything.
            if upload_id in self._mirrored:
                self._mirrored.discard(upload_id)
                self._write_shared(upload_id, *self._entries[upload_id])

    def registered(self, file_id: str) -> None:
        """A file registered late (from the outbox): its upload's entry says so now."""
        for _, progress in self._entries.values():
            if progress.file_id == file_id and progress.registration == "pending":
                progress.registration = "registered"

    def get(self, upload_id: str, owner: str) -> UploadProgress | None:
        """The entry if it exists and `owner` uploaded it (others see nothing)."""
        self._expire()
        entry = self._entries.get(upload_id)
        if entry is None and self._shared is not None:
            entry = self._read_shared(upload_id)
        if entry is None or entry[0] != owner:
            return None
        return entry[1]

    # -- the shared directory (several workers) ----------------------------------

    def mirror_running(self) -> None:
        """Write the entries of running uploads for the sibling workers to read."""
        if self._shared is None:
            return
        for upload_id in list(self._running):
            entry = self._entries.get(upload_id)
            if entry is not None:
                self._write_shared(upload_id, *entry)
                self._mirrored.add(upload_id)

    def sweep_shared(self, max_age: float | None = None) -> None:
        """Remove mirrored entries older than the retention (any worker's)."""
        if self._shared is None:
            return
        horizon = time.time() - (self._retention if max_age is None else max_age)
        for path in self._shared.glob("*.json"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < horizon:
                    path.unlink()

    def _path(self, upload_id: str) -> Path:
        assert self._shared is not None
        return self._shared / f"{upload_id}.json"

    def _write_shared(self, upload_id: str, owner: str, progress: UploadProgress) -> None:
        path = self._path(upload_id)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(msgspec.json.encode(_SharedEntry(owner, progress)))
        os.replace(tmp, path)  # readers see the old or the new snapshot, never half of one

    def _read_shared(self, upload_id: str) -> tuple[str, UploadProgress] | None:
        if not valid_upload_id(upload_id):
            return None
        try:
            entry = _shared_decoder.decode(self._path(upload_id).read_bytes())
        except (FileNotFoundError, msgspec.DecodeError):
            return None
        return entry.owner, entry.progress

    def _expire(self) -> None:
        horizon = self._clock() - self._retention
        while self._finished_at:
            oldest, finished = next(iter(self._finished_at.items()))
            if finished > horizon:
                break
            del self._finished_at[oldest]
            del self._entries[oldest]

"""Giving memory back. After a burst of uploads, glibc keeps the freed blocks in its
heaps (RSS stays at the burst's peak); once the gateway has been idle for a moment,
`malloc_trim` returns them to the system."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _load_trim()


class IdleTrimmer:
    """`busy()` when an upload starts, `idle()` when the last one ends: a trim runs
    (in a worker thread) after `delay` seconds without uploads."""

    def __init__(self, delay: float = 1.0) -> None:
        self._delay = delay
        self._handle: asyncio.TimerHandle | None = None

    def busy(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def idle(self) -> None:
        if _TRIM is None or self._handle is not None:
            return
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(self._delay, self._trim, loop)

    def _trim(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        assert _TRIM is not None
        loop.run_in_executor(None, _TRIM, 0)

"""glibc's allocator, told how an upload gateway uses memory.

While uploads run, blocks of about 1 MiB are allocated and freed all the time. By
default glibc serves such sizes with fresh mmaps, or returns the top of its heap to
the system as soon as a block is freed: every new block then faults its pages in
again (a zeroed page per 4 KiB, ~10 % of the CPU of a pass-through upload). So blocks
come from the heap and freed memory stays there while uploads run; once the gateway
has been idle for a moment, `malloc_trim` returns it to the system.

Blocks made by worker threads (compressed output, staged reads) are freed by the event
loop. With glibc's default of one heap ("arena") per thread, up to 8 per core, the holes
they leave spread over as many heaps, none of which empties enough to be trimmed: under
the soak's mixed traffic RSS crept up ~5 MiB a minute, and stayed flat with two arenas
(`benchmarks/soak.py`; benchmarks/README.md, "Soak")."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
    return libc


_LIBC = _glibc()
_TRIM: Callable[[int], int] | None = _LIBC.malloc_trim if _LIBC is not None else None
# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8
ARENAS = 2  # the event loop's heap, and one its worker threads share


def tune_allocator() -> bool:
    """Serve blocks (up to 32 MiB) from the heap and keep up to 16 MiB of freed heap at
    its top while busy (enough for the blocks in flight to be reused without page
    faults; not so much that peak RSS grows), in at most ARENAS heaps; True when glibc
    took the settings. Called before any worker thread starts."""
    if _LIBC is None:
        return False
    return all(
        _LIBC.mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, 32 * 2**20),
            (M_TRIM_THRESHOLD, 16 * 2**20),
            (M_TOP_PAD, 2**20),
            (M_ARENA_MAX, ARENAS),
        )
    )


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

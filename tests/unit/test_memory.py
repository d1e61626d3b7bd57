"""What the gateway tells glibc's allocator (runtime/memory.py), checked on the real
glibc in a fresh interpreter: there, no thread has made a heap of its own yet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ingester_gateway.runtime import memory

# Worker threads allocate and free 1 MiB blocks, as compression and staged reads do;
# then glibc's own report (malloc_info) says how many heaps ("arenas") exist.
THREADS_ALLOCATING = """
import ctypes, sys, threading
from ingester_gateway.runtime.memory import tune_allocator
tuned = sys.argv[1] == "tuned"
if tuned:
    assert tune_allocator()
barrier = threading.Barrier(8)
def work():
    barrier.wait()  # all at once, so each would want a heap of its own
    for _ in range(50):
        block = bytearray(1 << 20)
        del block
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
out = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, out)
libc.fclose(out)
"""


def heaps_after_threads_allocate(tmp_path: Path, mode: str) -> int:
    report = tmp_path / f"malloc-info-{mode}.xml"
    subprocess.run(
        [sys.executable, "-c", THREADS_ALLOCATING, mode, str(report)], check=True, timeout=60
    )
    return report.read_text().count("<heap nr=")


def test_worker_threads_share_two_heaps_so_what_they_free_can_be_trimmed(
    tmp_path: Path,
) -> None:
    # The gateway runs on glibc (Debian, the python:3.11-slim image): the tuning must load.
    assert memory._LIBC is not None, "glibc's mallopt was not found"
    assert heaps_after_threads_allocate(tmp_path, "untuned") > memory.ARENAS  # glibc's default
    assert heaps_after_threads_allocate(tmp_path, "tuned") <= memory.ARENAS

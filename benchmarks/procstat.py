"""CPU time and memory of running processes, read from /proc.

A "server" is a process tree: the pid we started plus every descendant (nginx's
workers, uvicorn's worker processes when there are several). CPU is utime+stime of
every process of the tree (all threads included, as /proc/<pid>/stat counts them),
plus cutime+cstime for children that exited and were reaped meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterable
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def _children_of(pid: int) -> list[int]:
    """Direct children, from /proc/<pid>/task/<tid>/children (every thread may fork)."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return found
    for tid in tids:
        with (
            contextlib.suppress(FileNotFoundError, ProcessLookupError),
            open(f"/proc/{pid}/task/{tid}/children") as fh,
        ):
            found.extend(int(p) for p in fh.read().split())
    return found


def process_tree(root: int) -> list[int]:
    """`root` and all its live descendants."""
    tree = [root]
    queue = [root]
    while queue:
        for child in _children_of(queue.pop()):
            if child not in tree:
                tree.append(child)
                queue.append(child)
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    """user+sys CPU seconds of these processes (and their reaped children)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # fields[11..14]: utime, stime, cutime, cstime (stat fields 14-17)
            ticks += sum(int(f) for f in fields[11:15])
    return ticks / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    return cpu_seconds(process_tree(root))


def tree_sys_seconds(root: int) -> float:
    """The kernel-mode part (stime + cstime) of `tree_cpu_seconds`."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[12]) + int(fields[14])
    return ticks / CLK_TCK


def _status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident set size summed over the processes, in bytes."""
    return sum((_status_kib(pid, "VmRSS:") or 0) * 1024 for pid in pids)


def hwm_bytes(pids: Iterable[int]) -> int:
    """The largest VmHWM (peak RSS since start or since `reset_hwm`) among the processes."""
    return max(((_status_kib(pid, "VmHWM:") or 0) * 1024 for pid in pids), default=0)


def reset_hwm(pids: Iterable[int]) -> bool:
    """Reset VmHWM to the current RSS (`echo 5 > clear_refs`, Linux >= 4.0)."""
    ok = True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            ok = False
    return ok


class RssSampler:
    """Samples the summed VmRSS of one process tree every `interval` seconds in a
    thread; `peak` is the largest sum seen. The tree is re-read every second so a
    worker started meanwhile is counted."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"rss-{root}", daemon=True)

    def _loop(self) -> None:
        pids = process_tree(self.root)
        refreshed = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - refreshed >= 1.0:
                pids = process_tree(self.root)
                refreshed = now
            self.peak = max(self.peak, rss_bytes(pids))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        # one last sample, so an upload shorter than the interval still has a figure
        self.peak = max(self.peak, rss_bytes(process_tree(self.root)))


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """tid -> user+sys CPU seconds of each live thread of one process."""
    out: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as fh:
                raw = fh.read().decode("ascii", "replace")
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def main_thread_share(pid: int, before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds of the main thread (tid == pid: the event loop) between two readings."""
    return after.get(pid, 0.0) - before.get(pid, 0.0)


def run_measured(argv: list[str], **popen: Any) -> tuple[subprocess.Popen[bytes], float, Any]:
    """Run `argv` to its end: the finished process, its wall time, and its rusage
    (user+sys of that process alone, from wait4)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, **popen)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc, wall, usage

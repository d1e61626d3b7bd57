"""Optional py-spy profile of the gateway during a scenario (`--profile c`).

Profiled runs are extra runs after the measured ones: sampling costs CPU, so their
figures are not used. The raw collapsed stacks go to `results/logs/profile-<key>.txt`
and a summary (top functions by own and by inclusive samples) is printed and saved.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_LINENO = re.compile(r":\d+\)$")
# Frames every sample of a thread passes through: left out of the inclusive list.
_PLUMBING = re.compile(
    r"runpy|threading\.py|uvicorn/(main|server|_compat)\.py|asyncio/runners\.py"
    r"|ingester_gateway/(cli|__main__)\.py|concurrent/futures/thread\.py"
)


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, pid: int, output: Path, rate: int = 200, native: bool = False) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.output = output
        self.argv = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--threads",
            "--subprocesses",
            # --native needs the process paused while sampled (more intrusive)
            *(["--native"] if native else ["--nonblocking"]),
            "--output",
            str(output),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        self.log = open(self.output.with_suffix(".log"), "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT)
        time.sleep(1.0)  # attach
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def summarize(raw: Path, top: int = 15) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        count = int(match["count"])
        frames = [f for f in match["stack"].split(";") if not f.startswith("process ")]
        thread = "?"
        if frames and frames[0].startswith("thread ("):
            thread = frames.pop(0).split(": ", 1)[-1]  # "thread (123): MainThread"
        frames = [_LINENO.sub(")", f) for f in frames]
        total += count
        threads[thread] += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            if not _PLUMBING.search(frame):
                inclusive[frame] += count
    if not total:
        return f"(no samples in {raw})"

    def block(title: str, counter: collections.Counter[str]) -> list[str]:
        rows = [f"{title}:"]
        rows += [f"  {100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(top)]
        return rows

    lines = [f"{total} samples (non-idle), {raw}"]
    lines += block("by thread", threads)
    lines += block("own time", own)
    lines += block("inclusive (without the start-up frames)", inclusive)
    return "\n".join(lines)

"""The machine a run measured on and the code it measured: CPU, cores, RAM, kernel, the
versions of every program and library on the path, the load before and after, the git
revision. Written at the top of latest.md and into latest.json."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from benchmarks.summary import GiB


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def report_git(root: Path) -> str:
    head = _version(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    dirty = _version(["git", "-C", str(root), "status", "--porcelain", "--", "src"])
    return head + (" (src modified)" if dirty not in ("", "unknown") else "")


@dataclass
class Machine:
    cpu_model: str = field(default_factory=_cpu_model)
    cores: int = field(default_factory=lambda: os.cpu_count() or 0)
    usable_cores: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    memory_gib: float = field(
        default_factory=lambda: round(
            os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GiB, 1
        )
    )
    kernel: str = field(default_factory=platform.release)
    python: str = field(default_factory=lambda: sys.version.split()[0])
    curl: str = field(default_factory=lambda: _version(["curl", "--version"]).split(" (")[0])
    nginx: str = field(
        default_factory=lambda: _version(
            [shutil.which("nginx") or "/usr/sbin/nginx", "-v"]
        ).removeprefix("nginx version: ")
    )
    wrk: str = field(
        default_factory=lambda: (
            _version([shutil.which("wrk") or "wrk", "--version"]).split(" [")[0]
            if shutil.which("wrk")
            else "absent"
        )
    )
    packages: dict[str, str] = field(
        default_factory=lambda: {
            p: _package(p)
            for p in (
                *("uvicorn", "uvloop", "httptools", "aiohttp", "zstandard", "brotli"),
                *("python-jose", "fastapi", "httpx"),
            )
        }
    )
    load_before: tuple[float, float, float] = field(default_factory=os.getloadavg)
    load_after: tuple[float, float, float] | None = None

    def lines(self) -> list[str]:
        pk = ", ".join(f"{k} {v}" for k, v in self.packages.items())
        load_after = "" if self.load_after is None else f", after {self.load_after[0]:.2f}"
        return [
            f"- CPU: {self.cpu_model}, {self.cores} cores ({self.usable_cores} usable),"
            f" {self.memory_gib} GiB RAM, Linux {self.kernel}",
            f"- Python {self.python}; {pk}; {self.curl}; {self.nginx}; {self.wrk}",
            f"- 1-min load average before the run {self.load_before[0]:.2f}{load_after}",
        ]

"""What a scenario is, what it may use and what one run of it yields.

A `Scenario` is one kind of measured work, named by a short key (`a`, `c`, `s1`, ...):
`run(bench)` does it once and returns a `Measurement`. The concern modules of
`benchmarks/scenarios/` declare them, `catalogue.py` collects them, `harness.py` runs
them `--repeat` times (or once).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from benchmarks.datasets import Datasets
    from benchmarks.stack import BenchStack


class Skipped(Exception):
    """A scenario that cannot run here and now (e.g. not enough tmpfs for the SE's copy):
    the run goes on without it and the report says why."""


@dataclass
class Measurement:
    """One run of one scenario."""

    key: str
    payload_bytes: int
    wall_s: float
    # role -> CPU seconds, user+sys: the servers (`MAIN_ROLES`, `other`) and the client
    # (`curl`, `client` or `ref`)
    cpu_s: dict[str, float]
    gateway_peak_rss: int | None = None  # bytes, sampled VmRSS of the gateway's tree
    gateway_hwm: int | None = None  # bytes, VmHWM after a reset at the start of the run
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mb_s(self) -> float:
        return self.payload_bytes / 1e6 / self.wall_s

    def cpu_per_gib(self, role: str) -> float:
        if not self.payload_bytes:
            return 0.0
        return self.cpu_s.get(role, 0.0) * 2**30 / self.payload_bytes


@dataclass
class Options:
    """Sizes of the scenarios (the command-line options; `--quick` shrinks them)."""

    small_count: int = 20_000  # 4 KiB uploads per server
    small_size: int = 4096
    small_connections: int = 64  # concurrent clients, one JWT each (rotated)
    small_threads: int = 2  # wrk threads
    big_size: int = 10 * 2**30  # the one big upload of the memory figure
    concurrent: int = 100  # concurrent uploads of the memory figure
    concurrent_size: int = 100 * 2**20
    stream_size: int = 200 * 2**20  # the paced upload of the first-byte figure
    stream_rate: float = 20e6  # bytes/s
    jwt_count: int = 5000
    edge_connections: int = 2000  # connections holding half a head (issue 10)


@dataclass
class Bench:
    """What a scenario may use: the servers, the payloads, a scratch directory, the
    sizes; `warm` is set for the warm-up pass (scenarios shrink what they do)."""

    stack: BenchStack
    data: Datasets
    scratch: Path
    opts: Options = field(default_factory=Options)
    warm: bool = False

    def auth_file(self) -> Path:
        """The user's `Authorization` value in a file only we may read (the clients take
        it from there, not from their command line)."""
        path = self.scratch / "auth.value"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(f"Bearer {self.stack.user_token}\n")
        return path


def no_payload(data: Datasets) -> None:
    return None


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    run: Callable[[Bench], Measurement]
    # makes the payloads `run` will use, before any measurement (not timed), e.g.
    # `Datasets.random`
    prepare: Callable[[Datasets], object] = no_payload
    # the servers it needs (started before any measurement)
    servers: tuple[str, ...] = ("se", "nginx", "gateway")
    # "repeat": `--repeat` rounds, the median kept; "once": one run after the rounds
    rounds: Literal["repeat", "once"] = "repeat"
    # whether it reads the payloads of `prepare` (the others run after they are removed)
    uses_payload: bool = True
    # which table of latest.md lists it: "upload" (MB/s, CPU-s/GiB per process tree),
    # "ref" (a library alone), "small" (requests/s, latency, CPU per 1000), "onthefly"
    # (uploads made on the fly: peak RSS, first byte), "resumable" (PATCHes: MB/s, time
    # until stored), "none"
    table: Literal["upload", "ref", "small", "onthefly", "resumable", "none"] = "upload"


# -- the process trees a measurement reports ----------------------------------------

MAIN_ROLES = ("se", "nginx", "gateway")


def roles_for(roots: dict[str, int], gateway_role: str) -> dict[str, int]:
    """Server roots with `gateway_role` renamed `gateway` (the gateway on the path) and
    the main gateway renamed `gateway-main` when it is not that one."""
    out: dict[str, int] = {}
    for role, pid in roots.items():
        if role == gateway_role:
            out["gateway"] = pid
        elif role == "gateway":
            out["gateway-main"] = pid
        else:
            out[role] = pid
    return out


def merge_others(values: dict[str, float]) -> dict[str, float]:
    """se, nginx, gateway as they are; every other server summed as `other`."""
    out = {role: values.get(role, 0.0) for role in MAIN_ROLES}
    out["other"] = sum(v for role, v in values.items() if role not in MAIN_ROLES)
    return out


def expect_equal(key: str, what: str, got: object, want: object) -> None:
    """A measured upload whose reply says something else than what was sent is an error,
    not a figure."""
    if got != want:
        raise RuntimeError(f"{key}: {what} is {got!r}, expected {want!r}")

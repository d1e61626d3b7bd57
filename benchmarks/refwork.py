"""The references measured in a subprocess of their own, so that nothing of the
harness (its threads, its allocations, its GIL) is in the figure. Each prints one
JSON object on stdout.

    python -m benchmarks.refwork sha256 PAYLOAD
    python -m benchmarks.refwork codec zstd|brotli|gzip PAYLOAD [--level N] [--threads N]
    python -m benchmarks.refwork jwt PRIVATE_PEM PUBLIC_PEM --count N

- `sha256`: `hashlib.sha256` over the payload in 1 MiB blocks; `cpu_s` is the thread
  CPU time of the `update` calls alone (the floor of any checksumming hop).
- `codec`: the library alone compressing the payload in 1 MiB blocks with one
  streaming compressor (`ZstdCompressor(level, threads).compressobj()`,
  `brotli.Compressor(quality)`, `zlib.compressobj(level, DEFLATED, 31)`) — the same
  objects and settings the gateway uses; `wall_s` / `cpu_s` cover the loop (reading a
  tmpfs file into a reused buffer costs ~1 % of it).
- `jwt`: `ingester_gateway.auth.verify.TokenVerifier.verify_header` on the same token `count`
  times, with `cache_size=0` (an RS256 verify per request) and with the default cache.

The harness side is `run_refwork(...)`: the same arguments, the JSON object back.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

BLOCK = 1 << 20
ROOT = Path(__file__).resolve().parent.parent
SUBPROCESS_TIMEOUT_S = 1800


def run_refwork(*args: str) -> dict[str, Any]:
    """`python -m benchmarks.refwork ARGS` in a subprocess of its own; its JSON object."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.refwork", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    if proc.returncode != 0:
        what = " ".join(args[:2])
        raise RuntimeError(f"refwork {what} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _blocks(path: Path) -> Any:
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            yield view[:n]


def sha256(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    cpu = 0.0
    size = 0
    started = time.perf_counter()
    for block in _blocks(path):
        t0 = time.thread_time()
        h.update(block)
        cpu += time.thread_time() - t0
        size += len(block)
    return {
        "bytes": size,
        "cpu_s": cpu,
        "wall_s": time.perf_counter() - started,
        "sha256": h.hexdigest(),
    }


def _compressor(codec: str, level: int, threads: int) -> tuple[Callable[[Any], bytes], Any]:
    if codec == "zstd":
        import zstandard

        obj = zstandard.ZstdCompressor(level=level, threads=threads).compressobj()
        return obj.compress, obj.flush
    if codec == "brotli":
        import brotli

        b = brotli.Compressor(quality=level)
        return b.process, b.finish
    if codec == "gzip":
        z = zlib.compressobj(level, zlib.DEFLATED, 31)
        return z.compress, z.flush
    raise SystemExit(f"unknown codec {codec}")


def codec(path: Path, name: str, level: int, threads: int) -> dict[str, Any]:
    compress, flush = _compressor(name, level, threads)
    size = out = 0
    cpu0 = time.process_time()  # all threads: zstd's workers too
    started = time.perf_counter()
    for block in _blocks(path):
        size += len(block)
        out += len(compress(block))
    out += len(flush())
    wall = time.perf_counter() - started
    return {
        "codec": name,
        "level": level,
        "threads": threads,
        "bytes": size,
        "bytes_out": out,
        "wall_s": wall,
        "cpu_s": time.process_time() - cpu0,
    }


def jwt_cost(private_pem: Path, public_pem: Path, count: int) -> dict[str, Any]:
    from ingester_gateway.auth.verify import StaticKeySource, TokenVerifier
    from ingester_gateway.reference.tokens import mint_token

    token = mint_token(private_pem.read_bytes(), sub="bench-jwt", ttl=3600)
    header = f"Bearer {token}".encode()

    async def measure(cache_size: int) -> dict[str, float]:
        verifier = TokenVerifier(StaticKeySource.from_file(str(public_pem)), cache_size=cache_size)
        for _ in range(min(50, count)):  # imports, first-call caches
            await verifier.verify_header(header)
        cpu0 = time.thread_time()
        started = time.perf_counter()
        for _ in range(count):
            await verifier.verify_header(header)
        wall = time.perf_counter() - started
        return {
            "us_per_request": wall / count * 1e6,
            "cpu_us_per_request": (time.thread_time() - cpu0) / count * 1e6,
            "wall_s": wall,
        }

    async def both() -> dict[str, Any]:
        return {"count": count, "uncached": await measure(0), "cached": await measure(4096)}

    return asyncio.run(both())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.refwork")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("sha256")
    p.add_argument("payload", type=Path)
    p = sub.add_parser("codec")
    p.add_argument("codec", choices=("zstd", "brotli", "gzip"))
    p.add_argument("payload", type=Path)
    p.add_argument("--level", type=int, required=True)
    p.add_argument("--threads", type=int, default=0)
    p = sub.add_parser("jwt")
    p.add_argument("private_pem", type=Path)
    p.add_argument("public_pem", type=Path)
    p.add_argument("--count", type=int, default=5000)
    args = parser.parse_args(argv)
    if args.what == "sha256":
        result = sha256(args.payload)
    elif args.what == "codec":
        result = codec(args.payload, args.codec, args.level, args.threads)
    else:
        result = jwt_cost(args.private_pem, args.public_pem, args.count)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""An upload client for the figures whose bytes must never touch a disk: one 10 GiB
upload, 100 concurrent 100 MiB uploads, and a 20 MB/s paced upload. Run by the
harness as a subprocess; prints one JSON object on stdout.

    python -m benchmarks.loadgen URL --auth-file F --size 10GiB [--concurrency N]
                                 [--rate BYTES_PER_S] [--piece 1MiB]

Why one asyncio client rather than curl reading a generator on a pipe:
- the bytes come from one 64 MiB `os.urandom` buffer made at start and sent as
  zero-copy `memoryview` slices (each upload starts at its own offset), so making the
  payload costs nothing per byte — no generator process, no pipe copy;
- 100 concurrent uploads are 100 coroutines in one process (uvloop, aiohttp), not
  100 curl processes plus 100 generators (each generator would hold its own buffer);
- it checks every reply itself: HTTP 201, `file_size` and `stored_size` equal to what
  was sent, `checksum` equal to `stored_checksum` (what the SE hashed) — the bytes are
  not hashed again on the client, which would cost a core for 10 GiB.
Its own CPU time is reported (CPU-s per GiB), to show it is not the bottleneck.

Every upload is a chunked raw `PUT URL/<name>?compression_algorithm=none`. With
`--rate`, each upload is paced to that many bytes per second (pieces of `--piece`
bytes, each sent when the schedule says so), and `first_body_byte_at` is the
`time.time()` just before the first body piece is handed to the socket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from ingester_gateway.config import parse_size

BUFFER = 64 << 20


async def _body(
    buf: memoryview, offset: int, size: int, piece: int, rate: float | None, record: dict[str, Any]
) -> AsyncIterator[memoryview]:
    sent = 0
    started = time.perf_counter()
    while sent < size:
        n = min(piece, size - sent, BUFFER - offset)
        if rate:
            due = started + sent / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        if sent == 0:
            record["first_body_byte_at"] = time.time()
        yield buf[offset : offset + n]
        sent += n
        offset = (offset + n) % BUFFER
    record["body_sent_s"] = time.perf_counter() - started
    record["last_body_byte_at"] = time.time()


async def _upload(
    session: aiohttp.ClientSession,
    url: str,
    auth: str,
    buf: memoryview,
    index: int,
    size: int,
    piece: int,
    rate: float | None,
) -> dict[str, Any]:
    record: dict[str, Any] = {"index": index}
    offset = (index * 7 * piece) % BUFFER  # each upload its own stretch of the buffer
    started = time.perf_counter()
    try:
        async with session.put(
            f"{url}/api/v1/files/load-{index:03d}.bin?compression_algorithm=none",
            data=_body(buf, offset, size, piece, rate, record),
            headers={
                "Authorization": auth,
                "Content-Type": "application/octet-stream",
                "Expect": "",
            },
        ) as resp:
            record["status"] = resp.status
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        record["status"] = 0
        record["error"] = f"{type(exc).__name__}: {exc}"
        return record
    record["wall_s"] = time.perf_counter() - started
    try:
        reply = json.loads(text)
    except ValueError:
        reply = {}
    record["reply"] = {
        k: reply.get(k)
        for k in ("file_id", "file_size", "stored_size", "checksum", "stored_checksum")
    }
    problems = []
    if resp.status != 201:
        problems.append(f"HTTP {resp.status}: {text[:300]}")
    else:
        if reply.get("file_size") != size:
            problems.append(f"file_size {reply.get('file_size')} != {size}")
        if reply.get("stored_size") != size:
            problems.append(f"stored_size {reply.get('stored_size')} != {size}")
        if not reply.get("checksum") or reply.get("checksum") != reply.get("stored_checksum"):
            problems.append("checksum != stored_checksum")
    record["ok"] = not problems
    if problems:
        record["error"] = "; ".join(problems)
    return record


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with open(args.auth_file) as fh:
        auth = fh.read().strip()
    buf = memoryview(os.urandom(BUFFER))
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu0 = time.process_time()
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                _upload(session, args.url, auth, buf, i, args.size, args.piece, args.rate)
                for i in range(args.concurrency)
            )
        )
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu0
    return {
        "concurrency": args.concurrency,
        "size": args.size,
        "rate": args.rate,
        "wall_s": wall,
        "client_cpu_s": cpu,
        "client_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "ok": sum(1 for r in results if r.get("ok")),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen")
    parser.add_argument("url", help="gateway base URL")
    parser.add_argument("--auth-file", required=True, help="file holding 'Bearer <token>'")
    parser.add_argument("--size", type=parse_size, required=True, help="bytes per upload")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rate", type=float, default=None, help="bytes/s per upload")
    parser.add_argument("--piece", type=parse_size, default=1 << 20, help="body piece size")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`ingester-gateway nodes list|add|remove|drain`: the operator's hand on the Redis
node registry. Exit codes: 0 done, 1 no such node or Redis unreachable, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

import msgspec

from ingester_gateway.registry.redis import NODE_KEY, NodeAnnouncement, RedisNodeBook
from ingester_gateway.runtime.redis_io import REDIS_ERRORS, redact_url, redis_client

REDIS_TIMEOUT = 2.0  # seconds; an operator waits for an answer, not for a hung Redis


class NodeNotFound(Exception):
    pass


def run_nodes(args: argparse.Namespace) -> int:
    try:
        client = redis_client(args.redis_url, REDIS_TIMEOUT)
    except ValueError as exc:
        return _fail(f"bad --redis-url: {exc}", 2)
    try:
        asyncio.run(_run(RedisNodeBook(client), args))
    except NodeNotFound as exc:
        return _fail(f"no node {str(exc)!r} in the registry")
    except REDIS_ERRORS as exc:
        return _fail(f"Redis at {redact_url(args.redis_url)} is unreachable: {exc}")
    return 0


async def _run(book: RedisNodeBook, args: argparse.Namespace) -> None:
    try:
        if args.action == "list":
            announcements, draining = await book.announcements()
            if args.json:
                print(to_json(announcements, draining, time.time()))
            else:
                print(format_table(announcements, draining, time.time()))
        elif args.action == "add":
            await _add(book, args)
        elif args.action == "remove":
            if not await book.remove(args.id):
                raise NodeNotFound(args.id)
            print(f"removed {args.id}")
        elif args.action == "drain":
            await _drain(book, args.id, undo=args.undo)
    finally:
        await book.redis.aclose()


async def _add(book: RedisNodeBook, args: argparse.Namespace) -> None:
    node = NodeAnnouncement(
        id=args.id,
        url=args.url,
        mode=args.mode,
        status="ok",
        priority=args.priority,
        capacity_total=args.capacity_bytes,
        capacity_available=args.capacity_bytes,  # declared, not measured: nothing reports use
        heartbeat_at=None,
        ttl=None,
    )
    replaced = bool(await book.redis.exists(NODE_KEY.format(args.id)))
    await book.announce(node, "updated" if replaced else "registered")
    print(f"{'replaced' if replaced else 'added'} {args.id} ({args.mode}, {args.url})")


async def _drain(book: RedisNodeBook, node_id: str, *, undo: bool) -> None:
    announcements, draining = await book.announcements()
    known = any(a.id == node_id for a in announcements)
    if undo:
        if not known and node_id not in draining:
            raise NodeNotFound(node_id)
        await book.set_draining(node_id, False)
        print(f"{node_id} takes new uploads again")
    else:
        if not known:
            raise NodeNotFound(node_id)
        await book.set_draining(node_id, True)
        print(f"{node_id} is draining: no new uploads, in-flight ones finish")


class NodeView(msgspec.Struct, frozen=True):
    """One line of `nodes list --json`: the record as stored, plus what the CLI knows."""

    id: str
    url: str
    mode: str
    status: str
    priority: int
    capacity_total: int | None
    capacity_used: int | None
    capacity_available: int | None
    heartbeat_at: float | None
    ttl: float | None
    heartbeat_age: float | None  # seconds; None for operator-managed records
    draining: bool


def to_json(announcements: Sequence[NodeAnnouncement], draining: set[str], now: float) -> str:
    views = [
        NodeView(
            **msgspec.structs.asdict(a),
            heartbeat_age=None if a.heartbeat_at is None else round(now - a.heartbeat_at, 3),
            draining=a.id in draining,
        )
        for a in announcements
    ]
    return msgspec.json.encode(views).decode()


_COLUMNS = ("ID", "URL", "MODE", "STATUS", "PRIORITY", "FREE / TOTAL", "HEARTBEAT", "DRAINING")


def format_table(announcements: Sequence[NodeAnnouncement], draining: set[str], now: float) -> str:
    if not announcements:
        return "no nodes registered"
    rows = [_COLUMNS] + [
        (
            a.id,
            a.url,
            a.mode,
            a.status,
            str(a.priority),
            f"{_size(a.capacity_available)} / {_size(a.capacity_total)}",
            "manual" if a.heartbeat_at is None else f"{max(0.0, now - a.heartbeat_at):.1f}s ago",
            "yes" if a.id in draining else "no",
        )
        for a in announcements
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    value, unit = float(n), "B"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def _fail(message: str, code: int = 1) -> int:
    print(f"ingester-gateway nodes: {message}", file=sys.stderr)
    return code

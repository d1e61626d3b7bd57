"""RedisWatchedRegistry against fakeredis: loaded at start, reloaded when the source
announces a change, and while Redis is away the last view stays, marked stale."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import fakeredis
import redis.asyncio as aioredis

from ingester_gateway.registry import NodeRecord, artstore
from ingester_gateway.registry import redis as redis_registry
from ingester_gateway.registry.redis import CHANNEL, NodeAnnouncement, RedisNodeBook
from ingester_gateway.registry.watch import RedisWatchedRegistry
from tests.kit import FakeClock, run

T = TypeVar("T")


def announcement(node_id: str) -> NodeAnnouncement:
    return NodeAnnouncement(id=node_id, url=f"http://{node_id}:8010", mode="rw")


class Watched:
    """A fake Redis with a node book, and a watcher over it that counts its loads."""

    def __init__(self, refresh_interval: float) -> None:
        self.server = fakeredis.FakeServer()
        self.redis = fakeredis.FakeAsyncRedis(server=self.server)
        self.book = RedisNodeBook(self.redis)
        self.clock = FakeClock()
        self.loads = 0
        self.registry = RedisWatchedRegistry(
            self.redis,
            self.load,
            CHANNEL,
            refresh_interval=refresh_interval,
            name="test",
            clock=self.clock,
        )

    async def load(self, client: aioredis.Redis) -> list[NodeRecord]:
        self.loads += 1
        return await redis_registry.load_nodes(client)

    def ids(self) -> list[str]:
        return [n.id for n in self.registry.nodes()]

    async def subscribed(self) -> None:
        """Wait until the watcher listens on the channel and has made the reload that
        follows a subscription (the one after the load of `start`)."""
        await eventually(self._listening)
        await eventually(lambda: _now(self.loads >= 2))

    async def _listening(self) -> bool:
        ((_, count),) = await self.redis.pubsub_numsub(CHANNEL)
        return bool(count)


async def _now(value: bool) -> bool:
    return value


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Wait, in real time, for the watcher's loops to make `condition` true."""
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.005)


def watching(refresh_interval: float, scenario: Callable[[Watched], Awaitable[T]]) -> T:
    async def go() -> T:
        w = Watched(refresh_interval)
        try:
            return await scenario(w)
        finally:
            w.server.connected = True
            await w.registry.stop()

    return run(go())


def test_start_loads_the_nodes_before_it_returns() -> None:
    async def scenario(w: Watched) -> tuple[list[str], bool]:
        await w.book.announce(announcement("se-1"))
        await w.book.announce(announcement("se-2"))
        await w.registry.start()
        return w.ids(), w.registry.is_stale()

    assert watching(60.0, scenario) == (["se-1", "se-2"], False)


def test_a_redis_down_at_start_is_not_fatal_and_is_retried() -> None:
    async def scenario(w: Watched) -> list[object]:
        await w.book.announce(announcement("se-1"))
        w.server.connected = False
        await w.registry.start()
        seen: list[object] = [w.ids(), w.registry.is_stale()]
        w.server.connected = True
        await eventually(lambda: _now(w.ids() == ["se-1"]))
        return [*seen, w.registry.is_stale()]

    assert watching(0.05, scenario) == [[], True, False]


def test_a_change_announced_on_the_channel_triggers_a_reload() -> None:
    """With a 60 s interval only an announcement can explain a reload within 2 s."""

    async def scenario(w: Watched) -> list[object]:
        await w.book.announce(announcement("se-1"))
        await w.registry.start()
        await w.subscribed()
        await w.book.announce(announcement("se-2"))  # written without an announcement
        await asyncio.sleep(0.1)
        before = w.ids()
        await w.book.announce(announcement("se-3"), event="registered")
        await eventually(lambda: _now(len(w.ids()) == 3), timeout=2.0)
        await w.book.set_draining("se-1", True)
        await eventually(lambda: _now(w.registry.nodes()[0].draining), timeout=2.0)
        return [before, w.ids()]

    assert watching(60.0, scenario) == [["se-1"], ["se-1", "se-2", "se-3"]]


def test_reconnecting_reloads_at_once_whatever_the_interval() -> None:
    """Announcements made while the watcher could not listen are lost: subscribing
    again must reload by itself (here Redis was down at start, interval 60 s)."""

    async def scenario(w: Watched) -> list[str]:
        w.server.connected = False
        await w.registry.start()
        await asyncio.sleep(0.1)
        w.server.connected = True
        await w.book.announce(announcement("se-1"), event="registered")  # before listening
        await eventually(lambda: _now(w.ids() == ["se-1"]), timeout=3.0)
        return w.ids()

    assert watching(60.0, scenario) == ["se-1"]


def test_the_view_is_refreshed_on_the_interval_without_announcements() -> None:
    async def scenario(w: Watched) -> list[str]:
        await w.registry.start()
        await w.book.announce(announcement("se-1"))  # no event published
        await eventually(lambda: _now(w.ids() == ["se-1"]))
        return w.ids()

    assert watching(0.05, scenario) == ["se-1"]


def test_redis_going_away_keeps_the_last_view_marked_stale() -> None:
    async def scenario(w: Watched) -> list[object]:
        await w.book.announce(announcement("se-1"))
        await w.registry.start()
        w.server.connected = False
        await eventually(lambda: _now(w.registry.is_stale()))
        await asyncio.sleep(0.1)  # more failed rounds change nothing
        return [w.ids(), w.registry.is_stale()]

    assert watching(0.05, scenario) == [["se-1"], True]


def test_recovery_clears_stale_and_loads_what_changed_meanwhile() -> None:
    async def scenario(w: Watched) -> list[object]:
        await w.book.announce(announcement("se-1"))
        await w.registry.start()
        w.server.connected = False
        await eventually(lambda: _now(w.registry.is_stale()))
        w.server.connected = True
        await w.book.remove("se-1")  # its announcement went to nobody
        await w.book.announce(announcement("se-2"))
        await eventually(lambda: _now(not w.registry.is_stale()))
        await eventually(lambda: _now(w.ids() == ["se-2"]))
        return [w.ids(), w.registry.is_stale()]

    assert watching(0.05, scenario) == [["se-2"], False]


def test_a_view_not_refreshed_for_three_intervals_is_stale() -> None:
    async def scenario(w: Watched) -> list[bool]:
        stale = [w.registry.is_stale()]  # never loaded
        assert await w.registry.refresh()
        stale.append(w.registry.is_stale())
        w.clock.advance(3 * 2.0)
        stale.append(w.registry.is_stale())
        w.clock.advance(0.001)
        stale.append(w.registry.is_stale())
        assert await w.registry.refresh()
        stale.append(w.registry.is_stale())
        return stale

    assert watching(2.0, scenario) == [True, False, False, True, False]


def test_expired_records_are_hidden_while_fresh_and_kept_while_stale() -> None:
    """A lapsed heartbeat means the node is gone, unless Redis is what is gone."""
    records = [
        NodeRecord(id="lapsing", url="http://l", mode="rw", expires_at=1010.0),
        NodeRecord(id="manual", url="http://m", mode="rw"),
    ]

    async def scenario(w: Watched) -> list[list[str]]:
        async def load(_: aioredis.Redis) -> list[NodeRecord]:
            return records

        registry = RedisWatchedRegistry(w.redis, load, CHANNEL, clock=w.clock)
        await registry.refresh()
        seen = [[n.id for n in registry.nodes()]]
        w.clock.advance(5.0)  # 1005: fresh (interval 2 s: stale after 6 s), not lapsed
        seen.append([n.id for n in registry.nodes()])
        w.clock.advance(5.001)  # 1010.001: lapsed, and the view is now stale too
        seen.append([n.id for n in registry.nodes()])
        await registry.refresh()  # fresh again: the lapsed record is hidden
        seen.append([n.id for n in registry.nodes()])
        return seen

    assert watching(2.0, scenario) == [
        ["lapsing", "manual"],
        ["lapsing", "manual"],
        ["lapsing", "manual"],
        ["manual"],
    ]


def test_a_malformed_admin_document_keeps_the_last_good_view() -> None:
    async def scenario(w: Watched) -> list[object]:
        registry = RedisWatchedRegistry(
            w.redis, artstore.load_nodes, artstore.CHANNEL, clock=w.clock
        )
        good = b'{"storage_elements": [{"id": 1, "api_url": "http://se:8010", "mode": "rw"}]}'
        await w.redis.set(artstore.DOCUMENT_KEY, good)
        assert await registry.refresh()
        await w.redis.set(artstore.DOCUMENT_KEY, b'{"storage_elements": [{"id": ')
        ok = await registry.refresh()
        return [ok, [n.url for n in registry.nodes()], registry.is_stale()]

    assert watching(2.0, scenario) == [False, ["http://se:8010"], True]


def test_stop_ends_both_loops_even_while_redis_is_away() -> None:
    async def scenario(w: Watched) -> int:
        await w.registry.start()
        w.server.connected = False
        await eventually(lambda: _now(w.registry.is_stale()))
        loops = [t for t in asyncio.all_tasks() if (t.get_name() or "").startswith("test-")]
        assert len(loops) == 2
        started = asyncio.get_running_loop().time()
        await w.registry.stop()
        assert asyncio.get_running_loop().time() - started < 1.0
        return sum(not t.done() for t in loops)

    assert watching(0.05, scenario) == 0


def test_stop_returns_promptly_while_redis_answers() -> None:
    """stop() sets the StopSignal, but the listen loop sits in
    pubsub.get_message(timeout=refresh_interval) and only looks at it when that returns:
    with the default 2 s interval stop takes ~2 s, with a longer one it takes the whole
    2 s grace and then relies on cancel (the fallback runtime/stopping.py warns about)."""

    async def scenario() -> float:
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        registry = RedisWatchedRegistry(
            client, redis_registry.load_nodes, redis_registry.CHANNEL, refresh_interval=2.0
        )
        await registry.start()
        await asyncio.sleep(0.2)  # subscribed, waiting for announcements
        loop = asyncio.get_running_loop()
        started = loop.time()
        await registry.stop()
        return loop.time() - started

    assert run(scenario()) < 0.5

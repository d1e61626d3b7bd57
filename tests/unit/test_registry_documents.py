"""The registry sources: the Admin Module's document, the gateway's own node records in
Redis (against fakeredis), and the static list."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import fakeredis
import msgspec
import pytest

from ingester_gateway.config import StorageElementConfig
from ingester_gateway.registry import NodeRecord, artstore
from ingester_gateway.registry import redis as redis_registry
from ingester_gateway.registry.redis import (
    CHANNEL,
    DRAINING,
    NODE_KEY,
    NODES_INDEX,
    NodeAnnouncement,
    RedisNodeBook,
    to_record,
)
from ingester_gateway.registry.static import StaticRegistry
from tests.kit import run

T = TypeVar("T")


# -- the Admin Module's document (artstore:storage_elements) -------------------------


def admin_se(**changes: Any) -> dict[str, Any]:
    """One storage element as the real Admin Module writes it."""
    return {
        "id": 7,
        "name": "SE local 01",
        "api_url": "http://se-local-01:8010",
        "mode": "rw",
        "storage_type": "local",
        "status": "online",
        "capacity_bytes": 1000,
        "used_bytes": 250,
        "file_count": 12,
        "priority": 5,
        "element_id": "se-local-01",
        "is_writable": True,
        "is_available": True,
        **changes,
    }


def document(*elements: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "version": 3,
            "timestamp": "2025-01-01T00:00:00Z",
            "count": len(elements),
            "storage_elements": list(elements),
        }
    ).encode()


def parsed(**changes: Any) -> NodeRecord:
    (record,) = artstore.parse_document(document(admin_se(**changes)))
    return record


def test_a_storage_element_becomes_a_node_record() -> None:
    record = parsed()
    assert record.url == "http://se-local-01:8010"
    assert (record.mode, record.status, record.priority) == ("rw", "ok", 5)
    assert (record.capacity_total, record.capacity_used, record.capacity_available) == (
        1000,
        250,
        750,
    )
    assert record.writable and not record.draining


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("online", "ok"),
        ("ONLINE", "ok"),
        ("healthy", "ok"),
        ("offline", "down"),
        ("maintenance", "down"),
        ("degraded", "down"),
    ],
)
def test_the_status_decides_ok_or_down_when_availability_is_not_given(
    status: str, expected: str
) -> None:
    assert parsed(status=status, is_available=None).status == expected


def test_no_status_and_no_availability_reads_as_available() -> None:
    assert parsed(status=None, is_available=None).status == "ok"


@pytest.mark.parametrize(("available", "status"), [(True, "maintenance"), (False, "online")])
def test_is_available_overrules_the_status(available: bool, status: str) -> None:
    assert parsed(status=status, is_available=available).status == ("ok" if available else "down")


@pytest.mark.parametrize("mode", ["rw", "edit", "RW"])
def test_not_writable_turns_a_writable_mode_read_only(mode: str) -> None:
    record = parsed(mode=mode, is_writable=False)
    assert record.mode == "ro"
    assert not record.writable


@pytest.mark.parametrize("mode", ["ro", "ar"])
def test_not_writable_leaves_other_modes_as_they_are(mode: str) -> None:
    assert parsed(mode=mode, is_writable=False).mode == mode


def test_the_mode_is_read_in_any_case() -> None:
    assert parsed(mode="EDIT").mode == "edit"


def test_free_space_is_never_negative() -> None:
    assert parsed(capacity_bytes=100, used_bytes=150).capacity_available == 0


@pytest.mark.parametrize(("total", "used"), [(None, 10), (100, None), (None, None)])
def test_free_space_is_unknown_without_both_numbers(total: int | None, used: int | None) -> None:
    record = parsed(capacity_bytes=total, used_bytes=used)
    assert record.capacity_available is None
    assert (record.capacity_total, record.capacity_used) == (total, used)


def test_the_node_is_known_by_its_element_id_not_the_database_id() -> None:
    assert parsed().id == "se-local-01"


@pytest.mark.parametrize(("database_id", "name"), [(7, "7"), ("se-a", "se-a")])
def test_without_an_element_id_the_database_id_names_the_node(
    database_id: int | str, name: str
) -> None:
    assert parsed(id=database_id, element_id=None).id == name


def test_unknown_fields_are_ignored() -> None:
    raw = json.dumps(
        {
            "storage_elements": [admin_se(future_field={"x": 1}, tags=["a"])],
            "generated_by": "admin-module 2.0",
        }
    ).encode()
    assert artstore.parse_document(raw)[0].url == "http://se-local-01:8010"


def test_every_storage_element_is_listed_in_order() -> None:
    raw = document(admin_se(element_id="se-b", priority=2), admin_se(element_id="se-a"))
    assert [r.id for r in artstore.parse_document(raw)] == ["se-b", "se-a"]


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{}",  # no storage_elements
        b'{"storage_elements": {"id": 1}}',  # not a list
        json.dumps({"storage_elements": [{"id": 1, "mode": "rw"}]}).encode(),  # no api_url
        document(admin_se(capacity_bytes="lots")),
        b'{"storage_elements": [',  # cut short
    ],
)
def test_a_malformed_document_is_an_error(raw: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        artstore.parse_document(raw)


def in_redis(scenario: Callable[[fakeredis.FakeAsyncRedis], Awaitable[T]]) -> T:
    async def go() -> T:
        return await scenario(fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()))

    return run(go())


def test_artstore_load_nodes_reads_the_document_key() -> None:
    async def scenario(client: fakeredis.FakeAsyncRedis) -> list[NodeRecord]:
        await client.set(
            artstore.DOCUMENT_KEY,
            document(admin_se(element_id="se-1"), admin_se(element_id="se-2")),
        )
        return await artstore.load_nodes(client)

    assert [r.id for r in in_redis(scenario)] == ["se-1", "se-2"]


def test_artstore_load_nodes_reads_a_text_client_too() -> None:
    async def scenario() -> list[NodeRecord]:
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
        await client.set(artstore.DOCUMENT_KEY, document(admin_se()))
        return await artstore.load_nodes(client)

    assert [r.url for r in run(scenario())] == ["http://se-local-01:8010"]


def test_artstore_without_a_document_has_no_nodes() -> None:
    assert in_redis(artstore.load_nodes) == []


def test_artstore_a_malformed_document_raises_value_error() -> None:
    """ValueError is what the watcher treats as 'keep the last good view'."""

    async def scenario(client: fakeredis.FakeAsyncRedis) -> None:
        await client.set(artstore.DOCUMENT_KEY, b'{"storage_elements": "x"}')
        with pytest.raises(ValueError, match=artstore.DOCUMENT_KEY):
            await artstore.load_nodes(client)

    in_redis(scenario)


# -- the gateway's own node records: to_record -----------------------------------------


def announcement(node_id: str = "se-1", **changes: Any) -> NodeAnnouncement:
    fields: dict[str, Any] = {
        "id": node_id,
        "url": f"http://{node_id}:8010",
        "mode": "rw",
        "status": "ok",
        "priority": 4,
        "capacity_total": 1000,
        "capacity_used": 100,
        "capacity_available": 900,
        **changes,
    }
    return NodeAnnouncement(**fields)


def test_a_heartbeat_record_lives_until_its_ttl_lapses() -> None:
    a = announcement(heartbeat_at=100.0, ttl=15.0)
    record = to_record(a, draining=False, now=115.0)
    assert record is not None
    assert (record.last_seen, record.expires_at) == (100.0, 115.0)
    assert to_record(a, draining=False, now=115.001) is None


def test_an_operator_record_never_lapses() -> None:
    record = to_record(announcement(heartbeat_at=None, ttl=None), draining=False, now=1e12)
    assert record is not None
    assert (record.last_seen, record.expires_at) == (None, None)


def test_a_heartbeat_without_ttl_never_lapses() -> None:
    record = to_record(announcement(heartbeat_at=100.0, ttl=None), draining=False, now=1e12)
    assert record is not None and record.expires_at is None
    assert record.last_seen == 100.0


def test_to_record_carries_every_field_and_the_draining_flag() -> None:
    record = to_record(announcement(status="degraded", mode="edit"), draining=True, now=0.0)
    assert record == NodeRecord(
        id="se-1",
        url="http://se-1:8010",
        mode="edit",
        status="degraded",
        priority=4,
        capacity_total=1000,
        capacity_used=100,
        capacity_available=900,
        draining=True,
    )


# -- RedisNodeBook against fakeredis ----------------------------------------------------


class Book:
    """A RedisNodeBook, and a subscriber to its change channel."""

    def __init__(self) -> None:
        self.server = fakeredis.FakeServer()
        self.redis = fakeredis.FakeAsyncRedis(server=self.server)
        self.book = RedisNodeBook(self.redis)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)

    async def __aenter__(self) -> Book:
        await self.pubsub.subscribe(CHANNEL)
        # the subscription's confirmation: read (as None) so `changes` starts after it
        assert await self.pubsub.get_message(timeout=1.0) is None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pubsub.aclose()  # type: ignore[no-untyped-call]

    async def changes(self) -> list[dict[str, str]]:
        """Every change published so far."""
        seen = []
        while (message := await self.pubsub.get_message(timeout=0.05)) is not None:
            seen.append(json.loads(message["data"]))
        return seen


def with_book(scenario: Callable[[Book], Awaitable[T]]) -> T:
    async def go() -> T:
        async with Book() as book:
            return await scenario(book)

    return run(go())


def test_an_announced_node_is_read_back() -> None:
    async def scenario(b: Book) -> tuple[list[NodeAnnouncement], set[str]]:
        await b.book.announce(announcement("se-1"))
        return await b.book.announcements()

    assert with_book(scenario) == ([announcement("se-1")], set())


def test_announce_with_an_event_publishes_the_change() -> None:
    async def scenario(b: Book) -> list[dict[str, str]]:
        await b.book.announce(announcement("se-1"))  # a plain heartbeat: no event
        await b.book.announce(announcement("se-2"), event="registered")
        return await b.changes()

    assert with_book(scenario) == [{"event": "registered", "id": "se-2"}]


def test_a_heartbeat_record_expires_in_redis_with_its_ttl() -> None:
    async def scenario(b: Book) -> list[int]:
        await b.book.announce(announcement("beat", heartbeat_at=1.0, ttl=15.0))
        await b.book.announce(announcement("manual"))
        return [
            int(await b.redis.pttl(NODE_KEY.format("beat"))),
            int(await b.redis.pttl(NODE_KEY.format("manual"))),
        ]

    beat, manual = with_book(scenario)
    assert 14_000 < beat <= 15_000
    assert manual == -1  # no expiry


def test_ids_whose_record_expired_are_pruned() -> None:
    async def scenario(b: Book) -> list[object]:
        await b.book.announce(announcement("se-1", heartbeat_at=1.0, ttl=0.001))
        await b.book.announce(announcement("se-2"))
        await asyncio.sleep(0.01)  # se-1's record has expired in Redis
        found, _ = await b.book.announcements()
        return [[a.id for a in found], sorted(await b.redis.smembers(NODES_INDEX))]

    assert with_book(scenario) == [["se-2"], [b"se-2"]]


def test_a_broken_record_is_skipped_and_the_others_are_read() -> None:
    async def scenario(b: Book) -> list[object]:
        await b.book.announce(announcement("se-1"))
        await b.book.announce(announcement("se-3"))
        await b.redis.set(NODE_KEY.format("se-2"), b'{"id": "se-2"}')  # no url, no mode
        await b.redis.sadd(NODES_INDEX, "se-2")
        found, _ = await b.book.announcements()
        return [[a.id for a in found], sorted(await b.redis.smembers(NODES_INDEX))]

    # skipped, but not pruned: its owner may fix it with the next heartbeat
    assert with_book(scenario) == [["se-1", "se-3"], [b"se-1", b"se-2", b"se-3"]]


def test_remove_forgets_the_node_and_says_so() -> None:
    async def scenario(b: Book) -> list[object]:
        await b.book.announce(announcement("se-1"))
        await b.book.set_draining("se-1", True)
        removed = await b.book.remove("se-1")
        again = await b.book.remove("se-1")
        return [
            removed,
            again,
            await b.book.announcements(),
            await b.redis.exists(NODE_KEY.format("se-1")),
            [c for c in await b.changes() if c["event"] == "deregistered"],
        ]

    assert with_book(scenario) == [
        True,
        False,  # nothing was there the second time
        ([], set()),  # gone from the index and the draining set too
        0,
        [{"event": "deregistered", "id": "se-1"}] * 2,
    ]


def test_set_draining_marks_and_unmarks_and_publishes() -> None:
    async def scenario(b: Book) -> list[object]:
        await b.book.announce(announcement("se-1"))
        await b.book.set_draining("se-1", True)
        marked = (await b.book.announcements())[1]
        await b.book.set_draining("se-1", False)
        unmarked = (await b.book.announcements())[1]
        return [marked, unmarked, await b.changes()]

    assert with_book(scenario) == [
        {"se-1"},
        set(),
        [{"event": "draining", "id": "se-1"}, {"event": "undrained", "id": "se-1"}],
    ]


def test_no_nodes_reads_as_empty() -> None:
    async def scenario(b: Book) -> tuple[list[NodeAnnouncement], set[str]]:
        await b.redis.sadd(DRAINING, "se-9")
        return await b.book.announcements()

    assert with_book(scenario) == ([], {"se-9"})


def test_redis_load_nodes_marks_draining_nodes_and_drops_lapsed_heartbeats() -> None:
    async def scenario(client: fakeredis.FakeAsyncRedis) -> list[tuple[str, bool]]:
        book = RedisNodeBook(client)
        await book.announce(announcement("se-1"))
        await book.announce(announcement("se-2"))
        # lapsed by its own clock, though Redis still holds it (the SE's TTL is longer)
        await client.set(
            NODE_KEY.format("se-3"),
            msgspec.json.encode(announcement("se-3", heartbeat_at=1.0, ttl=1.0)),
        )
        await client.sadd(NODES_INDEX, "se-3")
        await book.set_draining("se-2", True)
        return [(r.id, r.draining) for r in await redis_registry.load_nodes(client)]

    assert in_redis(scenario) == [("se-1", False), ("se-2", True)]


# -- the static list -----------------------------------------------------------------


def test_the_static_registry_lists_the_configured_nodes() -> None:
    registry = StaticRegistry(
        [
            StorageElementConfig(id="a", url="http://a:8010", mode="edit", priority=1),
            StorageElementConfig(id="b", url="http://b:8010"),
        ]
    )

    async def lifecycle() -> list[NodeRecord]:
        await registry.start()
        nodes = registry.nodes()
        await registry.stop()
        return nodes

    assert run(lifecycle()) == [
        NodeRecord(id="a", url="http://a:8010", mode="edit", priority=1),
        NodeRecord(id="b", url="http://b:8010", mode="rw", priority=100),
    ]
    assert not registry.is_stale()
    assert all(n.status == "unknown" for n in registry.nodes())  # until probed

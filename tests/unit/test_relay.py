"""Relay: chunks reach the reader in order, replay works while they are held, and the
producer never runs more than one chunk ahead of a live reader."""

from __future__ import annotations

import asyncio

import pytest

from ingester_gateway.pipeline.relay import NotReplayable, Relay
from tests.kit import run


async def read_all(relay: Relay) -> list[bytes]:
    return [chunk async for chunk in relay.chunks()]


def test_a_reader_gets_every_chunk_then_the_trailer_is_separate() -> None:
    async def go() -> tuple[list[bytes], bytes]:
        relay = Relay()
        reader = asyncio.ensure_future(read_all(relay))
        for chunk in (b"a", b"b", b"c"):
            await relay.put(chunk)
        relay.finish(b"END")
        return await reader, relay.trailer

    assert run(go()) == ([b"a", b"b", b"c"], b"END")


def test_the_producer_waits_while_the_reader_is_more_than_one_chunk_behind() -> None:
    async def go() -> list[int]:
        relay = Relay()
        await relay.put(b"1")  # one chunk ahead is allowed
        second = asyncio.ensure_future(relay.put(b"2"))
        await asyncio.sleep(0.01)
        waited = [int(second.done())]
        chunks = relay.chunks()
        assert await anext(chunks) == b"1"
        await asyncio.sleep(0.01)
        waited.append(int(second.done()))
        return waited

    assert run(go()) == [0, 1]


def test_a_second_reader_replays_from_the_start_while_everything_is_held() -> None:
    async def go() -> list[bytes]:
        relay = Relay(replay_limit=100)
        first = relay.chunks()
        producer = asyncio.ensure_future(_produce(relay, [b"x" * 10, b"y" * 10, b"z" * 10]))
        assert await anext(first) == b"x" * 10  # an attempt that fails after one chunk
        await asyncio.sleep(0)
        replay = asyncio.ensure_future(read_all(relay))
        await producer
        relay.finish(b"")
        return await replay

    assert run(go()) == [b"x" * 10, b"y" * 10, b"z" * 10]


def test_past_the_replay_limit_consumed_chunks_are_dropped_and_replay_is_refused() -> None:
    async def go() -> None:
        relay = Relay(replay_limit=15)
        reader = asyncio.ensure_future(read_all(relay))
        await _produce(relay, [b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 10])
        relay.finish(b"")
        assert await reader == [b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 10]
        assert not relay.replayable
        with pytest.raises(NotReplayable):
            await anext(relay.chunks())

    run(go())


async def _produce(relay: Relay, chunks: list[bytes]) -> None:
    for chunk in chunks:
        await relay.put(chunk)


def test_once_replay_is_lost_nothing_consumed_is_kept_and_the_limit_follows_the_load() -> None:
    limit = [1000]

    async def go() -> list[int]:
        relay = Relay(replay_limit=lambda: limit[0])
        reader = asyncio.ensure_future(read_all(relay))
        held = []
        for i in range(40):
            if i == 10:
                limit[0] = 100  # more uploads arrived: the share shrinks
            await relay.put(bytes(50))
            held.append(relay.held_bytes)
        relay.finish(b"")
        await reader
        return held

    held = run(go())
    assert max(held[:10]) <= 500  # within the first limit everything is held
    assert max(held[12:]) <= 100  # past it: about two chunks, not the old limit

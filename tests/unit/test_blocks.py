"""BlockReader: body pieces into blocks of at least the block size, nothing lost or split."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ingester_gateway.pipeline.blocks import BlockReader
from tests.kit import collect, pieces_of, run


@given(
    pieces=st.lists(st.binary(min_size=1, max_size=300), max_size=40),
    block_size=st.integers(1, 1000),
)
def test_blocks_preserve_the_bytes_and_are_cut_as_soon_as_they_are_full(
    pieces: list[bytes], block_size: int
) -> None:
    blocks = run(collect(BlockReader(pieces_of(pieces), block_size)))

    assert b"".join(blocks) == b"".join(pieces)
    assert all(len(block) >= block_size for block in blocks[:-1])
    # Each block is whole consecutive pieces, and is yielded with the piece that filled it.
    remaining = iter(pieces)
    for block in blocks:
        taken: list[bytes] = []
        while len(b"".join(taken)) < len(block):
            taken.append(next(remaining))
        assert b"".join(taken) == block
        assert len(block) - len(taken[-1]) < block_size
    assert next(remaining, None) is None


def test_a_piece_that_fills_a_block_alone_is_passed_on_uncopied() -> None:
    big = b"x" * 4096
    [block] = run(collect(BlockReader(pieces_of([big]), 1024)))
    assert block is big


def test_no_pieces_give_no_blocks() -> None:
    assert run(collect(BlockReader(pieces_of([]), 1024))) == []


def test_small_pieces_are_joined_into_one_block() -> None:
    blocks = run(collect(BlockReader(pieces_of([b"ab", b"c", b"def", b"g"]), 4)))
    assert blocks == [b"abcdef", b"g"]


def test_the_reader_knows_when_the_block_it_gave_was_the_last() -> None:
    async def go() -> list[tuple[bytes | None, bool]]:
        reader = BlockReader(pieces_of([b"abc", b"def", b"g"]), 4)
        seen = []
        for _ in range(3):
            block = await reader.read()
            seen.append((block, reader.ended))
        return seen

    assert run(go()) == [(b"abcdef", False), (b"g", True), (None, True)]


def test_a_short_first_block_is_cut_early_then_the_block_size_applies() -> None:
    reader = BlockReader(pieces_of([b"a"] * 10), 4, first_block_size=2)
    assert run(collect(reader)) == [b"aa", b"aaaa", b"aaaa"]


def test_the_block_size_is_read_afresh_for_each_block() -> None:
    sizes = iter([2, 5, 1, 1])
    reader = BlockReader(pieces_of([b"x"] * 8), lambda: next(sizes))
    assert run(collect(reader)) == [b"xx", b"xxxxx", b"x"]

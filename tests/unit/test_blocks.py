"""coalesce: body pieces into blocks of at least the block size, nothing lost or split."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ingester_gateway.pipeline.blocks import coalesce
from tests.unit.support import collect, pieces_of, run


@given(
    pieces=st.lists(st.binary(min_size=1, max_size=300), max_size=40),
    block_size=st.integers(1, 1000),
)
def test_blocks_preserve_the_bytes_and_are_cut_as_soon_as_they_are_full(
    pieces: list[bytes], block_size: int
) -> None:
    blocks = run(collect(coalesce(pieces_of(pieces), block_size)))

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
    [block] = run(collect(coalesce(pieces_of([big]), 1024)))
    assert block is big


def test_no_pieces_give_no_blocks() -> None:
    assert run(collect(coalesce(pieces_of([]), 1024))) == []


def test_small_pieces_are_joined_into_one_block() -> None:
    blocks = run(collect(coalesce(pieces_of([b"ab", b"c", b"def", b"g"]), 4)))
    assert blocks == [b"abcdef", b"g"]

"""One request's data appended to a staged upload, driven by scripted bodies: what is
kept when the body completes, is cut, is taken over by another request, or does not
match its checksum; and the checkpoints of a long body."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ingester_gateway import errors
from ingester_gateway.errors import ApiError
from ingester_gateway.pipeline.body import ClientDisconnected
from ingester_gateway.resumable.appender import CHECKPOINT_BYTES, Appended, Appender
from ingester_gateway.resumable.files import FileStagingArea
from ingester_gateway.resumable.headers import Checksum
from ingester_gateway.resumable.locks import LocalLocker
from tests.kit import FakeClock, run

ID = "0123456789abcdef0123456789abcdef"
START = 3  # bytes already durable before this request


async def body_of(
    pieces: Iterable[bytes], end: BaseException | asyncio.Event | None = None
) -> AsyncIterator[bytes]:
    for piece in pieces:
        await asyncio.sleep(0)
        yield piece
    if isinstance(end, asyncio.Event):
        await end.wait()  # a client that sends nothing more
    elif end is not None:
        raise end


def append(
    tmp_path: Path,
    pieces: Iterable[bytes],
    end: BaseException | None = None,
    checksum: Checksum | None = None,
    release_after: int | None = None,
    clock: FakeClock | None = None,
) -> tuple[Appended | ApiError, list[tuple[int, bool]], bytes]:
    """Run an appender over a staging file holding START bytes; what it ended with, the
    offsets it saved, and the staging file's bytes afterwards."""
    saved: list[tuple[int, bool]] = []

    async def scenario() -> Appended | ApiError:
        with ThreadPoolExecutor(2) as executor:
            staging = FileStagingArea(tmp_path, executor)
            staging.open()
            staging.path(ID).write_bytes(b"old")
            digests = {checksum.algorithm: checksum.new()} if checksum else {}
            writer = await staging.writer(ID, START, list(digests.values()))
            lock = await LocalLocker().acquire(ID, lambda: None, 0)

            async def save(end_at: int, last: bool) -> bool:
                saved.append((end_at, last))
                return True

            appender = Appender(writer, START, lock, save, clock or FakeClock())
            stall = asyncio.Event()
            body = body_of(pieces, stall if release_after is not None else end)
            if release_after is not None:
                asyncio.get_running_loop().call_later(0.05, appender.release)
            try:
                return await appender.run(body, checksum, digests)
            except ApiError as exc:
                return exc
            finally:
                await writer.close()

    outcome = run(scenario())
    return outcome, saved, (tmp_path / "staging" / ID).read_bytes()


def sha256_of(data: bytes) -> Checksum:
    return Checksum("sha256", hashlib.sha256(data).digest(), "Upload-Checksum")


def test_a_whole_body_is_saved_once_it_is_on_disk(tmp_path: Path) -> None:
    outcome, saved, staged = append(tmp_path, [b"abc", b"de"])
    assert isinstance(outcome, Appended) and outcome.ending == "complete"
    assert saved == [(START + 5, True)] and staged == b"oldabcde"


def test_a_cut_body_keeps_every_byte_that_arrived(tmp_path: Path) -> None:
    outcome, saved, staged = append(tmp_path, [b"abc", b"de"], end=ClientDisconnected())
    assert isinstance(outcome, Appended) and outcome.ending == "cut"
    assert saved == [(START + 5, False)] and staged == b"oldabcde"


def test_a_cut_body_with_a_checksum_keeps_nothing(tmp_path: Path) -> None:
    checksum = sha256_of(b"abcdefgh")
    outcome, saved, staged = append(tmp_path, [b"abc", b"de"], ClientDisconnected(), checksum)
    assert isinstance(outcome, Appended) and outcome.ending == "cut"
    assert saved == [] and staged == b"old"


def test_a_checksum_mismatch_is_460_and_drops_the_request(tmp_path: Path) -> None:
    outcome, saved, staged = append(tmp_path, [b"abc"], checksum=sha256_of(b"xyz"))
    assert isinstance(outcome, ApiError) and outcome.status == 460
    assert saved == [] and staged == b"old"
    outcome, saved, staged = append(tmp_path, [b"abc"], checksum=sha256_of(b"abc"))
    assert isinstance(outcome, Appended) and saved == [(START + 3, True)]


def test_another_request_takes_over_a_client_that_went_quiet(tmp_path: Path) -> None:
    outcome, saved, staged = append(tmp_path, [b"abc", b"de"], release_after=0)
    assert isinstance(outcome, Appended) and outcome.ending == "interrupted"
    assert saved == [(START + 5, False)] and staged == b"oldabcde"


def test_a_slow_client_is_a_408_with_its_bytes_kept(tmp_path: Path) -> None:
    slow = errors.REQUEST_TIMEOUT("no data")
    outcome, saved, _ = append(tmp_path, [b"abc"], end=slow)
    assert isinstance(outcome, Appended) and outcome.ending == "cut" and outcome.error is slow
    assert saved == [(START + 3, False)]


def test_a_draining_gateway_keeps_the_bytes_and_answers_503(tmp_path: Path) -> None:
    stopping = errors.SHUTTING_DOWN("the gateway is shutting down")
    outcome, saved, staged = append(tmp_path, [b"abc", b"de"], end=stopping)
    assert isinstance(outcome, Appended) and outcome.ending == "cut"
    assert outcome.error is stopping
    assert saved == [(START + 5, False)] and staged == b"oldabcde"


def test_a_body_too_long_keeps_nothing(tmp_path: Path) -> None:
    too_long = errors.PAYLOAD_TOO_LARGE("big")
    outcome, saved, staged = append(tmp_path, [b"abc"], end=too_long)
    assert outcome is too_long and saved == [] and staged == b"old"


def test_a_long_body_saves_checkpoints_along_the_way(tmp_path: Path) -> None:
    clock = FakeClock()
    piece = b"x" * (CHECKPOINT_BYTES // 2)

    def ticking(pieces: list[bytes]) -> Iterable[bytes]:
        for item in pieces:
            clock.advance(0.6)  # each piece takes a while to come
            yield item

    outcome, saved, _ = append(tmp_path, ticking([piece] * 5), clock=clock)  # type: ignore[arg-type]
    assert isinstance(outcome, Appended) and outcome.ending == "complete"
    assert saved[-1] == (START + 5 * len(piece), True)
    checkpoints = [end for end, last in saved if not last]
    # Durable ends of whole pieces, short of the end (the last save is the body's).
    assert checkpoints == sorted(checkpoints)
    assert checkpoints and all(
        (end - START) % len(piece) == 0 and START + CHECKPOINT_BYTES <= end < saved[-1][0]
        for end in checkpoints
    )


@pytest.mark.parametrize("size", [0, 1])
def test_nothing_sent_saves_the_offset_as_it_was(tmp_path: Path, size: int) -> None:
    outcome, saved, _ = append(tmp_path, [b"z" * size])
    assert isinstance(outcome, Appended) and saved == [(START + size, True)]

"""The local journal: what it holds survives restarts and crashes, a living owner's
file is never taken, a torn last line costs only itself."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from ingester_gateway.admin.wire import FileEvent
from ingester_gateway.outbox import journal as journal_module
from ingester_gateway.outbox.jobs import AnnounceFile, DeleteFile, Job
from ingester_gateway.outbox.journal import Done, Journal
from tests.kit import run


def compensation(entry_id: str) -> DeleteFile:
    return DeleteFile(
        id=entry_id,
        node_id="se-1",
        node_url="http://se-1:8010",
        file_id=f"file-{entry_id}",
        reason="checksum_mismatch",
        created_at=1000.0,
    )


def event(entry_id: str) -> AnnounceFile:
    return AnnounceFile(
        id=entry_id,
        event=FileEvent(
            event_type="file:created",
            timestamp="2025-01-01T00:00:00Z",
            file_id=f"file-{entry_id}",
            storage_element_id="se-1",
            metadata='{"file_id": "file-' + entry_id + '"}',
        ),
        created_at=1000.0,
    )


def opened(directory: Path | str) -> Journal:
    journal = Journal(directory)
    journal.open()
    return journal


Opener = Callable[[Path], Journal]


@pytest.fixture
def open_journal() -> Iterator[Opener]:
    """`opened`, and every journal it opened is closed after the test."""
    made: list[Journal] = []

    def opener(directory: Path) -> Journal:
        made.append(opened(directory))
        return made[-1]

    yield opener
    for journal in made:
        journal.close()


def ids(journal: Journal) -> list[str]:
    return sorted(entry.id for entry in journal.pending())


def files(directory: Path) -> list[Path]:
    return sorted(directory.glob("journal-*.jsonl"))


def record(journal: Journal, *entries: Job) -> None:
    async def go() -> None:
        for entry in entries:
            await journal.append(entry)

    run(go())


def finish(journal: Journal, *entry_ids: str) -> None:
    async def go() -> None:
        for entry_id in entry_ids:
            await journal.done(entry_id)

    run(go())


def line(entry: Job | Done) -> bytes:
    return msgspec.json.encode(entry) + b"\n"


# -- durability across restarts ----------------------------------------------------


def test_pending_entries_survive_a_restart_and_done_ones_do_not(
    tmp_path: Path, open_journal: Opener
) -> None:
    first = open_journal(tmp_path)
    record(first, compensation("a"), event("b"), compensation("c"))
    finish(first, "a")
    first.close()

    second = open_journal(tmp_path)
    assert ids(second) == ["b", "c"]
    assert second.pending() == [event("b"), compensation("c")]  # whole entries, not just ids


def test_an_adopted_entry_survives_the_next_restart_too(
    tmp_path: Path, open_journal: Opener
) -> None:
    """The adopter copies what it takes into its own file before removing the old one."""
    first = open_journal(tmp_path)
    record(first, compensation("a"))
    first.close()
    second = open_journal(tmp_path)
    assert len(files(tmp_path)) == 1  # the dead owner's file is gone, ours holds "a"
    second.close()
    assert ids(open_journal(tmp_path)) == ["a"]


def test_an_entry_done_after_adoption_stays_done(tmp_path: Path, open_journal: Opener) -> None:
    first = open_journal(tmp_path)
    record(first, compensation("a"), compensation("b"))
    first.close()
    second = open_journal(tmp_path)
    finish(second, "a")
    second.close()
    assert ids(open_journal(tmp_path)) == ["b"]


def test_done_for_an_unknown_id_writes_nothing(tmp_path: Path, open_journal: Opener) -> None:
    journal = open_journal(tmp_path)
    record(journal, compensation("a"))
    (path,) = files(tmp_path)
    size = path.stat().st_size
    finish(journal, "never-added", "never-added")
    assert path.stat().st_size == size
    assert ids(journal) == ["a"]


# -- ownership: living owners keep their files --------------------------------------


def test_a_living_owners_file_is_not_adopted(tmp_path: Path, open_journal: Opener) -> None:
    owner = open_journal(tmp_path)
    record(owner, compensation("a"))
    other = open_journal(tmp_path)
    assert other.pending() == []
    assert ids(owner) == ["a"]
    assert len(files(tmp_path)) == 2  # each its own file, both kept


def test_a_file_is_adopted_once_its_owner_has_closed(tmp_path: Path, open_journal: Opener) -> None:
    owner = open_journal(tmp_path)
    record(owner, compensation("a"))
    bystander = open_journal(tmp_path)  # started while the owner lived: adopts nothing
    owner.close()
    assert bystander.pending() == []
    later = open_journal(tmp_path)
    assert ids(later) == ["a"]


def test_a_file_written_by_a_dead_process_is_adopted(tmp_path: Path, open_journal: Opener) -> None:
    """A crashed process leaves its file unlocked: nobody holds the lock any more."""
    dead = tmp_path / "journal-oldhost-4242-deadbeef.jsonl"
    dead.write_bytes(line(compensation("a")) + line(event("b")) + line(Done("a")))
    journal = open_journal(tmp_path)
    assert journal.pending() == [event("b")]
    assert not dead.exists()


def test_the_on_disk_format_of_an_older_process_is_read(
    tmp_path: Path, open_journal: Opener
) -> None:
    """Files left by a previous release must still be adoptable after an upgrade."""
    (tmp_path / "journal-h-1-00000000.jsonl").write_text(
        '{"type":"compensation","id":"x","node_id":"se-1","node_url":"http://se-1:8010",'
        '"file_id":"f1","reason":"aborted","created_at":5.0}\n'
    )
    (entry,) = open_journal(tmp_path).pending()
    assert entry == DeleteFile(
        id="x",
        node_id="se-1",
        node_url="http://se-1:8010",
        file_id="f1",
        reason="aborted",
        created_at=5.0,
    )


def test_a_killed_process_leaves_its_entries_to_the_next_one(
    tmp_path: Path, open_journal: Opener
) -> None:
    """A real second process: its lock holds while it lives and goes when it is killed."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import asyncio, sys
                from tests.unit.test_journal import compensation, opened
                journal = opened({str(tmp_path)!r})
                asyncio.run(journal.append(compensation("from-child")))
                print("ready", flush=True)
                sys.stdin.read()  # live until killed
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        alive = open_journal(tmp_path)
        assert alive.pending() == []  # the child is alive: its file is not ours
        alive.close()
    finally:
        child.kill()
        child.wait(timeout=10)
    assert ids(open_journal(tmp_path)) == ["from-child"]


# -- torn writes ---------------------------------------------------------------------


def test_a_torn_last_line_is_ignored_and_the_entries_before_it_survive(
    tmp_path: Path, open_journal: Opener
) -> None:
    torn = line(compensation("c"))[:40]  # a crash in the middle of a write
    (tmp_path / "journal-h-1-00000001.jsonl").write_bytes(
        line(compensation("a")) + line(event("b")) + torn
    )
    journal = open_journal(tmp_path)
    assert ids(journal) == ["a", "b"]
    record(journal, compensation("d"))  # and the journal goes on working
    journal.close()
    assert ids(open_journal(tmp_path)) == ["a", "b", "d"]


def test_a_torn_done_leaves_its_entry_pending(tmp_path: Path, open_journal: Opener) -> None:
    """Better to do a delete twice than to forget one."""
    (tmp_path / "journal-h-1-00000002.jsonl").write_bytes(
        line(compensation("a")) + line(Done("a"))[:-5]
    )
    assert ids(open_journal(tmp_path)) == ["a"]


# -- compaction and close ------------------------------------------------------------


def test_the_file_is_compacted_once_everything_is_done_and_it_is_big(
    tmp_path: Path, open_journal: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "COMPACT_AT_BYTES", 500)
    journal = open_journal(tmp_path)
    record(journal, *(compensation(str(i)) for i in range(5)))
    (path,) = files(tmp_path)
    finish(journal, "0", "1", "2", "3")
    assert path.stat().st_size > 500  # one still pending: nothing may be dropped yet
    finish(journal, "4")
    assert path.stat().st_size == 0
    record(journal, compensation("5"))  # appends go on after the truncation
    journal.close()
    assert ids(open_journal(tmp_path)) == ["5"]


def test_a_small_file_is_not_compacted(tmp_path: Path, open_journal: Opener) -> None:
    journal = open_journal(tmp_path)
    record(journal, compensation("a"))
    finish(journal, "a")
    (path,) = files(tmp_path)
    assert path.stat().st_size > 0  # below COMPACT_AT_BYTES: a rewrite costs more


def test_close_removes_a_file_with_nothing_pending(tmp_path: Path, open_journal: Opener) -> None:
    journal = open_journal(tmp_path)
    record(journal, compensation("a"))
    finish(journal, "a")
    journal.close()
    assert files(tmp_path) == []


def test_close_keeps_a_file_with_pending_entries(tmp_path: Path, open_journal: Opener) -> None:
    journal = open_journal(tmp_path)
    record(journal, compensation("a"))
    journal.close()
    (path,) = files(tmp_path)
    assert b'"id":"a"' in path.read_bytes()


def test_close_twice_is_harmless(tmp_path: Path, open_journal: Opener) -> None:
    journal = open_journal(tmp_path)
    record(journal, compensation("a"))
    journal.close()
    journal.close()
    assert len(files(tmp_path)) == 1


def test_the_journal_file_is_private_to_the_gateway(tmp_path: Path, open_journal: Opener) -> None:
    """It names files and nodes to delete: no other local user reads it."""
    open_journal(tmp_path)
    (path,) = files(tmp_path)
    assert path.stat().st_mode & 0o077 == 0


def test_open_creates_the_directory(tmp_path: Path, open_journal: Opener) -> None:
    journal = open_journal(tmp_path / "state" / "journal")
    record(journal, compensation("a"))
    assert len(files(tmp_path / "state" / "journal")) == 1
    assert os.access(tmp_path / "state" / "journal", os.W_OK)

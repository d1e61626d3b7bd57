"""ProgressBook: owner-only reads, finished entries expire, the book stays bounded."""

from __future__ import annotations

from pathlib import Path

from ingester_gateway.models import UploadProgress
from ingester_gateway.upload.progress import ProgressBook
from tests.kit import FakeClock


def progress(upload_id: str) -> UploadProgress:
    return UploadProgress(upload_id=upload_id, state="receiving", filename="f.bin")


def test_only_the_owner_sees_an_entry() -> None:
    book = ProgressBook()
    entry = progress("u1")
    assert book.open("u1", "alice", entry)
    assert book.get("u1", "alice") is entry
    assert book.get("u1", "bob") is None
    assert book.get("u2", "alice") is None


def test_an_owners_running_id_cannot_be_opened_again_by_them() -> None:
    book = ProgressBook()
    first = progress("u1")
    assert book.open("u1", "alice", first)
    assert not book.open("u1", "alice", progress("u1"))
    assert book.get("u1", "alice") is first


def test_an_id_is_scoped_to_its_owner_another_user_neither_blocks_nor_sees_it() -> None:
    book = ProgressBook()
    alices, bobs = progress("u1"), progress("u1")
    assert book.open("u1", "alice", alices)
    # Bob's upload of the same id is his own entry: no refusal that would tell him
    # Alice's exists, and no way for him to take her id before she uses it.
    assert book.open("u1", "bob", bobs)
    assert book.get("u1", "alice") is alices
    assert book.get("u1", "bob") is bobs
    book.close("u1", "bob")
    assert book.get("u1", "alice") is alices  # closing his leaves hers running
    assert not book.open("u1", "alice", progress("u1"))


def test_an_owner_may_reuse_the_id_of_a_finished_upload() -> None:
    book = ProgressBook()
    assert book.open("nightly-0042", "alice", progress("nightly-0042"))
    book.close("nightly-0042", "alice")
    again = progress("nightly-0042")
    assert book.open("nightly-0042", "alice", again)
    assert book.get("nightly-0042", "alice") is again


def test_a_running_upload_is_kept_past_the_retention() -> None:
    clock = FakeClock()
    book = ProgressBook(retention=10.0, clock=clock)
    book.open("u1", "alice", progress("u1"))
    clock.advance(1000)
    book.open("u2", "alice", progress("u2"))
    assert book.get("u1", "alice") is not None


def test_a_finished_entry_is_kept_for_the_retention_then_expires() -> None:
    clock = FakeClock()
    book = ProgressBook(retention=10.0, clock=clock)
    book.open("u1", "alice", progress("u1"))
    book.close("u1", "alice")
    clock.advance(9)
    assert book.get("u1", "alice") is not None
    clock.advance(1)
    assert book.get("u1", "alice") is None
    assert book.open("u1", "alice", progress("u1"))  # the id is free again


def test_finished_entries_expire_behind_a_long_running_upload() -> None:
    clock = FakeClock()
    book = ProgressBook(retention=10.0, clock=clock)
    book.open("long", "alice", progress("long"))
    book.open("short", "alice", progress("short"))
    book.close("short", "alice")
    clock.advance(11)
    assert book.get("short", "alice") is None
    assert book.get("long", "alice") is not None


def test_the_book_is_bounded() -> None:
    book = ProgressBook(max_entries=3)
    for i in range(10):
        assert book.open(f"u{i}", "alice", progress(f"u{i}"))
        book.close(f"u{i}", "alice")
    visible = [i for i in range(10) if book.get(f"u{i}", "alice") is not None]
    assert visible == [7, 8, 9]


def test_a_full_book_drops_finished_entries_before_running_ones() -> None:
    book = ProgressBook(max_entries=3)
    book.open("running", "alice", progress("running"))
    book.open("done-1", "alice", progress("done-1"))
    book.close("done-1", "alice")
    book.open("done-2", "alice", progress("done-2"))
    book.close("done-2", "alice")
    book.open("new", "alice", progress("new"))
    assert book.get("running", "alice") is not None
    assert book.get("done-1", "alice") is None
    assert book.get("done-2", "alice") is not None


def test_closing_an_unknown_id_does_not_shorten_a_later_upload_with_that_id() -> None:
    clock = FakeClock()
    book = ProgressBook(retention=10.0, clock=clock)
    book.close("u1", "alice")  # e.g. an upload refused before it was opened
    book.open("u1", "alice", progress("u1"))
    clock.advance(100)
    book.open("u2", "alice", progress("u2"))
    assert book.get("u1", "alice") is not None  # still running: kept


def test_an_entry_evicted_while_running_leaves_no_finish_time_behind() -> None:
    clock = FakeClock()
    book = ProgressBook(retention=10.0, max_entries=2, clock=clock)
    for i in range(3):  # u0 is evicted while still running
        book.open(f"u{i}", "alice", progress(f"u{i}"))
    book.close("u0", "alice")  # it finishes later
    book.close("u1", "alice")
    book.close("u2", "alice")
    assert book.open("u0", "bob", progress("u0"))  # the id is reused by a new upload
    clock.advance(100)
    book.open("u3", "bob", progress("u3"))
    assert book.get("u0", "bob") is not None  # the new upload runs: kept


def test_with_several_workers_only_uploads_someone_may_poll_are_mirrored(tmp_path: Path) -> None:
    """A quick anonymous upload's 201 says it all: no file. One the client named, or
    one that ran long enough to be mirrored, keeps its final state for the siblings."""
    shared = tmp_path / "progress"
    book = ProgressBook(shared_dir=shared)
    sibling = ProgressBook(shared_dir=shared)

    def entry(upload_id: str) -> UploadProgress:
        return UploadProgress(upload_id=upload_id, state="receiving", filename="f")

    book.open("anonymous-quick", "alice", entry("anonymous-quick"))
    book.open("client-named-01", "alice", entry("client-named-01"), named=True)
    book.open("anonymous-long", "alice", entry("anonymous-long"))
    book.mirror_running()  # the half-second snapshot: all three are running
    book.close("client-named-01", "alice")
    book.close("anonymous-long", "alice")
    book.open("anonymous-late", "alice", entry("anonymous-late"))
    book.close("anonymous-late", "alice")  # finished before any snapshot saw it

    assert sibling.get("client-named-01", "alice") is not None
    assert sibling.get("anonymous-long", "alice") is not None
    assert sibling.get("anonymous-late", "alice") is None
    assert sibling.get("client-named-01", "mallory") is None

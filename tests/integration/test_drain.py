"""SIGTERM with uploads in flight (issue 11): readiness false at once, new uploads 503,
streamed uploads given the grace, the rest interrupted with their compensation done or
owed, an exit within grace + 5 s, and nothing stored that no client was told of once the
next process has worked off what was owed."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.kit import Answer, DevKeys, MiB, assert_error_envelope, eventually, put
from tests.stack import Stack, own_stack, paced_put

GRACE = 2.0


class ReadyWatch(threading.Thread):
    """Polls /health/ready until stopped: (time sent, answered 200) for each poll."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url + "/health/ready"
        self.polls: list[tuple[float, bool]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=2) as resp:
                    ok = resp.status == 200
            except urllib.error.HTTPError as exc:
                ok = exc.code == 200
            except OSError:  # the listener is closed: not ready either
                ok = False
            self.polls.append((sent, ok))
            time.sleep(0.01)


def _upload(stack: Stack, index: int, size: int, chunk: int, started: threading.Barrier) -> Answer:
    data = os.urandom(size)
    first = True

    def between(sent: int) -> None:
        nonlocal first
        if first:
            first = False
            started.wait(30)

    return paced_put(
        stack.gw,
        f"/api/v1/files/drain-{index}.bin?compress=false",
        stack.keys.auth(f"drain-{index}"),  # users of their own: no fair-use limit reached
        data,
        chunk=chunk,
        pause=0.1,
        between=between,
    )


def test_sigterm_drains_uploads_and_loses_nothing(tmp_path: Path, keys: DevKeys) -> None:
    env = {"INGESTER_SHUTDOWN_GRACE": str(GRACE)}
    with own_stack(tmp_path, keys, env=env) as stack:
        stored_before = stack.stored_ids()
        # Mixed sizes and paces: ~1 s uploads that end within the grace, ~10 s ones
        # that cannot, and some in between.
        plans = [(MiB, 128 * 1024)] * 8 + [(3 * MiB, 256 * 1024)] * 6 + [(6 * MiB, 64 * 1024)] * 6
        started = threading.Barrier(len(plans) + 1)
        answers: dict[int, Answer] = {}
        refused_at: list[float] = []  # when each 503 was received

        def client(index: int, size: int, chunk: int) -> None:
            try:
                answers[index] = _upload(stack, index, size, chunk, started)
            except OSError as exc:  # recorded: every client must get an answer
                answers[index] = Answer(0, {}, repr(exc).encode())
            if answers[index].status == 503:
                refused_at.append(time.monotonic())

        threads = [
            threading.Thread(target=client, args=(i, size, chunk), daemon=True)
            for i, (size, chunk) in enumerate(plans)
        ]
        for thread in threads:
            thread.start()
        watch = ReadyWatch(stack.gw.url)
        watch.start()
        started.wait(30)  # every upload is under way
        signalled = time.monotonic()
        os.kill(stack.gw.pid, signal.SIGTERM)

        # A new upload after the signal is refused at once.
        told: set[str] = set()
        refused = eventually(
            lambda: _refused(stack, told), timeout=GRACE, what="a new upload refused while draining"
        )
        refused_at.append(time.monotonic())
        assert_error_envelope(refused, 503, "shutting_down")
        assert refused.headers.get("retry-after") == "1"

        assert stack.gw.process is not None
        stack.gw.process.wait(GRACE + 15)
        exited = time.monotonic() - signalled
        watch.stop.set()
        for thread in threads:
            thread.join(30)

        statuses = sorted(answer.status for answer in answers.values())
        assert len(answers) == len(plans)
        assert set(statuses) <= {201, 503}, [a.body[:200] for a in answers.values()]
        assert 201 in statuses and 503 in statuses, statuses
        for answer in answers.values():
            if answer.status == 503:
                assert_error_envelope(answer, 503, "shutting_down")
        assert exited <= GRACE + 5, f"exit took {exited:.1f} s"
        # Readiness turned false, and no probe sent after the first refusal was ready.
        first_refusal = min(refused_at)
        assert any(not ok for _, ok in watch.polls)
        assert not [sent for sent, ok in watch.polls if ok and sent > first_refusal]
        told |= {a.json()["file_id"] for a in answers.values() if a.status == 201}

        # What the drain owed (if anything) is worked off by the next process.
        stack.gw.start()
        eventually(
            lambda: set(stack.stored_ids()) - set(stored_before) == told or None,
            timeout=30,
            what="the SE holds exactly the files whose clients got 201",
        )
        assert stack.settled_partials() == []


def _refused(stack: Stack, told: set[str]) -> Answer | None:
    """A new upload: the answer if refused; a stored one (a worker not yet signalled)
    joins `told`."""
    answer = put(stack.gw, stack.keys.auth(), b"late" * 1000, "late.bin")
    if answer.status == 201:
        told.add(answer.json()["file_id"])
    return answer if answer.status == 503 else None


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_sigterm_skips_the_grace(tmp_path: Path, keys: DevKeys, workers: int) -> None:
    """Long uploads, a 60 s grace, two signals to the main process only (with 2
    workers: to uvicorn's supervisor, which must pass the second one on)."""
    env = {"INGESTER_SHUTDOWN_GRACE": "60", "INGESTER_WORKERS": str(workers)}
    with own_stack(tmp_path, keys, env=env) as stack:
        stored_before = stack.stored_ids()
        started = threading.Barrier(5)
        answers: list[Answer] = []

        def client(index: int) -> None:
            try:
                answers.append(_upload(stack, index, 8 * MiB, 32 * 1024, started))
            except OSError as exc:
                answers.append(Answer(0, {}, repr(exc).encode()))

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
        for thread in threads:
            thread.start()
        started.wait(30)
        signalled = time.monotonic()
        os.kill(stack.gw.pid, signal.SIGTERM)
        told: set[str] = set()
        eventually(lambda: _refused(stack, told), timeout=10, what="draining")
        os.kill(stack.gw.pid, signal.SIGTERM)
        assert stack.gw.process is not None
        stack.gw.process.wait(30)
        exited = time.monotonic() - signalled
        for thread in threads:
            thread.join(30)
        assert exited < 15, f"exit took {exited:.1f} s despite the second signal"
        assert len(answers) == 4
        for answer in answers:
            assert_error_envelope(answer, 503, "shutting_down")
        stack.gw.start()
        eventually(
            lambda: set(stack.stored_ids()) - set(stored_before) == told or None,
            timeout=30,
            what="the SE holds exactly the files whose clients got 201",
        )
        assert stack.settled_partials() == []

"""Graceful drain of one worker process on SIGTERM (tusd's behaviour, made better).

First signal: readiness turns false at once and new uploads are refused (503 +
Retry-After), while the listener stays open so the balancer's probes and retries get
an answer rather than a refused connection. Resumable uploads are interrupted at once
(their bytes are saved and the client resumes elsewhere); streamed uploads get
`grace` seconds to finish, then the rest are interrupted: each fails through its own
error path, so what was committed is compensated or durably owed. Only then is the
server told to exit (uvicorn closes the listener and idle connections, and the
lifespan shutdown hands background work over through Redis and the journal).

A second signal skips the grace: everything is interrupted now, still through the
uploads' own error paths. A third one is passed to the server as it is.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Protocol

from ingester_gateway import errors

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# After the interruptions, how long the uploads may take to fail cleanly (an SE delete,
# a journal write) before the server is told to exit anyway.
SETTLE_SECONDS = 5.0

Handler = Callable[[int, FrameType | None], Any]


class Interruptible(Protocol):
    def interrupt(self) -> None:
        """Stop taking data: the upload fails with `shutting_down` through its own
        error path (nothing committed is left behind)."""
        ...


class Drain:
    def __init__(
        self,
        grace: float,
        settle: float = SETTLE_SECONDS,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.grace = grace
        self.settle = settle
        self.draining = False
        self._on_change = on_change
        self._streamed: set[Interruptible] = set()
        self._resumable: set[Interruptible] = set()
        self._idle = asyncio.Event()  # no upload at all
        self._idle.set()
        self._no_streamed = asyncio.Event()
        self._no_streamed.set()
        self._hurry = asyncio.Event()

    # -- uploads ---------------------------------------------------------------------

    def admit(self) -> None:
        """Raise `shutting_down` (503) when no new upload may start."""
        if self.draining:
            raise errors.SHUTTING_DOWN("the gateway is shutting down: retry on another instance")

    @contextmanager
    def track(self, upload: Interruptible, resumable: bool = False) -> Iterator[None]:
        """An upload in flight, interrupted by the drain: resumable ones at once,
        streamed ones after the grace."""
        group = self._resumable if resumable else self._streamed
        group.add(upload)
        self._idle.clear()
        if not resumable:
            self._no_streamed.clear()
        if self.draining and (resumable or self._hurry.is_set()):
            upload.interrupt()
        try:
            yield
        finally:
            group.discard(upload)
            if not self._streamed:
                self._no_streamed.set()
                if not self._resumable:
                    self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._streamed) + len(self._resumable)

    # -- the drain -------------------------------------------------------------------

    def hurry(self) -> None:
        """Skip what is left of the grace."""
        self._hurry.set()

    async def run(self) -> None:
        """Drain, and return when the server may exit."""
        self.draining = True
        if self._on_change is not None:
            self._on_change(True)
        for upload in list(self._resumable):
            upload.interrupt()
        streamed_done = asyncio.ensure_future(self._no_streamed.wait())
        hurried = asyncio.ensure_future(self._hurry.wait())
        try:
            await asyncio.wait(
                (streamed_done, hurried),
                timeout=self.grace,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            streamed_done.cancel()
            hurried.cancel()
        self._hurry.set()  # from now on, a late upload is interrupted as it starts
        for upload in list(self._streamed) + list(self._resumable):
            upload.interrupt()
        try:
            async with asyncio.timeout(self.settle):
                await self._idle.wait()
        except TimeoutError:
            pass


class SignalDrain:
    """Turns SIGTERM/SIGINT into a drain, then hands the signal to the server's own
    handler (uvicorn's, which starts its shutdown). Installed from the app's lifespan,
    in the worker process's main thread."""

    def __init__(self, drain: Drain, loop: asyncio.AbstractEventLoop) -> None:
        self._drain = drain
        self._loop = loop
        self._previous: dict[int, Handler | int | None] = {}
        self._signals = 0
        self._task: asyncio.Task[None] | None = None

    def install(self) -> bool:
        try:
            for sig in SIGNALS:
                previous = signal.getsignal(sig)
                self._loop.add_signal_handler(sig, self._received, sig)
                self._previous[sig] = previous
        except (RuntimeError, ValueError):  # not the main thread, or no such signal
            self.uninstall()
            return False
        return True

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            self._loop.remove_signal_handler(sig)
            if callable(previous) or isinstance(previous, int):
                signal.signal(sig, previous)
        self._previous.clear()

    def _received(self, sig: int) -> None:
        self._signals += 1
        if self._signals == 1:
            self._task = self._loop.create_task(self._drain_then_exit(sig))
        elif self._signals == 2:
            self._drain.hurry()
        else:
            self._pass_on(sig)

    async def _drain_then_exit(self, sig: int) -> None:
        try:
            await self._drain.run()
        finally:
            self._pass_on(sig)

    def _pass_on(self, sig: int) -> None:
        previous = self._previous.get(sig)
        if callable(previous):
            previous(sig, None)
        else:  # nobody else listens: behave as the default would
            self.uninstall()
            signal.raise_signal(sig)

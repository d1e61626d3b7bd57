"""uvicorn's multi-worker supervisor, with the drain's second signal passed on.

uvicorn's supervisor forwards the first SIGTERM/SIGINT to its workers (each drains,
runtime/drain.py) and then only waits for them: a second signal would be queued and
never read. Here the wait watches the queue, and each further signal is forwarded
again, so the workers skip the rest of their grace, as a single process does.
"""

from __future__ import annotations

from uvicorn.supervisors.multiprocess import Multiprocess

POLL_SECONDS = 0.2


class DrainingSupervisor(Multiprocess):
    def join_all(self) -> None:
        while any(p.process.is_alive() for p in self.processes):
            for process in self.processes:
                process.process.join(POLL_SECONDS / max(1, len(self.processes)))
            if self.signal_queue:
                self.signal_queue.clear()
                self.terminate_all()

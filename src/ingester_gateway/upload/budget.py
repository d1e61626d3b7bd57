"""The buffer budget: how much memory the uploads in flight may hold, and how it is
shared (uvicorn's flow_control lesson: one small policy, nothing else knows the
numbers).

INGESTER_BUFFER_BUDGET_BYTES is split in two halves: one for blocks in flight (about
four per upload: filling, encoding, queued, sending), one for the stored bytes held
for replay. Both shares shrink as uploads are added; when the last upload ends, the
memory the burst took is given back to the system after a moment.
"""

from __future__ import annotations

import os

from ingester_gateway.runtime.memory import IdleTrimmer

BLOCKS_PER_UPLOAD = 4
MIN_BLOCK = 64 * 1024


class UploadBudget:
    def __init__(
        self,
        budget_bytes: int,
        block_size: int,
        replay_bytes: int,
        cores: int | None = None,
        trimmer: IdleTrimmer | None = None,
    ) -> None:
        self._budget = budget_bytes
        self._block = block_size
        self._replay = replay_bytes
        self._cores = cores or os.cpu_count() or 1
        self._trimmer = trimmer or IdleTrimmer()
        self.active = 0  # uploads in flight in this process

    def started(self) -> None:
        self.active += 1
        self._trimmer.busy()

    def finished(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._trimmer.idle()

    def block_size(self) -> int:
        """The configured block size, shrunk so that the uploads in flight together
        hold about half the budget in blocks."""
        share = self._budget // (2 * BLOCKS_PER_UPLOAD * max(1, self.active))
        return max(MIN_BLOCK, min(self._block, share))

    def replay_limit(self) -> int:
        """Stored bytes one upload may hold for replay: INGESTER_REPLAY_BUFFER_BYTES, or
        its share of the other half of the budget when many uploads run."""
        share = self._budget // (2 * max(1, self.active))
        return min(self._replay, share)

    def cores_idle(self) -> bool:
        """Fewer uploads than cores: one may spread its compression over the others."""
        return self.active < self._cores

"""The progress bar of `ingester-gateway upload` (tqdm): bytes, rate and ETA on stderr when
it is a terminal; nothing otherwise (the command then says what it did in one line)."""

from __future__ import annotations

from typing import TextIO

from tqdm import tqdm


class Progress:
    """One bar for the whole file: what the server confirmed plus what is on its way,
    part by part (a failed request takes its bytes back)."""

    def __init__(self, total: int, description: str, stream: TextIO) -> None:
        self._positions: dict[int, int] = {}
        self._bar = tqdm(
            total=total,
            desc=description,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=stream,
            disable=None,  # off when the stream is not a terminal
            dynamic_ncols=True,
            mininterval=0.2,
            leave=True,
        )

    def at(self, part: int, position: int) -> None:
        """Part `part` has `position` of its bytes confirmed or on their way."""
        self._positions[part] = position
        self._bar.update(sum(self._positions.values()) - self._bar.n)

    def add(self, part: int, size: int) -> None:
        self.at(part, self._positions.get(part, 0) + size)

    def close(self) -> None:
        self._bar.close()

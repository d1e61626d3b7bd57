"""The upload client's protocol rules, pure (the clock and the randomness passed in): how a
file is cut into parts, what an answer of the gateway means for the next step, and how
long the client keeps trying.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import msgspec

from ingester_gateway.errors import ErrorEnvelope
from ingester_gateway.resilience import Backoff, RetryPolicy

MAX_RETRY_AFTER = 60.0  # a server's Retry-After is honoured up to this many seconds
# Each step (a chunk, an offset read, a creation) gets this budget; progress refills it.
DEFAULT_RETRY_WINDOW = 600.0
DEFAULT_BACKOFF = Backoff(base=0.5, cap=20.0)


@dataclass(frozen=True, slots=True)
class Part:
    """A contiguous byte range of the file, uploaded as one tus upload."""

    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


def layout(size: int, parallel: int) -> list[Part]:
    """`size` bytes as `parallel` contiguous parts of near-equal length (fewer when the
    file has fewer bytes; one for an empty file)."""
    count = max(1, min(parallel, size))
    base, extra = divmod(size, count)
    parts, start = [], 0
    for index in range(count):
        length = base + (1 if index < extra else 0)
        parts.append(Part(start, length))
        start += length
    return parts


Kind = Literal["ok", "retry", "stale", "fail"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an answer means: go on (`ok`); read the offset again and retry, after a
    pause (`retry`); the upload is gone from the server (`stale`); give up (`fail`)."""

    kind: Kind
    reason: str
    retry_after: float | None = None
    code: str | None = None


# Answers another try may not see: the upload held by another request (423), a
# request judged too slow (408), fair use (429), the gateway or its Redis down (5xx).
_TRANSIENT = frozenset({408, 423, 429, 500, 502, 503, 504})
# Answers that ask for the offset to be read again: a stale offset (409), a request
# of ours taken over by another (400 upload_interrupted), a chunk whose bytes did not
# match its checksum (460: re-sent).
_RESYNC_CODES = frozenset({"offset_mismatch", "upload_interrupted"})


def judge(status: int, headers: Mapping[str, str], body: bytes, now: float) -> Verdict:
    """The gateway's answer to a tus request, as the next step (`headers` lower-case)."""
    if 200 <= status < 300:
        return Verdict("ok", "")
    code, reason = error_of(status, body)
    if status in (404, 410):
        return Verdict("stale", reason, code=code)
    if status == 460 or code in _RESYNC_CODES or status in _TRANSIENT:
        return Verdict("retry", reason, retry_after(headers.get("retry-after"), now), code)
    return Verdict("fail", reason, code=code)


def error_of(status: int, body: bytes) -> tuple[str | None, str]:
    """The gateway's error code and a one-line reason: `401 unauthorized: <message>`;
    for a body that is not the gateway's envelope (a proxy's page), the status alone."""
    try:
        envelope = msgspec.json.decode(body, type=ErrorEnvelope)
    except msgspec.DecodeError:
        return None, f"HTTP {status}"
    error = envelope.error
    return error.code, f"{status} {error.code}: {error.message}"


def retry_after(value: str | None, now: float) -> float | None:
    """`Retry-After` seconds (delta-seconds or an HTTP date), at most MAX_RETRY_AFTER;
    None when absent or malformed."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when - now), MAX_RETRY_AFTER)


class Attempts:
    """The retry budget of one step of the upload: each failure spends a try (and must
    come within the window since the last progress); progress refills it."""

    def __init__(
        self,
        retries: int,
        window: float = DEFAULT_RETRY_WINDOW,
        backoff: Backoff = DEFAULT_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = RetryPolicy(
            max_attempts=retries + 1, deadline_seconds=window, backoff=backoff
        )
        self.clock = clock
        self.rng = rng or random.Random()
        self.failures = 0
        self.since = clock()

    def progressed(self) -> None:
        self.failures = 0
        self.since = self.clock()

    def next_delay(self, verdict: Verdict) -> float | None:
        """The pause before the next try, or None once the budget is spent. A server's
        Retry-After is a lower bound of the pause."""
        self.failures += 1
        elapsed = self.clock() - self.since
        delay = self.policy.next_delay(self.failures, elapsed, self.rng)
        if delay is None:
            return None
        if verdict.retry_after is not None:
            delay = max(delay, verdict.retry_after)
            if elapsed + delay >= self.policy.deadline_seconds:
                return None
        return delay


def concat_final(urls: list[str]) -> str:
    """tus `Upload-Concat` of the final upload made of `urls`, in order."""
    return "final;" + " ".join(urls)


@dataclass(frozen=True, slots=True)
class Pacer:
    """`--limit-rate`: when the next block may go, for an average of `rate` bytes per
    second over every part of the upload together."""

    rate: float

    def wait(self, due: float, now: float, size: int) -> tuple[float, float]:
        """(seconds to wait before sending `size` bytes, the next block's due time),
        given this block's `due` time (0 for the first)."""
        start = max(due, now)
        return start - now, start + size / self.rate

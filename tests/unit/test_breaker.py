"""CircuitBreaker on a fake clock, and RetryPolicy's delays with a seeded rng."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingester_gateway.resilience import (
    Backoff,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    RetryPolicy,
)
from tests.kit import FakeClock

# Only consecutive failures open it: the rate rule would need a million calls.
BY_COUNT = BreakerPolicy(failure_threshold=3, min_calls=1_000_000, cooldown_seconds=10.0)
# Only the failure rate opens it: no run of failures is ever long enough.
BY_RATE = BreakerPolicy(
    failure_threshold=1_000_000, failure_rate=0.5, min_calls=4, window_seconds=30.0
)


def opened(policy: BreakerPolicy, clock: FakeClock) -> CircuitBreaker:
    """A breaker opened at `clock.now` by consecutive failures."""
    breaker = CircuitBreaker(policy)
    while breaker.state is not BreakerState.OPEN:
        breaker.record_failure(clock())
    return breaker


def half_open(clock: FakeClock) -> CircuitBreaker:
    """A breaker past its cool-down whose probe is out."""
    breaker = opened(BY_COUNT, clock)
    clock.advance(BY_COUNT.cooldown_seconds)
    assert breaker.acquire(clock())
    assert breaker.state is BreakerState.HALF_OPEN
    return breaker


# -- closed -> open ----------------------------------------------------------------


def test_consecutive_failures_open_the_circuit_at_the_threshold() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BY_COUNT)
    for _ in range(BY_COUNT.failure_threshold - 1):
        breaker.record_failure(clock())
        assert breaker.state is BreakerState.CLOSED
    breaker.record_failure(clock())
    assert breaker.state is BreakerState.OPEN
    assert not breaker.acquire(clock())


def test_a_success_breaks_the_run_of_failures() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BY_COUNT)
    for _ in range(5):  # never three failures in a row
        breaker.record_failure(clock())
        breaker.record_failure(clock())
        breaker.record_success(clock())
    assert breaker.state is BreakerState.CLOSED


def test_the_failure_rate_opens_only_once_the_window_holds_min_calls() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BY_RATE)
    for ok in (False, True, False):  # 2 of 3 failed, but fewer than min_calls=4
        (breaker.record_success if ok else breaker.record_failure)(clock())
        assert breaker.state is BreakerState.CLOSED
    breaker.record_failure(clock())  # 3 of 4: the rate now counts
    assert breaker.state is BreakerState.OPEN


def test_a_failure_rate_below_the_threshold_keeps_the_circuit_closed() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BY_RATE)
    for _ in range(10):
        for _ in range(3):
            breaker.record_success(clock())
        breaker.record_failure(clock())  # 1 in 4 < 0.5
    assert breaker.state is BreakerState.CLOSED


def test_calls_older_than_the_window_no_longer_count() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BY_RATE)
    for _ in range(3):
        breaker.record_failure(clock())
    clock.advance(BY_RATE.window_seconds + 1)
    for _ in range(3):
        breaker.record_success(clock())
    # With the old failures the window would be 4 of 7 failed; without them 1 of 4.
    breaker.record_failure(clock())
    assert breaker.state is BreakerState.CLOSED


def test_calls_still_inside_the_window_count() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BY_RATE)
    for _ in range(3):
        breaker.record_failure(clock())
    clock.advance(BY_RATE.window_seconds - 1)
    breaker.record_success(clock())
    breaker.record_failure(clock())  # 4 of 5 failed inside the window
    assert breaker.state is BreakerState.OPEN


# -- open -> half-open -> closed / open ----------------------------------------------


def test_an_open_circuit_refuses_until_the_cool_down_has_passed() -> None:
    clock = FakeClock()
    breaker = opened(BY_COUNT, clock)
    clock.advance(BY_COUNT.cooldown_seconds - 0.001)
    assert breaker.is_open(clock())
    assert not breaker.acquire(clock())
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.001)
    assert breaker.acquire(clock())
    assert breaker.state is BreakerState.HALF_OPEN


def test_late_failures_while_open_do_not_extend_the_cool_down() -> None:
    """Requests sent before the circuit opened may fail after it did."""
    clock = FakeClock()
    breaker = opened(BY_COUNT, clock)
    clock.advance(BY_COUNT.cooldown_seconds / 2)
    breaker.record_failure(clock())
    clock.advance(BY_COUNT.cooldown_seconds / 2)
    assert breaker.acquire(clock())


def test_a_late_success_while_open_does_not_close_the_circuit() -> None:
    clock = FakeClock()
    breaker = opened(BY_COUNT, clock)
    breaker.record_success(clock())
    assert breaker.state is BreakerState.OPEN
    assert not breaker.acquire(clock())


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    breaker = half_open(clock)
    assert breaker.is_open(clock())  # for selection: the probe is out
    for _ in range(5):
        assert not breaker.acquire(clock())
        clock.advance(BY_COUNT.cooldown_seconds)  # however long the probe takes
    assert breaker.state is BreakerState.HALF_OPEN


def test_a_successful_probe_closes_the_circuit() -> None:
    clock = FakeClock()
    breaker = half_open(clock)
    breaker.record_success(clock())
    assert breaker.state is BreakerState.CLOSED
    assert not breaker.is_open(clock())
    assert all(breaker.acquire(clock()) for _ in range(3))


def test_a_successful_probe_forgets_the_failures_before_it() -> None:
    clock = FakeClock()
    breaker = half_open(clock)
    breaker.record_success(clock())
    for _ in range(BY_COUNT.failure_threshold - 1):
        breaker.record_failure(clock())
    assert breaker.state is BreakerState.CLOSED  # the run starts again from zero


def test_a_successful_probe_clears_the_rate_window() -> None:
    clock = FakeClock()
    breaker = opened(BY_RATE, clock)  # 4 failures of 4 in the window
    clock.advance(BY_RATE.cooldown_seconds)
    assert breaker.acquire(clock())
    breaker.record_success(clock())
    breaker.record_failure(clock())  # still inside the window of the old failures
    assert breaker.state is BreakerState.CLOSED


def test_a_failed_probe_opens_the_circuit_for_another_cool_down() -> None:
    clock = FakeClock()
    breaker = half_open(clock)
    clock.advance(3.0)
    breaker.record_failure(clock())
    assert breaker.state is BreakerState.OPEN
    clock.advance(BY_COUNT.cooldown_seconds - 0.001)  # counted from the probe's failure
    assert not breaker.acquire(clock())
    clock.advance(0.001)
    assert breaker.acquire(clock())


def test_release_in_half_open_frees_the_probe_slot() -> None:
    clock = FakeClock()
    breaker = half_open(clock)
    breaker.release()  # the probe was never sent
    assert not breaker.is_open(clock())
    assert breaker.acquire(clock())
    assert not breaker.acquire(clock())
    assert breaker.state is BreakerState.HALF_OPEN


@pytest.mark.parametrize("state", ["closed", "open"])
def test_release_outside_half_open_changes_nothing(state: str) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BY_COUNT) if state == "closed" else opened(BY_COUNT, clock)
    breaker.release()
    assert breaker.state == state
    assert breaker.acquire(clock()) is (state == "closed")


def test_is_open_does_not_move_the_circuit_to_half_open() -> None:
    clock = FakeClock()
    breaker = opened(BY_COUNT, clock)
    clock.advance(BY_COUNT.cooldown_seconds)
    for _ in range(3):
        assert not breaker.is_open(clock())  # a request would now be let through...
        assert breaker.state is BreakerState.OPEN  # ...but asking does not let one out
    assert breaker.acquire(clock())
    assert breaker.acquire(clock()) is False


# -- properties over random histories ---------------------------------------------

POLICY = BreakerPolicy(
    failure_threshold=3, failure_rate=0.5, min_calls=4, window_seconds=5.0, cooldown_seconds=2.0
)
events = st.lists(
    st.one_of(
        st.sampled_from(["acquire", "release", "success", "failure"]),
        st.floats(0.0, 3.0).map(lambda s: ("advance", s)),
    ),
    max_size=80,
)


def settle(breaker: CircuitBreaker, event: object, now: float) -> None:
    if event == "release":
        breaker.release()
    elif event == "success":
        breaker.record_success(now)
    else:
        breaker.record_failure(now)


@given(events)
def test_half_open_never_has_two_probes_out(history: list[object]) -> None:
    """Between entering half-open and the probe's outcome (or release), acquire grants
    at most once, whatever else happens."""
    clock = FakeClock()
    breaker = CircuitBreaker(POLICY)
    granted = 0
    for event in history:
        if isinstance(event, tuple):
            clock.advance(event[1])
        elif event == "acquire":
            was_half_open = breaker.state is BreakerState.HALF_OPEN
            if breaker.acquire(clock()) and breaker.state is BreakerState.HALF_OPEN:
                granted = granted + 1 if was_half_open else 1
                assert granted <= 1
        else:  # the probe's outcome, or its release: the slot is free again
            settle(breaker, event, clock())
            granted = 0


@given(events)
def test_is_open_foretells_acquire_and_changes_nothing(history: list[object]) -> None:
    """Selection asks `is_open`; the upload then calls `acquire`: they must agree."""
    clock = FakeClock()
    breaker = CircuitBreaker(POLICY)
    for event in history:
        if isinstance(event, tuple):
            clock.advance(event[1])
        elif event == "acquire":
            state = breaker.state
            refused = breaker.is_open(clock())
            assert breaker.state is state
            assert breaker.acquire(clock()) is not refused
        else:
            settle(breaker, event, clock())


# -- RetryPolicy and Backoff ----------------------------------------------------------

BACKOFF = Backoff(base=0.1, cap=1.0)
RETRY = RetryPolicy(max_attempts=4, deadline_seconds=10.0, backoff=BACKOFF)


def test_retries_stop_at_the_attempt_cap() -> None:
    rng = random.Random(1)
    delays = [RETRY.next_delay(attempt, 0.0, rng) for attempt in range(1, 7)]
    assert all(d is not None for d in delays[:3])  # 4 attempts: the first and 3 retries
    assert delays[3:] == [None, None, None]


def test_a_retry_that_would_end_past_the_deadline_is_not_made() -> None:
    delay = BACKOFF.delay(1, random.Random(5))
    assert delay > 0
    just_in_time = RETRY.deadline_seconds - delay - 1e-6
    assert RETRY.next_delay(1, just_in_time, random.Random(5)) == delay
    assert RETRY.next_delay(1, just_in_time + 2e-6, random.Random(5)) is None
    assert RETRY.next_delay(1, RETRY.deadline_seconds, random.Random(5)) is None


@given(seed=st.integers(0, 2**32), attempt=st.integers(1, 30))
def test_a_retry_delay_lies_between_zero_and_the_capped_exponential(
    seed: int, attempt: int
) -> None:
    policy = RetryPolicy(max_attempts=100, deadline_seconds=1e9, backoff=BACKOFF)
    delay = policy.next_delay(attempt, 0.0, random.Random(seed))
    assert delay is not None
    assert 0.0 <= delay <= min(1.0, 0.1 * 2 ** (attempt - 1))


@given(seed=st.integers(0, 2**32), attempt=st.integers(-2, 30))
def test_a_floor_is_kept_unless_it_is_above_the_ceiling(seed: int, attempt: int) -> None:
    backoff = Backoff(base=0.2, cap=5.0, floor=0.05)
    ceiling = min(5.0, 0.2 * 2 ** (max(1, attempt) - 1))  # attempts below 1 count as 1
    assert 0.05 <= backoff.delay(attempt, random.Random(seed)) <= ceiling
    tiny = Backoff(base=0.01, cap=5.0, floor=0.05)  # floor above the first ceiling
    assert tiny.delay(1, random.Random(seed)) <= 0.01


@pytest.mark.parametrize("attempt", [0, -1, -5])
def test_an_attempt_below_one_waits_like_the_first_retry(attempt: int) -> None:
    backoff = Backoff(base=0.2, cap=5.0, floor=0.05)
    for seed in range(20):
        assert backoff.delay(attempt, random.Random(seed)) == backoff.delay(1, random.Random(seed))


def test_the_jitter_spreads_over_the_whole_range() -> None:
    """Full jitter: not a fixed step, not a narrow band near the top."""
    rng = random.Random(42)
    delays = [BACKOFF.delay(3, rng) for _ in range(500)]  # range [0, 0.4]
    assert min(delays) < 0.04
    assert max(delays) > 0.36
    assert 0.15 < sum(delays) / len(delays) < 0.25


def test_the_same_seed_gives_the_same_delays() -> None:
    def delays(seed: int) -> list[float | None]:
        rng = random.Random(seed)
        return [RETRY.next_delay(a, 0.0, rng) for a in (1, 2, 3)]

    assert delays(9) == delays(9)
    assert delays(9) != delays(10)

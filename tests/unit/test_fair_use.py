"""Fair use without a socket: the limit syntax, the policy per role and token, the window
arithmetic, and the gate over the in-process ledger with a fake clock (admission,
refusals with Retry-After, pacing, the Redis fallback, calls per upload)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from ingester_gateway.auth.verify import Principal
from ingester_gateway.config import ConfigError, load_settings, parse_role_limits
from ingester_gateway.errors import ApiError
from ingester_gateway.fair_use import limits as gcra
from ingester_gateway.fair_use.gate import FLUSH_BYTES, UNLIMITED, FairUseGate
from ingester_gateway.fair_use.limits import FairUsePolicy, UserLimits
from ingester_gateway.fair_use.local import LocalLedger
from ingester_gateway.fair_use.ports import Admission, UploadSlot
from ingester_gateway.observability import Metrics, get_logger
from ingester_gateway.pipeline.body import RequestBody
from tests.kit import FakeClock, run

KiB = 1024
BASE_ENV = {
    "INGESTER_AUTH_JWKS_URL": "http://admin/jwks",
    "INGESTER_STORAGE_ELEMENTS": '[{"id": "se-1", "url": "http://se-1"}]',
}


def principal(sub: str = "alice", role: str = "user", rate_limit: int | None = None) -> Principal:
    return Principal(
        sub=sub,
        role=role,
        token_type="access",
        name=sub,
        client_id=None,
        expires_at=2**31,
        rate_limit=rate_limit,
    )


def policy(
    concurrent: int = 0, rpm: int = 0, quota: int = 0, window: float = 60.0
) -> FairUsePolicy:
    return FairUsePolicy(
        concurrent_uploads={"*": concurrent},
        requests_per_minute={"*": rpm},
        bytes_per_window={"*": quota},
        window=window,
    )


class Sleeps:
    """An `asyncio.sleep` that moves the fake clock instead of waiting."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)


class Rig:
    """A gate over a ledger (the local one unless told), a fake clock and fake sleeps;
    with `fallback`, a local ledger for when the ledger's Redis does not answer."""

    def __init__(
        self,
        rules: FairUsePolicy,
        make_ledger: Callable[[FakeClock], Any] = LocalLedger,
        fallback: bool = False,
    ) -> None:
        self.clock = FakeClock()
        self.sleeps = Sleeps(self.clock)
        self.metrics = Metrics()
        self.ledger = make_ledger(self.clock)
        self.gate = FairUseGate(
            rules,
            self.ledger,
            self.metrics,
            get_logger("test"),
            fallback=LocalLedger(self.clock) if fallback else None,
            clock=self.clock,
            sleep=self.sleeps,
        )

    def acquire(self, who: Principal | None = None) -> UploadSlot:
        return run(self.gate.acquire_upload(who or principal()))

    def refused(self, who: Principal | None = None) -> ApiError:
        with pytest.raises(ApiError) as info:
            self.acquire(who)
        assert info.value.status == 429
        return info.value

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def retry_after(error: ApiError) -> int:
    values = [v for k, v in error.headers if k == b"retry-after"]
    assert len(values) == 1, error.headers  # the problem's default is replaced, not repeated
    return int(values[0])


# -- the limit syntax -----------------------------------------------------------------------


def test_a_bare_number_is_every_roles_limit() -> None:
    assert parse_role_limits("16") == {"*": 16}
    assert parse_role_limits(" ") == {}


def test_role_pairs_name_roles_and_star_the_others() -> None:
    assert parse_role_limits("user=4, operator=8 ,*=16") == {"user": 4, "operator": 8, "*": 16}


def test_byte_limits_take_sizes() -> None:
    assert parse_role_limits("user=10GiB,*=0", size=True) == {"user": 10 * 2**30, "*": 0}
    assert parse_role_limits("512KiB", size=True) == {"*": 512 * KiB}


@pytest.mark.parametrize("text", ["user", "user=x", "user=1,user=2", "=3", "user=-1", "4.5"])
def test_malformed_limits_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_role_limits(text)


def test_settings_read_the_fair_use_variables() -> None:
    settings = load_settings(
        {
            **BASE_ENV,
            "INGESTER_FAIR_USE_CONCURRENT_UPLOADS": "user=2,*=8",
            "INGESTER_FAIR_USE_REQUESTS_PER_MINUTE": "600",
            "INGESTER_FAIR_USE_BYTES_PER_WINDOW": "user=1GiB",
            "INGESTER_FAIR_USE_WINDOW_SECONDS": "3600",
            "INGESTER_FAIR_USE_TOKEN_RATE_LIMIT": "false",
        }
    )
    assert settings.fair_use_concurrent_uploads == {"user": 2, "*": 8}
    assert settings.fair_use_requests_per_minute == {"*": 600}
    assert settings.fair_use_bytes_per_window == {"user": 2**30}
    assert settings.fair_use_window_seconds == 3600
    assert settings.fair_use_token_rate_limit is False


def test_the_defaults_limit_only_uploads_in_flight() -> None:
    settings = load_settings(BASE_ENV)
    assert settings.fair_use is True
    assert settings.fair_use_concurrent_uploads == {"*": 16}
    assert settings.fair_use_requests_per_minute == {}
    assert settings.fair_use_bytes_per_window == {}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INGESTER_FAIR_USE_CONCURRENT_UPLOADS", "usr=4"),
        ("INGESTER_FAIR_USE_REQUESTS_PER_MINUTE", "user=ten"),
        ("INGESTER_FAIR_USE_BYTES_PER_WINDOW", "user=lots"),
    ],
)
def test_a_bad_limit_stops_start_up_naming_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: "):
        load_settings({**BASE_ENV, name: value})


# -- the policy ---------------------------------------------------------------------------------


def test_a_role_gets_its_own_value_else_stars_else_none() -> None:
    rules = FairUsePolicy(
        concurrent_uploads={"user": 2, "*": 8},
        requests_per_minute={"operator": 100},
        bytes_per_window={},
    )
    assert rules.limits_for(principal(role="user")).concurrent_uploads == 2
    assert rules.limits_for(principal(role="admin")).concurrent_uploads == 8
    assert rules.limits_for(principal(role="operator")).requests_per_minute == 100
    assert rules.limits_for(principal(role="user")).requests_per_minute == 0
    assert rules.limits_for(principal(role="user")).bytes_per_window == 0


def test_the_tokens_rate_limit_claim_replaces_the_roles_rate() -> None:
    rules = FairUsePolicy({}, {"user": 100}, {})
    assert rules.limits_for(principal(rate_limit=5)).requests_per_minute == 5
    assert rules.limits_for(principal(rate_limit=500)).requests_per_minute == 500
    assert rules.limits_for(principal(rate_limit=None)).requests_per_minute == 100
    ignoring = FairUsePolicy({}, {"user": 100}, {}, token_rate_limit=False)
    assert ignoring.limits_for(principal(rate_limit=5)).requests_per_minute == 100


def test_costs_are_the_window_shared_by_the_limit() -> None:
    limits = UserLimits(requests_per_minute=120, bytes_per_window=1000, window=10.0)
    assert limits.request_cost == 0.5
    assert limits.byte_cost == 0.01
    assert UserLimits().unlimited and not limits.unlimited


# -- the window arithmetic ----------------------------------------------------------------


def test_a_budget_allows_its_burst_then_one_per_cost() -> None:
    cost, window, now = 20.0, 60.0, 1000.0  # 3 per minute
    drained = 0.0
    for _ in range(3):
        spent = gcra.spend(drained, now, cost, window)
        assert spent is not None
        drained = spent
    assert gcra.spend(drained, now, cost, window) is None
    assert gcra.refused_for(drained, now, cost, window) == 20.0
    assert gcra.spend(drained, now + 19.9, cost, window) is None
    assert gcra.spend(drained, now + 20.0, cost, window) == drained + cost


def test_counted_bytes_drain_over_the_window() -> None:
    drained = gcra.add(0.0, 100.0, 90.0)
    assert gcra.backlog(drained, 100.0) == 90.0
    assert gcra.over_quota(gcra.backlog(drained, 100.0), 60.0) == 30.0
    assert gcra.over_quota(gcra.backlog(drained, 130.0), 60.0) == 0.0
    assert gcra.backlog(drained, 500.0) == 0.0


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert gcra.retry_after(0.0) == 1
    assert gcra.retry_after(1.01) == 2
    assert gcra.retry_after(30.0) == 30


# -- the gate: uploads in flight --------------------------------------------------------------


def test_a_user_at_its_limit_is_refused_and_another_is_not() -> None:
    rig = Rig(policy(concurrent=2))
    first, _second = rig.acquire(), rig.acquire()
    error = rig.refused()
    assert error.code == "too_many_uploads"
    assert retry_after(error) >= 1
    rig.acquire(principal("bob"))  # bob has slots of his own
    run(first.release())
    rig.acquire()  # alice's slot is back
    assert rig.sample("ingester_fair_use_refusals_total", limit="concurrent_uploads") == 1


def test_release_is_idempotent() -> None:
    rig = Rig(policy(concurrent=1))
    slot = rig.acquire()
    run(slot.release())
    run(slot.release())
    held = rig.acquire()  # a second release gave back nobody else's slot
    rig.refused()
    run(held.release())


def test_a_user_without_limits_costs_the_ledger_nothing() -> None:
    rig = Rig(policy())
    slot = rig.acquire()
    assert slot is UNLIMITED and slot.meter is None
    assert rig.ledger.users() == 0


# -- the gate: requests per minute ----------------------------------------------------------


def test_the_request_rate_refuses_past_its_burst_until_it_drains() -> None:
    rig = Rig(policy(rpm=3))
    for _ in range(3):
        run(rig.acquire().release())
    error = rig.refused()
    assert error.code == "rate_limited"
    assert retry_after(error) == 20
    rig.acquire(principal("bob"))
    rig.clock.advance(20)
    rig.acquire()


def test_a_refused_upload_still_counts_as_a_request() -> None:
    rig = Rig(policy(concurrent=1, rpm=2))
    rig.acquire()
    assert rig.refused().code == "too_many_uploads"  # the second request of the minute
    assert rig.refused().code == "rate_limited"  # the third


def test_the_claim_limits_a_token_whose_role_has_no_rate() -> None:
    rig = Rig(policy())
    token = principal(rate_limit=1)
    run(rig.acquire(token).release())
    assert rig.refused(token).code == "rate_limited"


# -- the gate: the byte quota ----------------------------------------------------------------


def test_bytes_within_the_quota_are_read_without_pause() -> None:
    rig = Rig(policy(quota=100 * KiB, window=10.0))
    slot = rig.acquire()
    assert slot.meter is not None
    assert slot.meter.count(50 * KiB) is False
    assert slot.meter.count(50 * KiB) is False  # exactly the quota
    run(slot.release())
    assert rig.sleeps.waits == []


def test_a_body_over_the_quota_is_paced_to_it() -> None:
    rig = Rig(policy(quota=100 * KiB, window=10.0))
    slot = rig.acquire()
    assert slot.meter is not None
    assert slot.meter.count(150 * KiB) is True
    run(slot.meter.settle())
    assert rig.sleeps.waits == [pytest.approx(5.0)]  # 50 KiB over, at 10 KiB/s
    assert rig.sample("ingester_fair_use_paced_seconds_total") == pytest.approx(5.0)
    assert slot.meter.count(10 * KiB) is True  # still at the quota: one more second
    run(slot.meter.settle())
    assert rig.sleeps.waits[-1] == pytest.approx(1.0)


def test_a_user_over_its_quota_is_refused_at_the_start_of_the_next_upload() -> None:
    rig = Rig(policy(quota=100 * KiB, window=10.0))
    slot = rig.acquire()
    assert slot.meter is not None
    slot.meter.count(130 * KiB)  # the last piece: never paced, counted all the same
    run(slot.release())
    error = rig.refused()
    assert error.code == "byte_quota_exceeded"
    assert retry_after(error) == 3
    rig.acquire(principal("bob"))
    rig.clock.advance(3)
    rig.acquire()


def test_the_ledger_forgets_users_with_nothing_left() -> None:
    rig = Rig(policy(concurrent=1, quota=100 * KiB, window=10.0))
    slot = rig.acquire()
    assert slot.meter is not None
    slot.meter.count(KiB)
    run(slot.release())
    rig.clock.advance(1)
    slot = rig.acquire()
    run(slot.release())  # nothing left to drain
    assert rig.ledger.users() == 0


# -- calls per upload ------------------------------------------------------------------------


class CountingLedger(LocalLedger):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.calls: list[str] = []

    async def admit(self, user: str, slot: str, limits: UserLimits) -> Admission:
        self.calls.append("admit")
        return await super().admit(user, slot, limits)

    async def count(self, user: str, nbytes: int, limits: UserLimits, release: str | None) -> float:
        self.calls.append("count" if release is None else "release")
        return await super().count(user, nbytes, limits, release)


def counting_rig(rules: FairUsePolicy) -> tuple[Rig, CountingLedger]:
    rig = Rig(rules, CountingLedger)
    return rig, rig.ledger


def test_a_small_upload_costs_one_call_at_its_start_and_one_at_its_end() -> None:
    rig, ledger = counting_rig(policy(concurrent=4, rpm=1000, quota=2**30))
    slot = rig.acquire()
    assert slot.meter is not None
    assert slot.meter.count(4 * KiB) is False
    run(slot.release())
    assert ledger.calls == ["admit", "release"]


def test_a_big_body_is_told_to_the_ledger_once_per_flush() -> None:
    rig, ledger = counting_rig(policy(quota=2**40))
    slot = rig.acquire()
    assert slot.meter is not None
    pieces = 3 * FLUSH_BYTES // (256 * KiB)
    for n in range(pieces):
        if slot.meter.count(256 * KiB) and n < pieces - 1:  # as the body: none after the last
            run(slot.meter.settle())
    run(slot.release())
    assert ledger.calls == ["admit", "count", "count", "count"]  # the third is the end's


def test_only_a_request_rate_needs_nothing_at_the_end() -> None:
    rig, ledger = counting_rig(policy(rpm=1000))
    run(rig.acquire().release())
    assert ledger.calls == ["admit"]


# -- Redis away -----------------------------------------------------------------------------


class AwayLedger:
    """A Redis ledger whose Redis does not answer."""

    needs_renewal = True

    def __init__(self) -> None:
        self.calls = 0

    async def admit(self, user: str, slot: str, limits: UserLimits) -> Admission:
        self.calls += 1
        raise RedisConnectionError("Connection refused")

    async def count(self, user: str, nbytes: int, limits: UserLimits, release: str | None) -> float:
        self.calls += 1
        raise RedisConnectionError("Connection refused")

    async def renew(self, slots: Sequence[tuple[str, str]]) -> None:
        raise RedisConnectionError("Connection refused")


def test_without_redis_the_instance_decides_alone_and_asks_again_later() -> None:
    away = AwayLedger()
    rig = Rig(policy(concurrent=1), lambda clock: away, fallback=True)
    held = rig.acquire()  # Redis failed: the local ledger admitted it
    assert rig.refused().code == "too_many_uploads"  # ... and holds the limit
    assert away.calls == 1  # asked once, then left alone for a while
    assert rig.sample("ingester_fair_use_redis_errors_total") == 1
    run(held.release())  # given back where it was taken: no Redis call
    assert away.calls == 1
    rig.clock.advance(5)
    rig.acquire()
    assert away.calls == 2


# -- the body and its meter ------------------------------------------------------------------


class RecordingMeter:
    def __init__(self, settle_after: int) -> None:
        self.settle_after = settle_after
        self.events: list[str] = []

    def count(self, nbytes: int) -> bool:
        self.events.append(f"count {nbytes}")
        return len(self.events) >= self.settle_after

    async def settle(self) -> None:
        self.events.append("settle")


def test_the_body_settles_its_meter_before_reading_more_never_after_the_last_piece() -> None:
    messages = [
        {"type": "http.request", "body": b"a" * 10, "more_body": True},
        {"type": "http.request", "body": b"b" * 20, "more_body": True},
        {"type": "http.request", "body": b"c" * 30, "more_body": False},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    meter = RecordingMeter(settle_after=1)

    async def scenario() -> list[bytes]:
        body = RequestBody(
            receive, content_length=60, limit=100, idle_timeout=5.0, gone=lambda: False, meter=meter
        )
        return [p async for p in body]

    assert b"".join(run(scenario())) == b"a" * 10 + b"b" * 20 + b"c" * 30
    assert meter.events == ["count 10", "settle", "count 20", "settle", "count 30"]


def test_a_paced_body_is_not_timed_out_as_idle() -> None:
    rig = Rig(policy(quota=KiB, window=0.2))
    rig.gate.sleep = asyncio.sleep  # really wait: longer than the idle timeout below
    messages = [
        {"type": "http.request", "body": b"x" * (2 * KiB), "more_body": True},
        {"type": "http.request", "body": b"y", "more_body": False},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def scenario() -> int:
        slot = await rig.gate.acquire_upload(principal())
        body = RequestBody(
            receive,
            content_length=2 * KiB + 1,
            limit=10 * KiB,
            idle_timeout=0.05,
            gone=lambda: False,
            meter=slot.meter,
        )
        total = sum([len(p) async for p in body])
        await slot.release()
        return total

    assert run(scenario()) == 2 * KiB + 1
    assert rig.sample("ingester_fair_use_paced_seconds_total") > 0

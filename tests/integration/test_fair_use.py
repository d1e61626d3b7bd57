"""Fair use with real processes: a gateway on its own (limits in the process), two
gateways sharing one real redis-server (limits across instances), the reference Admin
Module's service-account tokens with their `rate_limit` claim, a gateway killed while it
holds a slot; and the Redis script itself against a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from ingester_gateway.fair_use.limits import UserLimits
from ingester_gateway.fair_use.redis_ledger import RedisLedger, keys
from ingester_gateway.reference.processes import (
    ServerProcess,
    admin_module,
    gateway,
    redis_server,
    running,
    se_entry,
    service_account_env,
    storage_element,
)
from ingester_gateway.runtime.redis_io import redis_client
from ingester_gateway.runtime.redis_pipeline import PipelinedRedis
from tests.kit import (
    AS_SENT,
    Answer,
    DevKeys,
    MiB,
    assert_error_envelope,
    curl,
    eventually,
    http_call,
    put,
    run,
    scrape,
)
from tests.resumable import TUS, TUS_VERSION, create, offset_of, patch, wait_stored
from tests.stack import Stack, held_upload, own_stack, paced_put, redis_url

T = TypeVar("T")
KiB = 1024
LEASE_SECONDS = 2.0
UPLOADER = ("uploader", "uploader-secret")  # a service account with rate_limit 1


def upload(gw: ServerProcess, auth: dict[str, str], size: int = 4 * KiB) -> Answer:
    return put(gw, auth, os.urandom(size), name="f.bin", query=AS_SENT)


def assert_refused(answer: Answer, code: str) -> int:
    """A 429 JSON envelope with `code` and a Retry-After of whole seconds; its value."""
    assert_error_envelope(answer, 429, code)
    seconds = int(answer.headers["retry-after"])
    assert seconds >= 1
    return seconds


def refusals(gw: ServerProcess, limit: str) -> float:
    return scrape(gw).value("ingester_fair_use_refusals_total", limit=limit)


# -- one gateway, limits in its process ----------------------------------------------------


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Stack]:
    """Users may have one upload in flight; operators 256 KiB per second."""
    env = {
        "INGESTER_FAIR_USE_CONCURRENT_UPLOADS": "user=1,*=16",
        "INGESTER_FAIR_USE_BYTES_PER_WINDOW": "operator=256KiB",
        "INGESTER_FAIR_USE_WINDOW_SECONDS": "1",
    }
    with own_stack(tmp_path_factory.mktemp("fair-local"), keys, env=env) as stack:
        yield stack


def test_a_user_at_its_limit_gets_429_while_another_uploads(local: Stack, keys: DevKeys) -> None:
    alice, bob = keys.auth("alice-local"), keys.auth("bob-local")
    with held_upload(local.gw, alice, uuid.uuid4().hex) as held:
        answer = upload(local.gw, alice)
        assert_refused(answer, "too_many_uploads")
        assert upload(local.gw, bob).status == 201
        finished = held.finish()
        assert finished.status == 201, finished.body
    assert upload(local.gw, alice).status == 201  # the slot came back with the answer
    assert refusals(local.gw, "concurrent_uploads") >= 1


def test_resumable_requests_take_a_slot_like_any_upload(local: Stack, keys: DevKeys) -> None:
    """A tus creation or PATCH is an upload in flight: refused with 429 while the user is
    at its limit, and its own PATCH holds the slot while it runs."""
    alice, bob = keys.auth("alice-tus"), keys.auth("bob-tus")
    data = os.urandom(64 * KiB)
    path = create(local.gw, alice, len(data), {"filename": "fair.bin"})
    with held_upload(local.gw, alice, uuid.uuid4().hex) as held:
        assert_refused(patch(local.gw, alice, path, 0, data), "too_many_uploads")
        refused = http_call(
            local.gw, "POST", TUS, b"", {**alice, **TUS_VERSION, "Upload-Length": "1"}
        )
        assert_refused(refused, "too_many_uploads")
        assert create(local.gw, bob, 1, {"filename": "b.bin"}).startswith(TUS)
        assert held.finish().status == 201
    assert offset_of(local.gw, alice, path) == 0  # the refused PATCH wrote nothing
    answer = patch(local.gw, alice, path, 0, data)
    assert answer.status == 204, answer
    assert local.download(wait_stored(local.gw, alice, path)["file_id"]) == data


def test_a_refusal_comes_before_the_body_so_a_waiting_client_sends_none(
    local: Stack, keys: DevKeys, tmp_path: Path
) -> None:
    alice = keys.auth("alice-expect")
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(4 * MiB))
    with held_upload(local.gw, alice, uuid.uuid4().hex):
        answer = curl(
            "-T",
            str(payload),
            "-H",
            "Expect: 100-continue",
            "-H",
            f"Authorization: {alice['Authorization']}",
            f"{local.gw.url}/api/v1/files/waiting.bin",
            timeout=60,
        )
    assert answer.status == 429
    assert answer.uploaded == 0


def test_a_body_over_the_byte_quota_is_paced_and_stored_whole(local: Stack, keys: DevKeys) -> None:
    operator = keys.auth("olga", role="operator")
    data = os.urandom(MiB)  # four times the quota of a window
    before = scrape(local.gw).value("ingester_fair_use_paced_seconds_total")
    answer = paced_put(
        local.gw,
        "/api/v1/files/paced.bin?compress=false",
        operator,
        data,
        chunk=64 * KiB,
        pause=0.002,
    )
    assert answer.status == 201, answer.body
    assert answer.json()["file_size"] == len(data)
    assert local.download(answer.json()["file_id"]) == data
    assert scrape(local.gw).value("ingester_fair_use_paced_seconds_total") > before
    assert local.settled_partials() == []


# -- two gateways, one Redis -----------------------------------------------------------------


@dataclass
class Shared:
    workdir: Path
    keys: DevKeys
    redis: ServerProcess
    tokens: ServerProcess
    se: ServerProcess
    gw1: ServerProcess
    gw2: ServerProcess

    def gateway(self, name: str) -> ServerProcess:
        return gateway(
            self.workdir,
            self.keys.public_path,
            [se_entry(self.se)],
            env=shared_env(self.redis, self.tokens),
            name=name,
        )

    def service_token(self, client: tuple[str, str]) -> str:
        body = json.dumps(
            {"grant_type": "client_credentials", "client_id": client[0], "client_secret": client[1]}
        ).encode()
        answer = http_call(self.tokens, "POST", "/api/v1/auth/token", body)
        assert answer.status == 200, answer.body
        return str(answer.json()["access_token"])


def shared_env(redis_at: ServerProcess, tokens: ServerProcess) -> dict[str, str]:
    """Users: one upload in flight; operators: 2 requests a minute; admins: 64 KiB per
    10 minutes. Leases of 2 s."""
    return {
        "INGESTER_REDIS_URL": redis_url(redis_at),
        "INGESTER_FAIR_USE_CONCURRENT_UPLOADS": "user=1,*=16",
        "INGESTER_FAIR_USE_REQUESTS_PER_MINUTE": "operator=2",
        "INGESTER_FAIR_USE_BYTES_PER_WINDOW": "admin=64KiB",
        "INGESTER_FAIR_USE_WINDOW_SECONDS": "600",
        "INGESTER_FAIR_USE_LEASE_SECONDS": str(LEASE_SECONDS),
        **service_account_env(tokens),
    }


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Shared]:
    workdir = tmp_path_factory.mktemp("fair-shared")
    redis_at = redis_server(workdir)
    tokens = admin_module(
        workdir,
        keys.private_path,
        extra=["--service-account", f"{UPLOADER[0]}:{UPLOADER[1]}:user:1"],
    )
    se = storage_element(workdir, keys.public_path)
    with running(redis_at, tokens, se):
        env = shared_env(redis_at, tokens)
        gw1 = gateway(workdir, keys.public_path, [se_entry(se)], env=env, name="gw1")
        gw2 = gateway(workdir, keys.public_path, [se_entry(se)], env=env, name="gw2")
        with running(gw1, gw2):
            yield Shared(workdir, keys, redis_at, tokens, se, gw1, gw2)


def test_a_user_at_its_limit_on_one_instance_gets_429_on_the_other(
    shared: Shared, keys: DevKeys
) -> None:
    alice, bob = keys.auth("alice"), keys.auth("bob")
    with held_upload(shared.gw1, alice, uuid.uuid4().hex) as held:
        assert_refused(upload(shared.gw2, alice), "too_many_uploads")
        assert_refused(upload(shared.gw1, alice), "too_many_uploads")
        assert upload(shared.gw2, bob).status == 201
        assert held.finish().status == 201
    assert upload(shared.gw2, alice).status == 201
    assert refusals(shared.gw2, "concurrent_uploads") >= 1


def test_a_running_uploads_slot_outlives_its_lease_and_a_killed_gateways_does_not(
    shared: Shared, keys: DevKeys
) -> None:
    carol = keys.auth("carol")
    doomed = shared.gateway("gw-doomed").start()
    try:
        with held_upload(doomed, carol, uuid.uuid4().hex):
            time.sleep(2.5 * LEASE_SECONDS)  # its lease had ended long ago but for renewals
            assert_refused(upload(shared.gw1, carol), "too_many_uploads")
            doomed.kill()  # holding the slot, renewing it no more
            assert_refused(upload(shared.gw1, carol), "too_many_uploads")
            eventually(
                lambda: upload(shared.gw1, carol).status == 201,
                timeout=LEASE_SECONDS + 10,
                what="carol's slot freed after the dead gateway's lease",
            )
    finally:
        doomed.stop()


def test_the_request_rate_is_counted_across_instances(shared: Shared, keys: DevKeys) -> None:
    dave, erin = keys.auth("dave", role="operator"), keys.auth("erin", role="operator")
    assert upload(shared.gw1, dave).status == 201
    assert upload(shared.gw2, dave).status == 201
    seconds = assert_refused(upload(shared.gw1, dave), "rate_limited")
    assert seconds <= 30  # one request's share of the minute
    assert upload(shared.gw2, erin).status == 201
    assert refusals(shared.gw1, "requests") >= 1


def test_the_tokens_rate_limit_claim_overrides_its_roles_rate(
    shared: Shared, keys: DevKeys
) -> None:
    """The Admin Module's service account `uploader` has rate_limit 1 (a request per
    minute); users have no request rate of their own here."""
    token = {"Authorization": f"Bearer {shared.service_token(UPLOADER)}"}
    assert upload(shared.gw1, token).status == 201
    assert_refused(upload(shared.gw2, token), "rate_limited")
    frank = keys.auth("frank")  # the same role, no claim
    assert upload(shared.gw1, frank).status == 201
    assert upload(shared.gw2, frank).status == 201


def test_a_user_over_its_byte_quota_is_refused_at_the_start_on_any_instance(
    shared: Shared, keys: DevKeys
) -> None:
    gina, hank = keys.auth("gina", role="admin"), keys.auth("hank", role="admin")
    assert upload(shared.gw1, gina, 64 * KiB).status == 201  # exactly the quota
    assert upload(shared.gw2, gina, KiB).status == 201  # within it when it started
    seconds = assert_refused(upload(shared.gw1, gina), "byte_quota_exceeded")
    assert seconds <= 10  # ~1 KiB of a 64 KiB per 600 s quota, less what drained
    assert_refused(upload(shared.gw2, gina), "byte_quota_exceeded")
    assert upload(shared.gw1, hank).status == 201


# -- the script against a real Redis -----------------------------------------------------------


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(redis_server(tmp_path_factory.mktemp("fair-redis"))) as (server,):
        yield server


def with_ledger(
    server: ServerProcess, scenario: Callable[[RedisLedger], Awaitable[T]], lease: float = 1.0
) -> T:
    """`scenario` run against a RedisLedger on `server`, its connection closed after."""

    async def main() -> T:
        client = redis_client(redis_url(server), 2.0)
        pipe = PipelinedRedis(client, 2.0)
        try:
            return await scenario(RedisLedger(pipe, lease))
        finally:
            await pipe.close()
            await client.aclose()

    return run(main())


def test_the_script_takes_slots_up_to_the_limit_and_gives_them_back(
    real_redis: ServerProcess,
) -> None:
    limits = UserLimits(concurrent_uploads=2)

    async def scenario(ledger: RedisLedger) -> list[str | None]:
        outcomes = [(await ledger.admit("u1", f"s{n}", limits)).refused for n in range(3)]
        await ledger.count("u1", 0, limits, release="s0")
        outcomes.append((await ledger.admit("u1", "s3", limits)).refused)
        outcomes.append((await ledger.admit("u2", "s0", limits)).refused)
        return outcomes

    assert with_ledger(real_redis, scenario) == [
        None,
        None,
        "concurrent_uploads",
        None,
        None,
    ]


def test_the_scripts_leases_end_unless_renewed(real_redis: ServerProcess) -> None:
    limits = UserLimits(concurrent_uploads=1)

    async def scenario(ledger: RedisLedger) -> None:
        assert (await ledger.admit("renewed", "a", limits)).refused is None
        assert (await ledger.admit("lapsed", "a", limits)).refused is None
        for _ in range(6):  # 1.5 leases, renewing every quarter
            await asyncio.sleep(0.25)
            await ledger.renew([("renewed", "a")])
        assert (await ledger.admit("renewed", "b", limits)).refused == "concurrent_uploads"
        assert (await ledger.admit("lapsed", "b", limits)).refused is None
        await ledger.count("renewed", 0, limits, release="a")
        await ledger.renew([("renewed", "a")])  # given back: a renewal does not revive it
        assert (await ledger.admit("renewed", "c", limits)).refused is None

    with_ledger(real_redis, scenario, lease=1.0)


def test_the_scripts_budgets_refuse_then_drain_and_expire(real_redis: ServerProcess) -> None:
    rate = UserLimits(requests_per_minute=60)  # a second a request, a burst of 60
    quota = UserLimits(bytes_per_window=1000, window=1.0)

    async def scenario(ledger: RedisLedger) -> None:
        # All 61 sent at once on the pipelined connection: Redis runs them in a moment.
        outcomes = await asyncio.gather(*(ledger.admit("rate", f"s{n}", rate) for n in range(61)))
        assert [a.refused for a in outcomes[:60]] == [None] * 60
        assert outcomes[60].refused == "requests"
        assert 0 < outcomes[60].retry_after <= 1.0
        await asyncio.sleep(outcomes[60].retry_after + 0.1)
        assert (await ledger.admit("rate", "s", rate)).refused is None

        assert (await ledger.admit("bytes", "s", quota)).refused is None
        backlog = await ledger.count("bytes", 1500, quota, release=None)
        assert 1.4 <= backlog <= 1.5
        refused = await ledger.admit("bytes", "s", quota)
        assert refused.refused == "bytes" and 0 < refused.retry_after <= 0.5

    with_ledger(real_redis, scenario)
    db = redis.Redis(port=real_redis.port)
    for user in ("rate", "bytes"):
        ttl = db.pttl(keys(user)[0])
        assert 0 < ttl <= 62_000, (user, ttl)  # kept only until both budgets drain
    eventually(lambda: not db.exists(keys("bytes")[0]), timeout=5, what="drained budget gone")


def test_the_script_is_sent_again_after_redis_forgot_it(real_redis: ServerProcess) -> None:
    limits = UserLimits(concurrent_uploads=5)
    redis.Redis(port=real_redis.port).script_flush()

    async def scenario(ledger: RedisLedger) -> str | None:
        return (await ledger.admit("flushed", "a", limits)).refused

    assert with_ledger(real_redis, scenario) is None


def test_the_pipelined_connection_fails_fast_and_reconnects(tmp_path: Path) -> None:
    server = redis_server(tmp_path).start()
    port = server.port

    async def main() -> list[str]:
        client = redis_client(f"redis://127.0.0.1:{port}", 1.0)
        pipe = PipelinedRedis(client, 1.0)
        seen = []
        try:
            seen.append((await pipe.call("PING")).decode())
            replies = await asyncio.gather(*(pipe.call("INCR", "n") for _ in range(100)))
            assert replies == list(range(1, 101))  # in order, on one connection
            with pytest.raises(redis.ResponseError):
                await pipe.call("NOSUCHCOMMAND")
            seen.append((await pipe.call("PING")).decode())  # an error reply keeps it
            await asyncio.to_thread(server.kill)
            with pytest.raises((redis.ConnectionError, TimeoutError, OSError)):
                await pipe.call("PING")
            await asyncio.to_thread(restart)
            seen.append((await pipe.call("PING")).decode())
        finally:
            await pipe.close()
            await client.aclose()
        return seen

    def restart() -> None:
        nonlocal server
        server = redis_server(tmp_path, port=port).start()

    try:
        assert run(main()) == ["PONG", "PONG", "PONG"]
    finally:
        server.stop()

"""runtime/redis_io: the Redis URL spellings (plain and Sentinel, the `limits` library's),
the password kept out of messages, and what each URL builds (nothing connects here; the
failover itself is proven against real Sentinels in tests/integration/test_sentinel.py)."""

from __future__ import annotations

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool

from ingester_gateway.config import ConfigError, load_settings
from ingester_gateway.runtime.redis_io import (
    CommandNotRun,
    SentinelUrl,
    is_sentinel_url,
    parse_sentinel_url,
    redact_url,
    redis_client,
)
from tests.kit import run


def test_a_sentinel_url_names_its_sentinels_master_and_database() -> None:
    url = "redis+sentinel://sentinel-1:26379,sentinel-2:26380,[::1]:26381/artstore/3"
    assert parse_sentinel_url(url) == SentinelUrl(
        sentinels=(("sentinel-1", 26379), ("sentinel-2", 26380), ("::1", 26381)),
        master="artstore",
        db=3,
    )


def test_a_sentinel_url_may_carry_credentials_and_ask_for_tls() -> None:
    parsed = parse_sentinel_url("rediss+sentinel://gw:p%40ss@s1:26379/mymaster")
    assert (parsed.username, parsed.password, parsed.tls, parsed.db) == ("gw", "p@ss", True, 0)
    assert parse_sentinel_url("redis+sentinel://:secret@s1:26379/m/").password == "secret"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel://s1:26379", "no master name"),
        ("redis+sentinel://s1:26379/", "no master name"),
        ("redis+sentinel://s1/mymaster", "host:port"),
        ("redis+sentinel://s1:26379,/mymaster", "host:port"),
        ("redis+sentinel://s1:99999/mymaster", "host:port"),
        ("redis+sentinel://s1:26379/mymaster/zero", "must be a number"),
        ("redis+sentinel://s1:26379/mymaster/0/extra", "master-name[/db]"),
        ("redis+sentinel://s1:26379/mymaster?db=1", "no query"),
        ("redis://s1:6379/0", "not a Sentinel URL"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_with_the_reason(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace("[", r"\[")):
        parse_sentinel_url(url)


def test_the_setting_refuses_a_malformed_sentinel_url_at_start() -> None:
    env = {"INGESTER_AUTH_JWKS_URL": "http://admin/jwks", "INGESTER_REGISTRY": "redis"}
    good = load_settings({**env, "INGESTER_REDIS_URL": "redis+sentinel://s:26379/m/1"})
    assert good.redis_url == "redis+sentinel://s:26379/m/1"
    with pytest.raises(ConfigError, match=r"^INGESTER_REDIS_URL: no master name"):
        load_settings({**env, "INGESTER_REDIS_URL": "redis+sentinel://s:26379"})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://gw:hunter2@redis:6379", "rediss://gw:***@redis:6379"),
        (
            "redis+sentinel://gw:hunter2@s1:26379,s2:26379/m/0",
            "redis+sentinel://gw:***@s1:26379,s2:26379/m/0",
        ),
        ("redis+sentinel://s1:26379,s2:26379/m", "redis+sentinel://s1:26379,s2:26379/m"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_sentinel_url_builds_a_client_of_the_master_through_every_sentinel() -> None:
    url = "redis+sentinel://gw:pw@127.0.0.1:26379,127.0.0.1:26380/artstore/2"
    assert is_sentinel_url(url) and not is_sentinel_url("redis://127.0.0.1:6379")

    async def built() -> list[object]:
        client = redis_client(url, 0.5)
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        sentinels = pool.sentinel_manager.sentinels
        seen = [
            pool.service_name,
            pool.is_master,
            {k: pool.connection_kwargs[k] for k in ("db", "username", "password")},
            [s.connection_pool.connection_kwargs["port"] for s in sentinels],
            sentinels[0].connection_pool.connection_kwargs["password"],
            pool.connection_kwargs["socket_timeout"],
        ]
        await client.aclose()
        return seen

    assert run(built()) == [
        "artstore",
        True,
        {"db": 2, "username": "gw", "password": "pw"},
        [26379, 26380],
        "pw",  # as the limits library does: the URL's credentials go to the Sentinels too
        0.5,
    ]


def test_only_a_command_the_server_did_not_run_is_sent_again() -> None:
    """The client's retry policy knows one error: a replica's refusal. A lost answer (the
    command may have run) is the caller's to redo, never the client's."""

    async def policy() -> tuple[object, ...]:
        client = redis_client("redis://127.0.0.1:6379/0", 0.5)
        connection = client.connection_pool.make_connection()
        seen = (connection.retry._supported_errors, connection.retry.get_retries())
        await client.aclose()
        return seen

    assert run(policy()) == ((CommandNotRun,), 2)

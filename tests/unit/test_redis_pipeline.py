"""The pipelined Redis connection's command packing, against redis-py's own packer."""

from __future__ import annotations

from redis.asyncio.connection import Connection

from ingester_gateway.runtime.redis_pipeline import pack_command


def test_commands_are_packed_as_redis_py_packs_them() -> None:
    args = (
        "EVALSHA",
        "0" * 40,
        2,
        "ingester:fair:{Jürgen}",
        b"raw\r\nbytes",
        "admit",
        16,
        6e-05,
        0.1,
        -3,
        "",
    )
    assert pack_command(args) == b"".join(Connection().pack_command(*args))

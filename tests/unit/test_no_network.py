"""The unit tests' switch (tests/unit/conftest.py) holds: no TCP or UDP socket, and
asyncio still runs (its self-pipe is a unix socketpair)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from pytest_socket import SocketBlockedError

# pytest-socket warns as it refuses; here the refusal is the point.
pytestmark = pytest.mark.filterwarnings("ignore:A test tried to use socket:UserWarning")


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp", "udp"])
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_a_unit_test_cannot_open_a_network_socket(
    family: socket.AddressFamily, kind: socket.SocketKind
) -> None:
    with pytest.raises(SocketBlockedError):
        socket.socket(family, kind)


def test_a_unit_test_cannot_resolve_a_name() -> None:
    with pytest.raises(SocketBlockedError):
        socket.getaddrinfo("localhost", 80)


def test_an_event_loop_still_runs() -> None:
    async def tick() -> int:
        await asyncio.sleep(0)
        return 1

    assert asyncio.run(tick()) == 1

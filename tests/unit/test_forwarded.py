"""Who the client is behind proxies (pure): X-Forwarded-For only from trusted peers."""

from __future__ import annotations

import pytest

from ingester_gateway.api.forwarded import TrustedProxies


@pytest.mark.parametrize(
    ("trusted", "peer", "header", "address"),
    [
        ([], "10.0.0.5", "203.0.113.9", "10.0.0.5"),  # nobody trusted: the peer
        (["10.0.0.0/8"], "192.0.2.1", "203.0.113.9", "192.0.2.1"),  # an untrusted peer
        (["10.0.0.0/8"], "10.0.0.5", None, "10.0.0.5"),  # no header
        (["10.0.0.0/8"], "10.0.0.5", "203.0.113.9", "203.0.113.9"),
        # The rightmost hop not ours: what is left of it the client may have written.
        (["10.0.0.0/8"], "10.0.0.5", "1.2.3.4, 203.0.113.9, 10.0.0.7", "203.0.113.9"),
        (["10.0.0.0/8", "::1"], "::1", "2001:db8::1", "2001:db8::1"),
        # Garbage in the chain: the last address that could be checked.
        (["10.0.0.0/8"], "10.0.0.5", "not-an-ip, 10.0.0.6", "10.0.0.6"),
        (["10.0.0.0/8"], "10.0.0.5", "203.0.113.9, not-an-ip", "10.0.0.5"),
        # Every hop trusted: the leftmost.
        (["10.0.0.0/8"], "10.0.0.5", "10.0.0.6, 10.0.0.7", "10.0.0.6"),
        (["10.0.0.0/8"], None, "203.0.113.9", None),
    ],
)
def test_the_client_address_is_the_rightmost_untrusted_hop(
    trusted: list[str], peer: str | None, header: str | None, address: str | None
) -> None:
    assert TrustedProxies(trusted).client_address(peer, header) == address

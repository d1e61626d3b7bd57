"""Who the client is, and where it reached us, behind proxies (pure): X-Forwarded-For,
-Host, -Proto and -Prefix only from trusted peers."""

from __future__ import annotations

import pytest

from ingester_gateway.api.forwarded import PublicRoot, TrustedProxies


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


NGINX = ["127.0.0.1/32"]


@pytest.mark.parametrize(
    ("peer", "host", "proto", "prefix", "root"),
    [
        # What deploy/nginx.conf sends: the client's Host (with its port) and scheme.
        ("127.0.0.1", "gw.example:8080", "http", None, PublicRoot("http://gw.example:8080")),
        (
            "127.0.0.1",
            "gw.example",
            "HTTPS",
            "/ingester/",
            PublicRoot("https://gw.example", "/ingester"),
        ),
        (
            "127.0.0.1",
            "[2001:db8::1]:8443",
            "https",
            None,
            PublicRoot("https://[2001:db8::1]:8443"),
        ),
        # A host without a proto: the request's own scheme; a proto we do not know: too.
        ("127.0.0.1", "gw.example", None, None, PublicRoot("http://gw.example")),
        ("127.0.0.1", "gw.example", "gopher", None, PublicRoot("http://gw.example")),
        # A prefix alone: a path (relative to the request's origin) under the mount.
        ("127.0.0.1", None, "https", "/a/b", PublicRoot("", "/a/b")),
        # The nearest proxy's value: the rightmost of a list.
        (
            "127.0.0.1",
            "evil.example, gw.example",
            "http, https",
            None,
            PublicRoot("https://gw.example"),
        ),
        # From a peer we do not trust: nothing at all.
        ("127.0.0.2", "evil.example", "https", "/x", PublicRoot()),
        (None, "evil.example", "https", "/x", PublicRoot()),
        # Malformed: ignored, never pasted into a URL.
        ("127.0.0.1", "evil.example/path", None, None, PublicRoot()),
        ("127.0.0.1", "a b", None, None, PublicRoot()),
        ("127.0.0.1", "gw.example", None, "//evil.example", PublicRoot("http://gw.example")),
        ("127.0.0.1", None, None, "/x?y=1", PublicRoot()),
        ("127.0.0.1", None, None, "relative", PublicRoot()),
        ("127.0.0.1", None, None, "/", PublicRoot()),
    ],
)
def test_where_the_client_reached_us_comes_from_trusted_proxies_only(
    peer: str | None, host: str | None, proto: str | None, prefix: str | None, root: PublicRoot
) -> None:
    assert TrustedProxies(NGINX).public_root(peer, "http", host, proto, prefix) == root


def test_nobody_trusted_means_urls_relative_to_the_request() -> None:
    assert TrustedProxies([]).public_root("127.0.0.1", "http", "h", "https", "/p") == PublicRoot()
    assert PublicRoot("https://h:1", "/p").base == "https://h:1/p"

"""Who the client is, behind proxies we trust. Pure.

`X-Forwarded-For` is believed only when the peer is a configured trusted proxy, and
then only as far back as the chain stays within trusted proxies: the address is the
rightmost one that is not a trusted proxy (anything left of it the client may have
written itself).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    def __init__(self, proxies: Sequence[str]) -> None:
        self._networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(p, strict=False) for p in proxies
        )

    def trusts(self, address: str | None) -> bool:
        if not self._networks or address is None:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The uploader's address: the peer's, or what trusted proxies say it is."""
        if forwarded_for is None or not self.trusts(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        address = peer
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return address  # garbage in the chain: stop at what we could check
            address = hop
            if not self.trusts(hop):
                break
        return address

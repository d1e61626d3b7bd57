"""Who the client is, and where it reached us, behind proxies we trust. Pure.

`X-Forwarded-For` is believed only when the peer is a configured trusted proxy, and
then only as far back as the chain stays within trusted proxies: the address is the
rightmost one that is not a trusted proxy (anything left of it the client may have
written itself).

`X-Forwarded-Host`, `-Proto` and `-Prefix` (the URL the client used: nginx's host and
port, its scheme, the path it mounts the gateway at) are believed only from a trusted
peer too, and only as that peer wrote them: the rightmost value of a list, and only a
well-formed one. They make the URLs the gateway hands out (tus `Location`) work from
outside; from anyone else they are ignored, and those URLs stay paths relative to the
request's own.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ingester_gateway.runtime.edge import Networks

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)
# One or more non-empty path segments: never `//host` (a URL of another origin), `?`, `#`.
_PREFIX = re.compile(r"(?:/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})+)+")


@dataclass(frozen=True, slots=True)
class PublicRoot:
    """What goes before the gateway's own paths in a URL given to a client: `origin`
    (`https://host:port`, or "" for a URL relative to the request's) and `prefix` (the
    path a proxy mounts the gateway at, "" for none)."""

    origin: str = ""
    prefix: str = ""

    @property
    def base(self) -> str:
        return self.origin + self.prefix


def _last(value: str | None) -> str | None:
    """The rightmost of a comma list: what the nearest proxy wrote."""
    if value is None:
        return None
    return value.rsplit(",", 1)[-1].strip() or None


class TrustedProxies:
    def __init__(self, proxies: Sequence[str]) -> None:
        self._networks = Networks(proxies)

    def trusts(self, address: str | None) -> bool:
        return address in self._networks

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

    def public_root(
        self,
        peer: str | None,
        scheme: str,
        host: str | None,
        proto: str | None,
        prefix: str | None,
    ) -> PublicRoot:
        """Where the client reached us, from a trusted peer's `X-Forwarded-Host`,
        `-Proto` and `-Prefix` (`scheme` is the request's own, for a host without a
        proto); anything else, or a malformed value, is ignored."""
        if not self.trusts(peer):
            return PublicRoot()
        host, proto, prefix = _last(host), _last(proto), _last(prefix)
        mount = (prefix or "").rstrip("/")
        if mount and not _PREFIX.fullmatch(mount):
            mount = ""
        if host is None or not _HOST.fullmatch(host):
            return PublicRoot(prefix=mount)
        proto = proto.lower() if proto is not None else None
        chosen = proto if proto in ("http", "https") else scheme
        return PublicRoot(origin=f"{chosen}://{host}", prefix=mount)

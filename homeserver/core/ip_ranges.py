"""Which addresses outbound federation may connect to.

A remote server name is chosen by whoever sends us a server name (a key
query, a room id, a join's ``server_name``): without a filter anyone could
make us open connections to our own loopback, the private network we sit
in, or a cloud metadata address (server-side request forgery). Every
address we are about to connect to is checked against
``federation.ip_range_blocklist``, unless it is in
``federation.ip_range_allowlist`` (which wins, as in Synapse). IPv4-mapped
(``::ffff:a.b.c.d``) and IPv4-compatible (``::a.b.c.d``) IPv6 forms are
checked as the IPv4 address they carry, so no IPv6 spelling reaches a
blocked IPv4 range. ``0.0.0.0`` and ``::`` (which reach this host) are
always blocked unless allowed explicitly.

Pure: ``ipaddress`` only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Synapse's default ``ip_range_blacklist`` (its reference list), plus the
# "this network" ranges it always adds and the IPv6 discard / local NAT64
# prefixes.
DEFAULT_BLOCKLIST: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network": 0.0.0.0 reaches the local host
    "127.0.0.0/8",  # loopback
    "10.0.0.0/8",  # RFC 1918
    "172.16.0.0/12",  # RFC 1918
    "192.168.0.0/16",  # RFC 1918
    "100.64.0.0/10",  # CGNAT (RFC 6598)
    "192.0.0.0/24",  # IETF protocol assignments
    "169.254.0.0/16",  # link-local, cloud metadata
    "192.88.99.0/24",  # 6to4 relay anycast
    "198.18.0.0/15",  # benchmarking
    "192.0.2.0/24",  # documentation
    "198.51.100.0/24",  # documentation
    "203.0.113.0/24",  # documentation
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, broadcast
    "::/128",  # unspecified
    "::1/128",  # loopback
    "fe80::/10",  # link-local
    "fc00::/7",  # unique local (ULA)
    "2001:db8::/32",  # documentation
    "ff00::/8",  # multicast
    "fec0::/10",  # site-local (deprecated)
    "100::/64",  # discard
    "64:ff9b:1::/48",  # local-use NAT64
)

# The value tests and loopback setups use to open the loopback ranges.
LOOPBACK_ALLOWLIST: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


class InvalidRange(ValueError):
    """A blocklist or allowlist entry that is not an address or a CIDR range."""


def parse_ranges(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR ranges (or single addresses) → networks; InvalidRange names the
    first bad entry. Host bits set (``10.1.2.3/8``) are refused, since the
    operator probably meant something else."""
    out: list[IPNetwork] = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(str(entry).strip(), strict=True))
        except ValueError as e:
            raise InvalidRange(f"{entry!r} is not an IP address or CIDR range: {e}") from e
    return tuple(out)


def _canonical(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped or compatible form),
    else the address itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        packed = ip.packed
        # ::a.b.c.d (deprecated IPv4-compatible); not :: and ::1 themselves.
        if packed[:12] == bytes(12) and int(ip) > 1:
            return ipaddress.IPv4Address(packed[12:])
    return ip


@dataclass(frozen=True, slots=True)
class IPRangeFilter:
    """The blocklist with its allowlist exceptions."""

    blocklist: tuple[IPNetwork, ...]
    allowlist: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_strings(cls, blocklist: Iterable[str], allowlist: Iterable[str] = ()) -> IPRangeFilter:
        return cls(parse_ranges(blocklist), parse_ranges(allowlist))

    def allows(self, address: str) -> bool:
        """True when an outbound connection to ``address`` (an IP literal,
        optionally bracketed or with an IPv6 zone) is permitted. A string
        that is not an IP address is refused: callers pass resolved
        addresses only."""
        text = address.strip("[]").split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return False
        forms = {ip, _canonical(ip)}
        if any(f in net for f in forms for net in self.allowlist if f.version == net.version):
            return True
        return not any(
            f in net for f in forms for net in self.blocklist if f.version == net.version
        )


# The filter when nothing is configured (a frozen value, safe to share).
DEFAULT_FILTER = IPRangeFilter.from_strings(DEFAULT_BLOCKLIST)

"""The outbound address filter (core/ip_ranges.py): the default blocklist
covers what Synapse's does, IPv6 spellings of IPv4 addresses are judged as
the IPv4 address, and the allowlist wins."""

from __future__ import annotations

import pytest

from homeserver.core.ip_ranges import (
    DEFAULT_BLOCKLIST,
    DEFAULT_FILTER,
    LOOPBACK_ALLOWLIST,
    InvalidRange,
    IPRangeFilter,
    parse_ranges,
)

BLOCKED = [
    "127.0.0.1",  # loopback
    "127.1.2.3",
    "0.0.0.0",  # reaches this host
    "10.0.0.1",  # RFC 1918
    "172.16.5.4",
    "172.31.255.255",
    "192.168.1.1",
    "100.64.0.1",  # CGNAT
    "169.254.169.254",  # link-local: cloud metadata
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "255.255.255.255",
    "192.0.2.10",  # documentation
    "::1",
    "::",
    "[::1]",
    "fe80::1",  # link-local
    "fe80::1%eth0",
    "fd00::1",  # ULA
    "fc12:3456::1",
    "ff02::1",  # multicast
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:7f00:1",
    "::ffff:10.1.2.3",
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "not an address",
    "localhost",  # names are resolved first; the filter sees addresses only
]
ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "172.32.0.1",
    "100.128.0.1",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
]


@pytest.mark.parametrize("address", BLOCKED)
def test_default_blocklist_refuses(address: str) -> None:
    assert not DEFAULT_FILTER.allows(address)


@pytest.mark.parametrize("address", ALLOWED)
def test_default_blocklist_allows_public_addresses(address: str) -> None:
    assert DEFAULT_FILTER.allows(address)


def test_allowlist_wins_including_mapped_forms() -> None:
    f = IPRangeFilter.from_strings(DEFAULT_BLOCKLIST, LOOPBACK_ALLOWLIST)
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert f.allows(address)
    for address in ("10.0.0.1", "0.0.0.0", "169.254.169.254", "fd00::1"):
        assert not f.allows(address)
    narrow = IPRangeFilter.from_strings(DEFAULT_BLOCKLIST, ["127.0.0.1/32"])
    assert narrow.allows("127.0.0.1") and not narrow.allows("127.0.0.2")


@pytest.mark.parametrize("entry", ["10.0.0.1/8", "300.0.0.0/8", "", "example.org", "::1/129"])
def test_bad_ranges_are_refused(entry: str) -> None:
    with pytest.raises(InvalidRange):
        parse_ranges([entry])

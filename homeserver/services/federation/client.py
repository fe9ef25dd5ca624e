"""Outgoing federation requests: server discovery, signing, TLS.

Server discovery follows the Server-Server API "Resolving server names":

1. IP literal: that address, the given port or 8448; Host is the server name.
2. Hostname with an explicit port: A/AAAA of the hostname; Host is the server
   name; the certificate must be valid for the hostname.
3. ``https://<hostname>/.well-known/matrix/server`` (cached per its
   Cache-Control, 24 h by default, 48 h at most; failures for 2 minutes,
   doubling with each repeated failure up to 1 h — and while the site is
   unreachable or failing with a 5xx, a delegation it gave within the last
   48 h is kept), whose
   ``m.server`` delegates to ``<delegated>[:<port>]`` resolved by the same
   rules (IP literal / explicit port / SRV ``_matrix-fed._tcp`` then the
   deprecated ``_matrix._tcp`` / A records on 8448), Host and certificate
   being the delegated name.
4-6. Without a usable well-known: SRV ``_matrix-fed._tcp.<hostname>``, then
   ``_matrix._tcp.<hostname>``, then the hostname on 8448; Host and
   certificate being the hostname.

SRV records come from dnspython's asyncio resolver; A/AAAA from the system
resolver (hosts file, then DNS). Every address a connection is about to be
opened to — after well-known, SRV and A/AAAA resolution, on every hop and
redirect — passes ``federation.ip_range_blocklist`` /
``ip_range_allowlist`` (``core.ip_ranges``) first; a refused one is logged
and the request fails at once with a ``FederationError`` saying so.

Every request carries ``Authorization: X-Matrix`` signed by this server.
Certificates are verified unless ``federation.verify_certificates`` is off
(loopback tests only). The connection goes to the resolved host while SNI
and certificate checks use the name the spec says, through a resolver
override.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.resolver
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from signedjson.types import SigningKey
from yarl import URL

from homeserver.core.canonical import encode_canonical_json, parse_json
from homeserver.core.ids import InvalidID, ServerName
from homeserver.core.ip_ranges import DEFAULT_FILTER, IPRangeFilter
from homeserver.core.lru import LRU
from homeserver.core.signing import sign_request
from homeserver.services.locks import KeyedLocks

log = logging.getLogger(__name__)

DEFAULT_PORT = 8448
WELL_KNOWN_DEFAULT_TTL = 24 * 3600
WELL_KNOWN_MAX_TTL = 48 * 3600
# Errors: the spec recommends caching them "for up to an hour" and backing
# off exponentially for repeated failures.
WELL_KNOWN_FIRST_ERROR_TTL = 120
WELL_KNOWN_ERROR_TTL = 3600
WELL_KNOWN_MAX_BYTES = 50 * 1024
MAX_HOSTNAMES = 10_000  # hostnames whose delegation is remembered


def encode_path(template: str, *args: str) -> str:
    """``template`` with each ``{}`` replaced by a percent-encoded argument."""
    return template.format(*(quote(a, safe="") for a in args))


class FederationError(Exception):
    """A remote server answered with an error (``status`` set) or could not
    be reached (``status`` None; ``blocked`` when the address filter
    refused it)."""

    def __init__(
        self,
        destination: str,
        status: int | None,
        body: Any,
        message: str = "",
        *,
        blocked: bool = False,
    ) -> None:
        self.destination = destination
        self.blocked = blocked
        self.status = status
        self.body = body if isinstance(body, dict) else {}
        self.errcode = self.body.get("errcode") if isinstance(self.body, dict) else None
        super().__init__(
            message or f"{destination}: {status} {self.errcode or ''} {self.body.get('error', '')}"
        )


class BlockedAddress(OSError):
    """An outbound connection to an address the IP range filter refuses."""

    def __init__(self, address: str) -> None:
        super().__init__(f"{address} is blocked by federation.ip_range_blocklist")
        self.address = address


def blocked_message(destination: str) -> str:
    return f"{destination}: refused, its address is blocked by federation.ip_range_blocklist"


def _was_blocked(e: BaseException) -> bool:
    """Whether a connection failure came from the address filter (aiohttp
    wraps it, and several refused addresses merge into one OSError)."""
    seen: BaseException | None = e
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, BlockedAddress) or "federation.ip_range_blocklist" in str(seen):
            return True
        seen = getattr(seen, "os_error", None) or seen.__cause__
    return False


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to connect for a server name."""

    connect_host: str  # resolved through A/AAAA (or an IP literal)
    port: int
    host_header: str
    tls_name: str  # SNI and the name the certificate must be valid for


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def _split(name: str) -> tuple[str, int | None]:
    sn = ServerName.parse(name)
    return sn.host, sn.port


# ------------------------------------------------------------------ SRV lookups
SrvRecord = tuple[int, int, int, str]  # priority, weight, port, target
SRV_TIMEOUT_S = 5.0


class DnsSrvLookup:
    """SRV records through dnspython's asyncio resolver (the system's
    nameservers from resolv.conf; TTL-respecting cache, truncation, TCP
    fallback and IPv6 nameservers handled by the library). [] when the name
    has no SRV records, says the service is absent (target "."), or DNS
    cannot answer in time: discovery then falls back to port 8448."""

    def __init__(
        self, timeout: float = SRV_TIMEOUT_S, resolver: dns.asyncresolver.Resolver | None = None
    ) -> None:
        self._timeout = timeout
        self._resolver = resolver

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            try:
                r = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                log.warning("no nameservers configured (resolv.conf): asking 127.0.0.1")
                r = dns.asyncresolver.Resolver(configure=False)
                r.nameservers = ["127.0.0.1"]
            self._resolver = r
        if self._resolver.cache is None:
            self._resolver.cache = dns.resolver.Cache()
        return self._resolver

    async def __call__(self, name: str) -> list[SrvRecord]:
        try:
            answer = await self._get_resolver().resolve(
                name, "SRV", lifetime=self._timeout, search=False
            )
        except (dns.exception.DNSException, OSError) as e:
            log.debug("SRV lookup of %s: %s", name, e)
            return []
        out: list[SrvRecord] = []
        for rr in answer:
            target = rr.target.to_text(omit_final_dot=True)
            if target in ("", "."):
                continue  # RFC 2782: "." means the service is not available
            out.append((rr.priority, rr.weight, rr.port, target))
        return sorted(out, key=lambda r: (r[0], -r[1]))


# ------------------------------------------------------------- resolution
# (delegated name, seconds to keep it) — or (None, _) for "no delegation"
# (404, invalid JSON or content); raises when the site could not answer.
WellKnownFetcher = Callable[[str], Awaitable[tuple[str | None, float]]]
SrvLookup = Callable[[str], Awaitable[list[SrvRecord]]]


def _cache_ttl(headers: Mapping[str, str], now: float | None = None) -> float:
    """Seconds to keep a well-known answer: its Cache-Control max-age (or
    none for no-store / no-cache), else its Expires, else 24 h; at most 48 h."""
    cc = headers.get("Cache-Control", "").lower()
    if "no-store" in cc or "no-cache" in cc:
        return 0.0
    m = re.search(r"max-age\s*=\s*(\d+)", cc)
    if m:
        return float(min(int(m.group(1)), WELL_KNOWN_MAX_TTL))
    expires = headers.get("Expires")
    if expires is not None:
        try:
            at = parsedate_to_datetime(expires).timestamp()
        except (TypeError, ValueError, IndexError):
            return 0.0  # an invalid Expires means already expired (RFC 9111)
        left = at - (time.time() if now is None else now)
        return float(max(0.0, min(left, WELL_KNOWN_MAX_TTL)))
    return float(WELL_KNOWN_DEFAULT_TTL)


class ServerResolver:
    """Server name → Target, with the well-known cache."""

    def __init__(
        self,
        fetch_well_known: WellKnownFetcher,
        srv: SrvLookup | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch_well_known
        self._srv = srv or DnsSrvLookup()
        self._clock = clock
        # Keyed by names other servers choose (any server named in an event
        # may be looked up): bounded, the least recently used forgotten.
        self._well_known = LRU(MAX_HOSTNAMES)  # hostname → (delegated, expiry)
        # hostname → consecutive failures; the last delegation and when it came
        self._failures = LRU(MAX_HOSTNAMES)
        self._last_good = LRU(MAX_HOSTNAMES)
        self._locks = KeyedLocks()

    def forget(self, server_name: str) -> None:
        self._well_known.drop(ServerName(server_name).host)

    def cached(self, hostname: str) -> tuple[str | None, float] | None:
        """(delegated name or None for a failure, expiry on the clock) of the
        well-known answer kept for ``hostname``."""
        return self._well_known.get(hostname)

    async def _delegation(self, hostname: str) -> str | None:
        now = self._clock()
        hit = self._well_known.get(hostname)
        if hit is not None and hit[1] > now:
            return hit[0]
        async with self._locks(hostname):
            hit = self._well_known.get(hostname)
            if hit is not None and hit[1] > now:
                return hit[0]
            transient = False
            try:
                delegated, ttl = await self._fetch(hostname)
            except Exception as e:  # unreachable, timed out, 5xx: skip to SRV
                log.debug("well-known for %s failed: %s", hostname, e)
                delegated, ttl, transient = None, 0.0, True
            if delegated is not None:
                try:
                    ServerName.parse(delegated)
                except InvalidID:
                    delegated = None
            if delegated is not None:
                self._failures.drop(hostname)
                self._last_good.put(hostname, (delegated, now))
            else:
                n = self._failures.get(hostname, 0) + 1
                self._failures.put(hostname, n)
                ttl = float(
                    min(WELL_KNOWN_ERROR_TTL, WELL_KNOWN_FIRST_ERROR_TTL * 2 ** min(n - 1, 16))
                )
                good = self._last_good.get(hostname)
                if transient and good is not None and now - good[1] < WELL_KNOWN_MAX_TTL:
                    # A site briefly down does not cut off the server it delegates to.
                    delegated = good[0]
            self._well_known.put(hostname, (delegated, now + ttl))
            return delegated

    async def _via_srv(self, hostname: str) -> Target | None:
        for prefix in ("_matrix-fed._tcp.", "_matrix._tcp."):
            records = await self._srv(prefix + hostname)
            if records:
                _prio, _w, port, target = records[0]
                return Target(target, port, hostname, hostname)
        return None

    async def resolve(self, server_name: str) -> Target:
        host, port = _split(server_name)
        # 1. IP literal.
        if _is_ip(host):
            return Target(host.strip("[]"), port or DEFAULT_PORT, server_name, host.strip("[]"))
        # 2. Explicit port.
        if port is not None:
            return Target(host, port, server_name, host)
        # 3. Well-known delegation.
        delegated = await self._delegation(host)
        if delegated is not None:
            dhost, dport = _split(delegated)
            if _is_ip(dhost):  # 3.1
                return Target(dhost.strip("[]"), dport or DEFAULT_PORT, delegated, dhost)
            if dport is not None:  # 3.2
                return Target(dhost, dport, delegated, dhost)
            srv = await self._via_srv(dhost)  # 3.3 / 3.4
            if srv is not None:
                return srv
            return Target(dhost, DEFAULT_PORT, dhost, dhost)  # 3.5
        # 4 / 5: SRV for the hostname; 6: the hostname on 8448.
        srv = await self._via_srv(host)
        if srv is not None:
            return srv
        return Target(host, DEFAULT_PORT, host, host)


class _OverrideResolver(AbstractResolver):
    """Resolves the TLS name of a Target to its connect host (SRV targets)."""

    def __init__(self) -> None:
        self._default = DefaultResolver()
        self.overrides: dict[tuple[str, int], str] = {}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        target = self.overrides.get((host, port), host)
        results = await self._default.resolve(target, port, family)
        return [dict(r, hostname=host) for r in results]  # type: ignore[misc]

    async def close(self) -> None:
        await self._default.close()


# ---------------------------------------------------------------- client
class FederationClient:
    """Signed JSON requests to other homeservers."""

    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        *,
        verify_certificates: bool = True,
        resolver: ServerResolver | None = None,
        timeout: float = 60.0,
        well_known_port: int = 443,
        srv: SrvLookup | None = None,
        clock: Callable[[], float] = time.monotonic,
        ip_filter: IPRangeFilter | None = None,
    ) -> None:
        self.server_name = server_name
        self._ip_filter = ip_filter or DEFAULT_FILTER
        self._key = signing_key
        self._verify = verify_certificates
        self._timeout = timeout
        self._well_known_port = well_known_port
        self._session: aiohttp.ClientSession | None = None
        self._dns = _OverrideResolver()
        self.resolver = resolver or ServerResolver(self._fetch_well_known, srv, clock)
        # Called with a destination after any successful exchange (the sender
        # uses it to end a backoff early).
        self.on_reachable: list[Callable[[str], None]] = []

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self._verify:
            return False
        return ssl.create_default_context()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=self._dns,
                ssl=self._ssl(),
                limit=200,
                limit_per_host=16,
                socket_factory=self._open_socket,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout, sock_connect=10),
                auto_decompress=True,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open_socket(self, addr_info: Any) -> socket.socket:
        """The one place every outbound connection of this client opens its
        socket — federation requests, key fetches, well-known lookups and
        each redirect they follow, whatever name, SRV target or IP literal
        led there — so the address filter sees the final, resolved address
        (no DNS answer can swap it afterwards)."""
        family, type_, proto, _canon, sockaddr = addr_info
        address = str(sockaddr[0])
        if not self._ip_filter.allows(address):
            log.warning(
                "refused outbound connection to %s port %s: blocked by "
                "federation.ip_range_blocklist",
                address,
                sockaddr[1],
            )
            raise BlockedAddress(address)
        return socket.socket(family, type_, proto)

    def _refuse_literal(self, destination: str, host: str) -> None:
        """Fail at once (no connection attempt) for a blocked IP literal."""
        if _is_ip(host) and not self._ip_filter.allows(host):
            log.warning(
                "refused federation request to %s: %s is blocked by federation.ip_range_blocklist",
                destination,
                host,
            )
            raise FederationError(destination, None, {}, blocked_message(destination), blocked=True)

    async def _fetch_well_known(self, hostname: str) -> tuple[str | None, float]:
        port = "" if self._well_known_port == 443 else f":{self._well_known_port}"
        url = f"https://{hostname}{port}/.well-known/matrix/server"
        async with self.session.get(
            url, max_redirects=5, timeout=aiohttp.ClientTimeout(total=10)
        ) as resp:
            if resp.status >= 500:
                raise FederationError(hostname, resp.status, None, "well-known: server error")
            if resp.status != 200:
                return None, 0.0
            raw = await resp.content.read(WELL_KNOWN_MAX_BYTES + 1)
            if len(raw) > WELL_KNOWN_MAX_BYTES:
                return None, 0.0
            try:
                body = parse_json(raw)
            except ValueError:
                return None, 0.0
            server = body.get("m.server") if isinstance(body, dict) else None
            if not isinstance(server, str):
                return None, 0.0
            return server, _cache_ttl(resp.headers)

    async def request(
        self,
        method: str,
        destination: str,
        path: str,
        *,
        query: Mapping[str, str | int | Sequence[str]] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """Send a signed request; returns the parsed JSON body or raises
        FederationError. ``path`` is already percent-encoded."""
        if destination == self.server_name:
            raise FederationError(destination, None, {}, "refusing to federate with ourselves")
        uri = path
        if query:
            pairs: list[tuple[str, str]] = []
            for k, v in query.items():
                if isinstance(v, list | tuple):
                    pairs.extend((k, str(x)) for x in v)
                else:
                    pairs.append((k, str(v)))
            uri += "?" + urlencode(pairs, quote_via=quote)
        auth = sign_request(method, uri, self.server_name, destination, body, self._key)
        headers = {"Authorization": auth, "User-Agent": "homeserver"}
        data = None
        if body is not None:
            data = encode_canonical_json(body)
            headers["Content-Type"] = "application/json"
        try:
            target = await self.resolver.resolve(destination)
        except (InvalidID, ValueError) as e:
            raise FederationError(destination, None, {}, f"cannot resolve: {e}") from e
        self._refuse_literal(destination, target.connect_host)
        self._dns.overrides[(target.tls_name, target.port)] = target.connect_host
        host = f"[{target.tls_name}]" if ":" in target.tls_name else target.tls_name
        url = f"https://{host}:{target.port}{uri}"
        headers["Host"] = target.host_header
        try:
            async with self.session.request(
                method,
                URL(url, encoded=True),
                data=data,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout or self._timeout, sock_connect=10),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError) as e:
            if _was_blocked(e):
                raise FederationError(
                    destination, None, {}, blocked_message(destination), blocked=True
                ) from e
            raise FederationError(
                destination, None, {}, f"{destination}: {type(e).__name__}: {e}"
            ) from e
        for fn in self.on_reachable:
            fn(destination)
        try:
            parsed = parse_json(raw) if raw else {}
        except ValueError:
            parsed = {}
            if status < 300:
                raise FederationError(destination, status, {}, "response is not JSON") from None
        if status >= 300:
            raise FederationError(destination, status, parsed)
        return parsed

    async def get_json(
        self,
        destination: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        return await self.request("GET", destination, path, query=query, timeout=timeout)

    async def put_json(
        self,
        destination: str,
        path: str,
        body: Any,
        query: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        return await self.request("PUT", destination, path, query=query, body=body, timeout=timeout)

    async def post_json(
        self,
        destination: str,
        path: str,
        body: Any,
        query: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        return await self.request(
            "POST", destination, path, query=query, body=body, timeout=timeout
        )


def random_txn_suffix() -> str:
    return os.urandom(4).hex()

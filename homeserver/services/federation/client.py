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

Every request carries ``Authorization: X-Matrix`` signed by this server.
Certificates are verified unless ``federation.verify_certificates`` is off
(loopback tests only). The connection goes to the resolved host while SNI
and certificate checks use the name the spec says, through a resolver
override.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import random
import re
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from signedjson.types import SigningKey
from yarl import URL

from homeserver.core.canonical import encode_canonical_json
from homeserver.core.ids import InvalidID, ServerName
from homeserver.core.signing import sign_request

log = logging.getLogger(__name__)

DEFAULT_PORT = 8448
WELL_KNOWN_DEFAULT_TTL = 24 * 3600
WELL_KNOWN_MAX_TTL = 48 * 3600
# Errors: the spec recommends caching them "for up to an hour" and backing
# off exponentially for repeated failures.
WELL_KNOWN_FIRST_ERROR_TTL = 120
WELL_KNOWN_ERROR_TTL = 3600
WELL_KNOWN_MAX_BYTES = 50 * 1024


def encode_path(template: str, *args: str) -> str:
    """``template`` with each ``{}`` replaced by a percent-encoded argument."""
    return template.format(*(quote(a, safe="") for a in args))


class FederationError(Exception):
    """A remote server answered with an error (``status`` set) or could not
    be reached (``status`` None)."""

    def __init__(self, destination: str, status: int | None, body: Any, message: str = "") -> None:
        self.destination = destination
        self.status = status
        self.body = body if isinstance(body, dict) else {}
        self.errcode = self.body.get("errcode") if isinstance(self.body, dict) else None
        super().__init__(
            message or f"{destination}: {status} {self.errcode or ''} {self.body.get('error', '')}"
        )


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


def _nameservers() -> list[str]:
    try:
        with open("/etc/resolv.conf") as f:
            out = [
                line.split()[1]
                for line in f
                if line.startswith("nameserver") and len(line.split()) > 1
            ]
    except OSError:
        out = []
    return out or ["127.0.0.1"]


def _dns_query(name: str, qtype: int) -> tuple[int, bytes]:
    qid = random.randint(0, 0xFFFF)
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(
        bytes([len(p)]) + p for p in (label.encode("idna") for label in name.split(".") if label)
    )
    return qid, header + qname + b"\x00" + struct.pack(">HH", qtype, 1)


def _read_name(msg: bytes, off: int) -> tuple[str, int]:
    labels: list[str] = []
    end = None
    jumps = 0
    while True:
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if end is None:
                end = off + 2
            off = ((n & 0x3F) << 8) | msg[off + 1]
            jumps += 1
            if jumps > 20:
                raise ValueError("DNS name compression loop")
            continue
        if n == 0:
            off += 1
            break
        labels.append(msg[off + 1 : off + 1 + n].decode("ascii", "replace"))
        off += 1 + n
    return ".".join(labels), (end if end is not None else off)


def _parse_srv(msg: bytes, qid: int) -> list[SrvRecord]:
    rid, flags, qd, an, _ns, _ar = struct.unpack(">HHHHHH", msg[:12])
    if rid != qid or flags & 0x000F not in (0, 3):
        raise ValueError("bad DNS answer")
    off = 12
    for _ in range(qd):
        _, off = _read_name(msg, off)
        off += 4
    out: list[SrvRecord] = []
    for _ in range(an):
        _, off = _read_name(msg, off)
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", msg[off : off + 10])
        off += 10
        if rtype == 33:
            prio, weight, port = struct.unpack(">HHH", msg[off : off + 6])
            target, _ = _read_name(msg, off + 6)
            out.append((prio, weight, port, target.rstrip(".")))
        off += rdlen
    return out


class _DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, fut: asyncio.Future[bytes]) -> None:
        self.fut = fut

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.fut.done():
            self.fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)


async def _query_srv(ns: str, name: str, timeout: float) -> list[SrvRecord]:
    loop = asyncio.get_running_loop()
    qid, packet = _dns_query(name, 33)
    fut: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _DnsProtocol(fut),
        remote_addr=(ns, 53),
        family=socket.AF_INET6 if ":" in ns else 0,
    )
    try:
        transport.sendto(packet)
        data = await asyncio.wait_for(fut, timeout)
    finally:
        transport.close()
    return sorted(_parse_srv(data, qid), key=lambda r: (r[0], -r[1]))


async def lookup_srv(name: str, timeout: float = 3.0) -> list[SrvRecord]:
    """SRV records for ``name`` via the system's nameservers (UDP); [] when
    there are none or DNS cannot be reached."""
    for ns in _nameservers()[:2]:
        try:
            return await _query_srv(ns, name, timeout)
        except (OSError, TimeoutError, ValueError, struct.error, IndexError):
            continue
    return []


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
        srv: SrvLookup = lookup_srv,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch_well_known
        self._srv = srv
        self._clock = clock
        self._well_known: dict[str, tuple[str | None, float]] = {}
        # hostname → consecutive failures; the last delegation and when it came
        self._failures: dict[str, int] = {}
        self._last_good: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def forget(self, server_name: str) -> None:
        self._well_known.pop(ServerName(server_name).host, None)

    def cached(self, hostname: str) -> tuple[str | None, float] | None:
        """(delegated name or None for a failure, expiry on the clock) of the
        well-known answer kept for ``hostname``."""
        return self._well_known.get(hostname)

    async def _delegation(self, hostname: str) -> str | None:
        now = self._clock()
        hit = self._well_known.get(hostname)
        if hit is not None and hit[1] > now:
            return hit[0]
        lock = self._locks.setdefault(hostname, asyncio.Lock())
        async with lock:
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
                self._failures.pop(hostname, None)
                self._last_good[hostname] = (delegated, now)
            else:
                n = self._failures[hostname] = self._failures.get(hostname, 0) + 1
                ttl = float(
                    min(WELL_KNOWN_ERROR_TTL, WELL_KNOWN_FIRST_ERROR_TTL * 2 ** min(n - 1, 16))
                )
                good = self._last_good.get(hostname)
                if transient and good is not None and now - good[1] < WELL_KNOWN_MAX_TTL:
                    # A site briefly down does not cut off the server it delegates to.
                    delegated = good[0]
            self._well_known[hostname] = (delegated, now + ttl)
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
        srv: SrvLookup = lookup_srv,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server_name = server_name
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
                resolver=self._dns, ssl=self._ssl(), limit=200, limit_per_host=16
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
                body = json.loads(raw)
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
            raise FederationError(
                destination, None, {}, f"{destination}: {type(e).__name__}: {e}"
            ) from e
        for fn in self.on_reachable:
            fn(destination)
        try:
            parsed = json.loads(raw) if raw else {}
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

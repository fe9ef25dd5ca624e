"""SRV lookups through dnspython (``DnsSrvLookup``), against a small DNS
server on loopback: records sorted by priority then weight, "no such name"
and the "service absent" target "." as no records, the TCP retry of a
truncated UDP answer, and answers kept for their TTL."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import dns.asyncresolver
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from homeserver.services.federation.client import DnsSrvLookup
from tests.federation.conftest import free_port

ZONE = {
    "_matrix-fed._tcp.two.test.": ["20 5 8448 backup.two.test.", "10 0 443 main.two.test."],
    "_matrix-fed._tcp.absent.test.": ["0 0 0 ."],
    "_matrix-fed._tcp.big.test.": [f"10 {i} 8448 host{i}.big.test." for i in range(40)],
}


class TinyDNS:
    """Answers SRV questions from ZONE over UDP and TCP; a UDP answer that
    would not fit 512 bytes is sent truncated (TC), as real servers do."""

    def __init__(self) -> None:
        self.port = free_port()
        self.udp_queries = 0
        self.tcp_queries = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    def answer(self, wire: bytes, udp: bool) -> bytes:
        query = dns.message.from_wire(wire)
        resp = dns.message.make_response(query)
        name = query.question[0].name.to_text()
        if name not in ZONE:
            resp.set_rcode(dns.rcode.NXDOMAIN)
        else:
            resp.answer.append(dns.rrset.from_text_list(name, 300, "IN", "SRV", ZONE[name]))
        out = resp.to_wire()
        if udp and len(out) > 512:
            resp.answer = []
            resp.flags |= dns.flags.TC
            out = resp.to_wire()
        return out

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        dns_server = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                dns_server.udp_queries += 1
                self.t.sendto(dns_server.answer(data, udp=True), addr)  # type: ignore[attr-defined]

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            (n,) = struct.unpack(">H", await reader.readexactly(2))
            self.tcp_queries += 1
            out = self.answer(await reader.readexactly(n), udp=False)
            writer.write(struct.pack(">H", len(out)) + out)
            await writer.drain()
            writer.close()

        self._udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", self.port))
        self._tcp = await asyncio.start_server(tcp, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()


@pytest.fixture
async def lookup() -> AsyncIterator[tuple[DnsSrvLookup, TinyDNS]]:
    server = TinyDNS()
    await server.start()
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = server.port
    yield DnsSrvLookup(timeout=5, resolver=resolver), server
    await server.stop()


async def test_srv_records_sorted_and_cached(lookup: tuple[DnsSrvLookup, TinyDNS]) -> None:
    srv, server = lookup
    want = [(10, 0, 443, "main.two.test"), (20, 5, 8448, "backup.two.test")]
    assert await srv("_matrix-fed._tcp.two.test") == want
    assert await srv("_matrix-fed._tcp.two.test") == want
    assert server.udp_queries == 1  # the second answer came from the TTL cache


async def test_no_records_and_absent_service(lookup: tuple[DnsSrvLookup, TinyDNS]) -> None:
    srv, _ = lookup
    assert await srv("_matrix-fed._tcp.nothing.test") == []
    assert await srv("_matrix-fed._tcp.absent.test") == []


async def test_truncated_answer_is_retried_over_tcp(lookup: tuple[DnsSrvLookup, TinyDNS]) -> None:
    srv, server = lookup
    got = await srv("_matrix-fed._tcp.big.test")
    assert len(got) == 40 and got[0] == (10, 39, 8448, "host39.big.test")
    assert server.tcp_queries == 1


async def test_unreachable_dns_is_no_records() -> None:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = free_port()  # nobody answers
    assert await DnsSrvLookup(timeout=0.5, resolver=resolver)("_matrix-fed._tcp.x.test") == []

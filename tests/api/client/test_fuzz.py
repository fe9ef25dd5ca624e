"""A bounded, deterministic fuzz of the Client-Server API: schemathesis
generates requests from the spec's OpenAPI document for every operation we
implement, against the real app on a loopback port; any 500 or error answer
that is not Matrix JSON with an errcode fails the test. ``scripts/fuzz`` runs
the same with many more examples (and schemathesis's coverage phase)."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from homeserver.api.federation.common import FEDERATION
from tests import fuzz_hooks

pytestmark = pytest.mark.skipif(
    not fuzz_hooks.SPEC.exists(), reason=f"no OpenAPI spec at {fuzz_hooks.SPEC}"
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))


class _Offline(AbstractResolver):
    """No name resolves: generated ids name matrix.org, example.org, ...
    and the test must stay on loopback (they answer 502, unreachable)."""

    def __init__(self) -> None:
        self.overrides: dict[tuple[str, int], str] = {}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        raise OSError(f"{host}: no network in this test")

    async def close(self) -> None:
        return None


async def _no_srv(name: str) -> list[Any]:
    return []


async def test_fuzz_client_api(aiohttp_server, app) -> None:  # type: ignore[no-untyped-def]
    fed = app[FEDERATION].client
    fed._dns = _Offline()
    fed.resolver._srv = _no_srv
    server = await aiohttp_server(app, host="127.0.0.1")
    base = str(server.make_url("")).rstrip("/")
    fixtures = await asyncio.to_thread(fuzz_hooks.setup_fixtures, base)
    spec = await asyncio.to_thread(
        fuzz_hooks.implemented_only, fuzz_hooks.load_spec(), base, fixtures["access_token"]
    )
    assert len(spec["paths"]) > 30, "the probe found too few implemented operations"
    problems = await asyncio.to_thread(
        fuzz_hooks.run_fuzz, base, fixtures, spec, max_examples=EXAMPLES
    )
    assert not problems, "\n".join(problems)

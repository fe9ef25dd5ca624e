"""A third, minimal "server" run inside the test process, and signed raw
federation requests.

``FakeOrigin`` serves ``/_matrix/key/v2/server`` over TLS on a free loopback
port (server name ``localhost:<port>``), with keys whose validity and old
keys the test chooses, and signs requests as that server — an origin that
is in no room, whose keys our servers fetch for real. ``signed_request``
also signs as one of our own processes (with the key in its data dir).
"""

from __future__ import annotations

import json
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import signedjson.key
from aiohttp import web
from signedjson.types import SigningKey
from unpaddedbase64 import encode_base64
from yarl import URL

from homeserver.core.canonical import redact
from homeserver.core.room_versions import get_room_version
from homeserver.core.signing import sign_json, sign_request
from homeserver.services.server_keys import ensure_tls_certificate
from tests.federation.harness import OurServer

DAY_MS = 24 * 3600 * 1000


def insecure_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def key_id(key: SigningKey) -> str:
    return f"ed25519:{key.version}"


def signing_key_of(server: OurServer) -> SigningKey:
    with open(server.data_dir / "signing.key") as f:
        return signedjson.key.read_signing_keys(f)[0]


def b64(key: SigningKey) -> str:
    return encode_base64(key.verify_key.encode())


async def serve_tls(app: web.Application, port: int) -> web.AppRunner:
    """Serve ``app`` over HTTPS (a fresh self-signed certificate for
    localhost) on 127.0.0.1:``port``; clean up the returned runner."""
    tmp = Path(tempfile.mkdtemp(prefix="hs-tls-"))
    ensure_tls_certificate(tmp / "tls.crt", tmp / "tls.key", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp / "tls.crt", tmp / "tls.key")
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    return runner


class Answer:
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body!r})"


async def signed_request(
    method: str,
    target: OurServer,
    path: str,
    *,
    origin: str,
    key: SigningKey | None,
    body: Any = None,
    destination: str | None = None,
    sign_with: SigningKey | None = None,
    key_id_override: str | None = None,
    signed_path: str | None = None,
) -> Answer:
    """A federation request to ``target`` signed as ``origin`` (no
    Authorization at all when ``key`` is None). ``destination`` defaults to
    the target's name; ``sign_with`` signs with another key than the one
    named (a bad signature); ``key_id_override`` names another key id;
    ``signed_path`` signs another path than the one requested."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        dest = destination or target.server_name
        auth = sign_request(method, signed_path or path, origin, dest, body, sign_with or key)
        if sign_with is not None or key_id_override is not None:
            auth = auth.replace(
                f'key="{key_id(sign_with or key)}"', f'key="{key_id_override or key_id(key)}"'
            )
        headers["Authorization"] = auth
    data = json.dumps(body) if body is not None else None
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method,
            URL(f"https://127.0.0.1:{target.fed_port}{path}", encoded=True),
            data=data,
            headers=headers,
            ssl=insecure_tls(),
        ) as r,
    ):
        try:
            parsed = await r.json(content_type=None)
        except ValueError:
            parsed = {"raw": await r.text()}
        return Answer(r.status, parsed)


class FakeOrigin:
    """A server name with keys, and nothing else."""

    def __init__(self, port: int, *, valid_for_ms: int = 30 * DAY_MS) -> None:
        self.port = port
        self.server_name = f"localhost:{port}"
        self.key = signedjson.key.generate_signing_key("fake1")
        self.old_key = signedjson.key.generate_signing_key("fakeold")
        self.old_expired_ts = int(time.time() * 1000) - DAY_MS
        self.valid_for_ms = valid_for_ms
        self.key_requests = 0
        self.invites: list[dict[str, Any]] = []  # bodies of PUT /v2/invite received
        self._extra_routes: list[tuple[str, str, Any]] = []
        self._runner: web.AppRunner | None = None

    def key_response(self) -> dict[str, Any]:
        return sign_json(
            {
                "server_name": self.server_name,
                "valid_until_ts": int(time.time() * 1000) + self.valid_for_ms,
                "verify_keys": {key_id(self.key): {"key": b64(self.key)}},
                "old_verify_keys": {
                    key_id(self.old_key): {
                        "key": b64(self.old_key),
                        "expired_ts": self.old_expired_ts,
                    }
                },
            },
            self.server_name,
            self.key,
        )

    async def _keys(self, request: web.Request) -> web.Response:
        self.key_requests += 1
        return web.json_response(self.key_response())

    async def _invite(self, request: web.Request) -> web.Response:
        """Accept any invite: record the body, countersign the event."""
        body = await request.json()
        self.invites.append(body)
        ev = body["event"]
        rv = get_room_version(body["room_version"])
        sig = sign_json(redact(ev, rv), self.server_name, self.key)["signatures"]
        signed = dict(ev, signatures={**ev.get("signatures", {}), **sig})
        return web.json_response({"event": signed})

    def add_route(self, method: str, path: str, handler: Any) -> None:
        """Serve one more (unauthenticated) endpoint; call before ``start``."""
        self._extra_routes.append((method, path, handler))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/_matrix/key/v2/server", self._keys)
        app.router.add_put("/_matrix/federation/v2/invite/{room_id}/{event_id}", self._invite)
        for method, path, handler in self._extra_routes:
            app.router.add_route(method, path, handler)
        self._runner = await serve_tls(app, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def request(self, method: str, target: OurServer, path: str, **kw: Any) -> Answer:
        return await signed_request(
            method, target, path, origin=self.server_name, key=self.key, **kw
        )

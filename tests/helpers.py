"""A thin Matrix client over aiohttp's test client, for readable tests."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from homeserver.config import Config, load_config

CS = "/_matrix/client/v3"


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    """The test server's config (server name hs.test, data under tmp_path),
    with dotted-key overrides such as ``admins=[...]``. Rate limits are lifted
    explicitly, as the Synapse peer's are; tests/security turns them on
    (``**{"rate_limits.enabled": True}``)."""
    return load_config(
        None,
        overrides={
            "server_name": "hs.test",
            "data_dir": str(tmp_path / "data"),
            "rate_limits.enabled": False,
            **overrides,
        },
        environ={},
    )


@dataclass
class User:
    user_id: str
    token: str
    device_id: str
    http: MatrixClient

    async def call(
        self, method: str, path: str, body: Any = None, *, expect: int | None = 200, **kw: Any
    ) -> Any:
        return await self.http.call(method, path, body, token=self.token, expect=expect, **kw)

    async def create_room(self, **body: Any) -> str:
        return str((await self.call("POST", f"{CS}/createRoom", body))["room_id"])

    async def send(
        self,
        room_id: str,
        body: str = "hello",
        *,
        type: str = "m.room.message",
        content: dict[str, Any] | None = None,
        expect: int | None = 200,
    ) -> Any:
        content = content if content is not None else {"msgtype": "m.text", "body": body}
        r = await self.call(
            "PUT", f"{CS}/rooms/{room_id}/send/{type}/{uuid.uuid4().hex}", content, expect=expect
        )
        return r.get("event_id") if expect == 200 else r

    async def state(
        self, room_id: str, type: str, state_key: str = "", *, expect: int | None = 200
    ) -> Any:
        return await self.call(
            "GET", f"{CS}/rooms/{room_id}/state/{type}/{state_key}", expect=expect
        )

    async def put_state(
        self,
        room_id: str,
        type: str,
        content: dict[str, Any],
        state_key: str = "",
        *,
        expect: int | None = 200,
    ) -> Any:
        return await self.call(
            "PUT", f"{CS}/rooms/{room_id}/state/{type}/{state_key}", content, expect=expect
        )

    async def membership(
        self, room_id: str, action: str, *, expect: int | None = 200, **body: Any
    ) -> Any:
        return await self.call("POST", f"{CS}/rooms/{room_id}/{action}", body, expect=expect)


class MatrixClient:
    def __init__(self, http: TestClient) -> None:
        self.http = http

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        expect: int | None = 200,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            h.setdefault("Content-Type", "application/json")
        resp = await self.http.request(method, path, data=data, headers=h)
        text = await resp.text()
        assert resp.content_type == "application/json", (resp.status, resp.content_type, text)
        out = json.loads(text)
        if expect is not None:
            assert resp.status == expect, (method, path, resp.status, out)
        if isinstance(out, dict):
            out.setdefault("_status", resp.status) if expect is None else None
        return out

    async def register(self, name: str, password: str = "password") -> User:
        r = await self.call(
            "POST",
            f"{CS}/register",
            {"username": name, "password": password, "auth": {"type": "m.login.dummy"}},
        )
        return User(r["user_id"], r["access_token"], r["device_id"], self)

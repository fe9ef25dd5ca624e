"""/voip/turnServer and /thirdparty: honest answers without bridges or TURN."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path

import pytest

from homeserver.config import ConfigError, load_config
from tests.helpers import CS, MatrixClient

TURN = {
    "voip.turn_uris": ["turn:turn.example.org:3478?transport=udp"],
    "voip.turn_shared_secret": "s3cret",
    "voip.turn_user_lifetime_ms": 3_600_000,
}


@pytest.mark.config(TURN)
async def test_turn_credentials_from_the_shared_secret(client: MatrixClient) -> None:
    alice = await client.register("alice")
    r = await alice.call("GET", f"{CS}/voip/turnServer")
    assert r["uris"] == ["turn:turn.example.org:3478?transport=udp"] and r["ttl"] == 3600
    expiry, user = r["username"].split(":", 1)
    assert user == alice.user_id and int(expiry) > time.time() + 3500
    mac = hmac.new(b"s3cret", r["username"].encode(), hashlib.sha1).digest()
    assert r["password"] == base64.b64encode(mac).decode()
    await client.call("GET", f"{CS}/voip/turnServer", expect=401)


async def test_thirdparty_answers(client: MatrixClient) -> None:
    alice = await client.register("alice")
    assert await alice.call("GET", f"{CS}/thirdparty/protocols") == {}
    r = await alice.call("GET", f"{CS}/thirdparty/protocol/irc", expect=404)
    assert r["errcode"] == "M_NOT_FOUND"
    assert await alice.call("GET", f"{CS}/thirdparty/location?alias=%23a:b") == []


def test_turn_config_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"voip\.turn_uris"):
        load_config(None, overrides={"voip.turn_uris": ["http://x"]}, environ={})
    cfg = load_config(None, environ={})
    assert cfg.voip.turn_uris == () and cfg.voip.turn_shared_secret is None

"""Registration, login, logout, whoami and the error middleware."""

from __future__ import annotations

from tests.helpers import CS, MatrixClient


async def test_versions_and_well_known(client: MatrixClient) -> None:
    r = await client.call("GET", "/_matrix/client/versions")
    assert "v1.12" in r["versions"] and "v1.1" in r["versions"]
    r = await client.call("GET", "/.well-known/matrix/server")
    assert r["m.server"].endswith(":8448")
    r = await client.call("GET", "/.well-known/matrix/client")
    assert r["m.homeserver"]["base_url"].startswith("http")
    r = await client.call("GET", "/_matrix/federation/v1/version")
    assert r["server"]["name"] == "homeserver"


async def test_register_login_whoami_logout(client: MatrixClient) -> None:
    alice = await client.register("alice", "secret")
    assert alice.user_id == "@alice:hs.test"
    who = await alice.call("GET", f"{CS}/account/whoami")
    assert who["user_id"] == alice.user_id and who["device_id"] == alice.device_id

    # login by localpart and by full id
    r = await client.call(
        "POST",
        f"{CS}/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "alice"},
            "password": "secret",
        },
    )
    assert r["user_id"] == alice.user_id
    token2 = r["access_token"]
    r = await client.call(
        "POST",
        f"{CS}/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "@alice:hs.test"},
            "password": "secret",
            "device_id": "PHONE",
        },
    )
    assert r["device_id"] == "PHONE"

    # logout invalidates exactly that token
    await client.call("POST", f"{CS}/logout", {}, token=token2)
    r = await client.call("GET", f"{CS}/account/whoami", token=token2, expect=401)
    assert r["errcode"] == "M_UNKNOWN_TOKEN"
    await alice.call("GET", f"{CS}/account/whoami")

    # logout/all invalidates every token
    await alice.call("POST", f"{CS}/logout/all", {})
    r = await alice.call("GET", f"{CS}/account/whoami", expect=401)
    assert r["errcode"] == "M_UNKNOWN_TOKEN"


async def test_wrong_password_is_forbidden(client: MatrixClient) -> None:
    await client.register("bob", "right")
    r = await client.call(
        "POST",
        f"{CS}/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "bob"},
            "password": "wrong",
        },
        expect=403,
    )
    assert r["errcode"] == "M_FORBIDDEN"
    r = await client.call(
        "POST",
        f"{CS}/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "nobody"},
            "password": "x",
        },
        expect=403,
    )
    assert r["errcode"] == "M_FORBIDDEN"
    r = await client.call("GET", f"{CS}/login")
    assert {"type": "m.login.password"} in r["flows"]


async def test_register_errors(client: MatrixClient) -> None:
    await client.register("carol")
    for username, errcode in (
        ("carol", "M_USER_IN_USE"),
        ("Bad Name!", "M_INVALID_USERNAME"),
        ("_homeserver", "M_EXCLUSIVE"),  # the server's system user
    ):
        r = await client.call(
            "POST",
            f"{CS}/register",
            {"username": username, "password": "x", "auth": {"type": "m.login.dummy"}},
            expect=400,
        )
        assert r["errcode"] == errcode, username
    # without auth: the user-interactive 401 with the dummy flow
    r = await client.call(
        "POST", f"{CS}/register", {"username": "dave", "password": "x"}, expect=401
    )
    assert r["flows"] == [{"stages": ["m.login.dummy"]}] and r["session"]
    r = await client.call("GET", f"{CS}/register/available?username=dave")
    assert r["available"] is True
    r = await client.call("GET", f"{CS}/register/available?username=carol", expect=400)
    assert r["errcode"] == "M_USER_IN_USE"
    r = await client.call("GET", f"{CS}/register/available?username=_homeserver", expect=400)
    assert r["errcode"] == "M_EXCLUSIVE"
    r = await client.call(
        "POST", f"{CS}/register", {"username": 5, "auth": {"type": "m.login.dummy"}}, expect=400
    )
    assert r["errcode"] == "M_BAD_JSON"


async def test_error_middleware_codes(client: MatrixClient) -> None:
    r = await client.call("GET", "/_matrix/client/v3/no/such/thing", expect=404)
    assert r["errcode"] == "M_UNRECOGNIZED"
    r = await client.call("DELETE", "/_matrix/client/versions", expect=405)
    assert r["errcode"] == "M_UNRECOGNIZED"
    r = await client.call("POST", f"{CS}/login", raw=b"{not json", expect=400)
    assert r["errcode"] == "M_NOT_JSON"
    r = await client.call("POST", f"{CS}/login", raw=b'{"a": "\xff\xfe"}', expect=400)
    assert r["errcode"] == "M_NOT_JSON"
    r = await client.call("POST", f"{CS}/login", raw=b"[1, 2]", expect=400)
    assert r["errcode"] == "M_NOT_JSON"
    r = await client.call("POST", f"{CS}/login", {"type": 1}, expect=400)
    assert r["errcode"] == "M_BAD_JSON"
    r = await client.call("GET", f"{CS}/account/whoami", expect=401)
    assert r["errcode"] == "M_MISSING_TOKEN"
    r = await client.call("GET", f"{CS}/account/whoami", token="nonsense", expect=401)
    assert r["errcode"] == "M_UNKNOWN_TOKEN"
    r = await client.call(
        "POST", f"{CS}/login", raw=b'{"x":"' + b"a" * (2 * 1024 * 1024) + b'"}', expect=413
    )
    assert r["errcode"] == "M_TOO_LARGE"


async def test_cors_headers(client: MatrixClient) -> None:
    resp = await client.http.options(
        "/_matrix/client/v3/login",
        headers={"Origin": "http://example.org", "Access-Control-Request-Method": "POST"},
    )
    assert resp.status in (200, 204)
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    resp = await client.http.get("/_matrix/client/versions")
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    resp = await client.http.get("/_matrix/client/v3/nope")
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_server_key_is_signed(client: MatrixClient) -> None:
    import signedjson.key
    import signedjson.sign
    from unpaddedbase64 import decode_base64

    r = await client.call("GET", "/_matrix/key/v2/server")
    assert r["server_name"] == "hs.test"
    ((key_id, key),) = r["verify_keys"].items()
    verify_key = signedjson.key.decode_verify_key_bytes(key_id, decode_base64(key["key"]))
    signedjson.sign.verify_signed_json(r, "hs.test", verify_key)


async def test_no_turn_server_configured_is_an_empty_object(client: MatrixClient) -> None:
    alice = await client.register("alice")
    assert await alice.call("GET", f"{CS}/voip/turnServer") == {}


async def test_liveness_and_readiness(client: MatrixClient) -> None:
    assert await client.call("GET", "/health") == {"status": "ok"}
    ready = await client.call("GET", "/health/ready")
    assert ready["status"] == "ready" and ready["schema_version"] >= 1

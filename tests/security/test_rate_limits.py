"""Rate limits, written as the attacks they stop (issue 16, finding 4):
password guessing, registration floods, message, room, join and invite
floods, and a remote server flooding our federation listener. Each attack
gets 429 M_LIMIT_EXCEEDED with ``retry_after_ms`` and a ``Retry-After``
header once past the limit. The limits here are the defaults (Synapse's
numbers); only the federation test shortens its knobs to stay quick."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from homeserver.api.appkeys import ACCOUNTS
from homeserver.config import Config
from homeserver.storage.database import Database
from tests.federation.conftest import free_port, running_server
from tests.federation.fake import FakeOrigin
from tests.federation.harness import OurServer
from tests.helpers import CS, MatrixClient, User, make_config


def limited_config(tmp_path: Path, **overrides: Any) -> Config:
    """The defaults, rate limits on (the shared ``config`` fixture lifts them)."""
    return make_config(
        tmp_path, **{"admins": ["@boss:hs.test"], "rate_limits.enabled": True, **overrides}
    )


async def client_for(aiohttp_client: Any, config: Config, db: Database) -> MatrixClient:
    """Another server process (an app) on the same database."""
    from homeserver.app import create_app

    return MatrixClient(await aiohttp_client(create_app(config, db)))


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return limited_config(tmp_path)


async def make_user(client: MatrixClient, name: str) -> User:
    """An account made by the operator (setup, not part of the attack)."""
    app = client.http.server.app
    accounts = app[ACCOUNTS]
    user_id = await accounts.register(name, "password")
    session = await accounts.create_session(user_id, None, None)
    return User(user_id, session.access_token, session.device_id, client)


async def raw(
    client: MatrixClient, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) of one request."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = await client.http.request(method, path, json=body, headers=headers)
    return resp.status, await resp.json(), dict(resp.headers)


def assert_limited(status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    assert status == 429, (status, body)
    assert body["errcode"] == "M_LIMIT_EXCEEDED"
    assert isinstance(body["retry_after_ms"], int) and body["retry_after_ms"] > 0
    assert int(headers["Retry-After"]) == -(-body["retry_after_ms"] // 1000)


def login_body(user: str, password: str) -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    }


# ------------------------------------------------------------------ login
async def test_password_guessing_is_stopped(client: MatrixClient) -> None:
    """30 wrong passwords in a row: 3 failures, then 429s — and while the
    account is over its failure limit even the right password gets 429."""
    await make_user(client, "victim")
    answers = [
        await raw(client, "POST", f"{CS}/login", login_body("victim", f"guess{i}"))
        for i in range(30)
    ]
    assert [s for s, _, _ in answers[:3]] == [403, 403, 403]
    for answer in answers[3:]:
        assert_limited(*answer)
    assert_limited(*await raw(client, "POST", f"{CS}/login", login_body("victim", "password")))


async def test_failed_logins_count_across_processes(
    client: MatrixClient, aiohttp_client: Any, config: Config, db: Database
) -> None:
    """Two server processes on one database (two apps here): failures made
    through one are counted by the other, so spreading guesses does not help."""
    other = await client_for(aiohttp_client, config, db)
    await make_user(client, "shared")
    for i in range(3):
        status, _, _ = await raw(client, "POST", f"{CS}/login", login_body("shared", f"bad{i}"))
        assert status == 403
    assert_limited(*await raw(other, "POST", f"{CS}/login", login_body("shared", "bad3")))


async def test_logins_per_address(client: MatrixClient) -> None:
    """One address trying many accounts (one guess each) is stopped after 5."""
    statuses = []
    for i in range(8):
        status, body, headers = await raw(
            client, "POST", f"{CS}/login", login_body(f"someone{i}", "pw")
        )
        statuses.append(status)
    assert statuses[:5] == [403] * 5
    assert statuses[5:] == [429] * 3
    assert_limited(status, body, headers)


async def test_admin_exemption_does_not_cover_login(client: MatrixClient) -> None:
    """Logins are limited before anyone is known to be an admin."""
    await make_user(client, "boss")
    for i in range(3):
        await raw(client, "POST", f"{CS}/login", login_body("boss", f"bad{i}"))
    assert_limited(*await raw(client, "POST", f"{CS}/login", login_body("boss", "password")))


async def test_stolen_token_cannot_guess_the_password(client: MatrixClient) -> None:
    """With someone's access token, guessing their password through the
    password-change UIA stage hits the same failure limit as /login."""
    victim = await make_user(client, "victim")
    answers = [
        await raw(
            client,
            "POST",
            f"{CS}/account/password",
            {
                "new_password": "mine now",
                "auth": {"type": "m.login.password", "password": f"guess{i}"},
            },
            victim.token,
        )
        for i in range(10)
    ]
    assert [s for s, _, _ in answers[:3]] == [401] * 3
    for answer in answers[3:]:
        assert_limited(*answer)
    # ... and the owner's logins are held up too, not the attacker's alone.
    assert_limited(*await raw(client, "POST", f"{CS}/login", login_body("victim", "password")))


# ------------------------------------------------------------ registration
async def test_registration_flood(client: MatrixClient) -> None:
    """20 registrations from one address: 3 accounts, then 429s; the UIA
    round trip that only asks for the flows does not use up the allowance."""
    status, _, _ = await raw(client, "POST", f"{CS}/register", {"username": "first"})
    assert status == 401
    answers = [
        await raw(
            client,
            "POST",
            f"{CS}/register",
            {"username": f"bot{i}", "password": "pw", "auth": {"type": "m.login.dummy"}},
        )
        for i in range(20)
    ]
    assert [s for s, _, _ in answers[:3]] == [200, 200, 200]
    for answer in answers[3:]:
        assert_limited(*answer)


async def test_registration_token_guessing_is_limited(client: MatrixClient) -> None:
    """The validity endpoint answers 5 guesses, then 429 (the spec asks for it)."""
    path = "/_matrix/client/v1/register/m.login.registration_token/validity"
    for i in range(5):
        status, body, _ = await raw(client, "GET", f"{path}?token=guess{i}")
        assert (status, body) == (200, {"valid": False})
    assert_limited(*await raw(client, "GET", f"{path}?token=guess5"))


# ---------------------------------------------------------------- sending
async def test_message_flood_then_waiting_as_told_gets_in(client: MatrixClient) -> None:
    spammer = await make_user(client, "spammer")
    room = await spammer.create_room()
    answers = [
        await raw(
            client,
            "PUT",
            f"{CS}/rooms/{room}/send/m.room.message/t{i}",
            {"msgtype": "m.text", "body": "spam"},
            spammer.token,
        )
        for i in range(30)
    ]
    assert [s for s, _, _ in answers[:10]] == [200] * 10
    for answer in answers[10:]:
        assert_limited(*answer)
    # State events and redactions draw on the same allowance.
    assert_limited(
        *await raw(
            client, "PUT", f"{CS}/rooms/{room}/state/m.room.topic", {"topic": "x"}, spammer.token
        )
    )
    wait_ms = answers[-1][1]["retry_after_ms"]
    await asyncio.sleep(wait_ms / 1000 + 0.05)
    await spammer.send(room, "after waiting")


async def test_admins_are_exempt(client: MatrixClient) -> None:
    boss = await make_user(client, "boss")
    room = await boss.create_room()
    for i in range(30):
        await boss.send(room, f"announcement {i}")


async def test_admins_can_be_limited(aiohttp_client: Any, db: Database, tmp_path: Path) -> None:
    config = limited_config(tmp_path, **{"rate_limits.exempt_admins": False})
    boss = await make_user(await client_for(aiohttp_client, config, db), "boss")
    room = await boss.create_room()
    for i in range(10):
        await boss.send(room, f"announcement {i}")
    assert (await boss.send(room, "one more", expect=429))["errcode"] == "M_LIMIT_EXCEEDED"


async def test_room_creation_flood(client: MatrixClient) -> None:
    user = await make_user(client, "builder")
    answers = [await raw(client, "POST", f"{CS}/createRoom", {}, user.token) for _ in range(12)]
    assert [s for s, _, _ in answers[:10]] == [200] * 10
    for answer in answers[10:]:
        assert_limited(*answer)


# ------------------------------------------------------------ joins, invites
async def test_join_flood_per_user(client: MatrixClient) -> None:
    """One user joining room after room: 10, then 429."""
    boss = await make_user(client, "boss")  # exempt: makes the rooms
    rooms = [await boss.create_room(preset="public_chat") for _ in range(12)]
    joiner = await make_user(client, "joiner")
    answers = [await raw(client, "POST", f"{CS}/join/{r}", {}, joiner.token) for r in rooms]
    assert [s for s, _, _ in answers[:10]] == [200] * 10
    assert_limited(*answers[10])


async def test_join_flood_per_room(client: MatrixClient) -> None:
    """Many accounts joining one room at once: 10, then 429 for the room."""
    boss = await make_user(client, "boss")
    room = await boss.create_room(preset="public_chat")
    users = [await make_user(client, f"wave{i}") for i in range(12)]
    answers = [await raw(client, "POST", f"{CS}/rooms/{room}/join", {}, u.token) for u in users]
    assert [s for s, _, _ in answers[:10]] == [200] * 10
    assert_limited(*answers[10])


async def test_invite_flood_per_room_and_issuer(client: MatrixClient) -> None:
    inviter = await make_user(client, "inviter")
    room = await inviter.create_room()
    targets = [await make_user(client, f"target{i}") for i in range(12)]
    answers = [
        await raw(
            client, "POST", f"{CS}/rooms/{room}/invite", {"user_id": t.user_id}, inviter.token
        )
        for t in targets
    ]
    assert [s for s, _, _ in answers[:10]] == [200] * 10
    assert_limited(*answers[10])


async def test_invites_to_one_user(client: MatrixClient) -> None:
    """Invites received by one user, from rooms of different inviters: 5, then 429."""
    victim = await make_user(client, "popular")
    answers = []
    for i in range(7):
        inviter = await make_user(client, f"fan{i}")
        room = await inviter.create_room()
        answers.append(
            await raw(
                client,
                "POST",
                f"{CS}/rooms/{room}/invite",
                {"user_id": victim.user_id},
                inviter.token,
            )
        )
    assert [s for s, _, _ in answers[:5]] == [200] * 5
    assert_limited(*answers[5])


# ------------------------------------------------------------- federation
def with_limits(**settings: str) -> dict[str, str]:
    """Environment of a real process with its rate limits on, plus
    ``rate_limits.<key>`` settings (keys in capitals, ``_`` for ``.``)."""
    return {
        "HOMESERVER_RATE_LIMITS_ENABLED": "true",
        **{f"HOMESERVER_RATE_LIMITS_{k}": v for k, v in settings.items()},
    }


@pytest.fixture
async def limited_server(pg_url: str, template_url: str) -> AsyncIterator[OurServer]:
    """Federation limits with short knobs: a long sleep so the flood piles
    up, a low reject limit."""
    env = with_limits(
        FEDERATION_SLEEP_LIMIT="5", FEDERATION_SLEEP_DELAY_MS="3000", FEDERATION_REJECT_LIMIT="15"
    )
    async with running_server(pg_url, "limited", env) as srv:
        yield srv


async def test_federation_flood_from_one_origin(limited_server: OurServer) -> None:
    """A remote server firing 60 signed requests at once: past the sleep
    limit they wait, past the reject limit they get 429 — and another
    origin is served meanwhile without delay."""
    flooder, bystander = FakeOrigin(free_port()), FakeOrigin(free_port())
    await flooder.start()
    await bystander.start()
    user = quote(f"@nobody:{limited_server.server_name}", safe="")
    path = f"/_matrix/federation/v1/query/profile?user_id={user}"
    try:
        # Our server fetches the origins' keys on their first request.
        assert (await flooder.request("GET", limited_server, path)).status != 401
        assert (await bystander.request("GET", limited_server, path)).status != 401
        await asyncio.sleep(1.1)  # out of the 1 s window again
        flood = [
            asyncio.create_task(flooder.request("GET", limited_server, path)) for _ in range(60)
        ]
        await asyncio.sleep(0.5)
        other = await bystander.request("GET", limited_server, path)
        # Served while the flood's sleepers (3 s) still wait.
        assert other.status != 429 and not all(t.done() for t in flood)
        answers = await asyncio.gather(*flood)
        refused = [a for a in answers if a.status == 429]
        assert len(refused) >= 60 - 15 - 5, [a.status for a in answers]
        for a in refused:
            assert a.body["errcode"] == "M_LIMIT_EXCEEDED" and a.body["retry_after_ms"] > 0
        # Every slot was given back: after the window the origin is served again.
        await asyncio.sleep(1.1)
        assert (await flooder.request("GET", limited_server, path)).status != 429
    finally:
        await flooder.stop()
        await bystander.stop()


async def test_limits_are_lifted_by_the_test_switch(
    aiohttp_client: Any, db: Database, tmp_path: Path
) -> None:
    """``rate_limits.enabled: false`` (how test setups and benchmarks run)."""
    config = limited_config(tmp_path, **{"rate_limits.enabled": False})
    user = await make_user(await client_for(aiohttp_client, config, db), "free")
    room = await user.create_room()
    for i in range(30):
        await user.send(room, f"m{i}")


def test_rate_limits_config(tmp_path: Path) -> None:
    """``rate_limits:`` from YAML and the environment; nonsense stops start-up."""
    from homeserver.config import ConfigError, load_config
    from homeserver.core.ratelimit import Rate

    defaults = load_config(None, environ={}).rate_limits
    assert defaults.enabled and defaults.exempt_admins
    assert defaults.rate("room_creation") == Rate(0.016, 10)
    assert defaults.federation.concurrent == 3
    f = tmp_path / "hs.yaml"
    f.write_text(
        "rate_limits:\n"
        "  login:\n    failed_attempts: {per_second: 1, burst_count: 7}\n"
        "  federation: {concurrent: 5}\n"
    )
    cfg = load_config(f, environ={"HOMESERVER_RATE_LIMITS_MESSAGE_PER_SECOND": "2.5"})
    assert cfg.rate_limits.rate("login.failed_attempts") == Rate(1.0, 7.0)
    assert cfg.rate_limits.rate("message") == Rate(2.5, 10)
    assert cfg.rate_limits.federation.concurrent == 5
    for bad in (
        "rate_limits: {message: {per_second: 0}}",
        "rate_limits: {message: {burst_count: 0.5}}",
        "rate_limits: {message: {per_second: fast}}",
        "rate_limits: {login: {nope: {per_second: 1}}}",
        "rate_limits: {federation: {concurrent: 0}}",
    ):
        f.write_text(bad)
        with pytest.raises(ConfigError, match="rate_limits"):
            load_config(f, environ={})


@pytest.fixture
async def join_limited_server(pg_url: str, template_url: str) -> AsyncIterator[OurServer]:
    """Limits on; the room join bucket does not refill during the test, and
    the per-origin knobs are out of the way."""
    env = with_limits(JOINS_PER_ROOM_PER_SECOND="0.001", FEDERATION_SLEEP_LIMIT="10000")
    async with running_server(pg_url, "joins", env) as srv:
        yield srv


async def test_join_wave_over_federation(join_limited_server: OurServer) -> None:
    """A remote server pushing a wave of joins into one of our rooms: refused
    joins do not count, 10 real ones go through, then 429 — for local
    joiners of that room too (the limit is the room's)."""
    from homeserver.core.canonical import compute_event_id
    from homeserver.core.room_versions import get_room_version
    from homeserver.core.signing import sign_event
    from tests.federation.harness import Client

    srv = join_limited_server
    fake = FakeOrigin(free_port())
    await fake.start()
    try:
        async with aiohttp.ClientSession() as http:
            home = Client(http, srv.base, srv.server_name)
            alice, bob = await home.register("alice"), await home.register("bob")
            room = await alice.create_room(preset="public_chat")

            async def join_as(name: str, **changes: Any) -> Any:
                user = quote(f"@{name}:{fake.server_name}", safe="")
                made = await fake.request(
                    "GET", srv, f"/_matrix/federation/v1/make_join/{quote(room)}/{user}?ver=12"
                )
                rv = get_room_version(made.body["room_version"])
                pdu = dict(made.body["event"], origin_server_ts=int(time.time() * 1000), **changes)
                pdu = sign_event(pdu, fake.server_name, fake.key, rv)
                path = f"/_matrix/federation/v2/send_join/{quote(room)}/{compute_event_id(pdu, rv)}"
                return await fake.request("PUT", srv, path, body=pdu)

            for i in range(12):  # not joins: refused, and not counted
                refused = await join_as(f"bogus{i}", type="m.room.topic")
                assert refused.status == 400, refused
            answers = [await join_as(f"wave{i}") for i in range(11)]
            assert [a.status for a in answers[:10]] == [200] * 10, answers
            assert answers[10].status == 429 and answers[10].body["retry_after_ms"] > 0
            r = await bob.join(room, expect=429)
            assert r["errcode"] == "M_LIMIT_EXCEEDED"
    finally:
        await fake.stop()


def test_client_address_behind_a_trusted_proxy(tmp_path: Path) -> None:
    """Behind nginx every client shares the proxy's address: with
    ``listen.trusted_proxies`` the per-address limits key on the client the
    proxy saw — and a client cannot pick its own key by sending the header."""
    from aiohttp.test_utils import make_mocked_request

    from homeserver.api.appkeys import CONFIG
    from homeserver.api.client.account import client_address

    def request(config: Config, peer: str, xff: str | None) -> Any:
        from aiohttp import web

        app = web.Application()
        app[CONFIG] = config
        headers = {"X-Forwarded-For": xff} if xff else {}
        req = make_mocked_request("POST", "/", headers=headers, app=app)
        req._transport_peername = (peer, 1234)  # what request.remote reads
        return req

    plain = limited_config(tmp_path)
    proxied = limited_config(tmp_path, **{"listen.trusted_proxies": ["127.0.0.0/8"]})
    assert client_address(request(plain, "127.0.0.1", "203.0.113.9")) == "127.0.0.1"
    assert client_address(request(proxied, "127.0.0.1", "203.0.113.9")) == "203.0.113.9"
    # A forged left part is ignored: the right-most untrusted hop counts.
    assert client_address(request(proxied, "127.0.0.1", "1.2.3.4, 203.0.113.9")) == "203.0.113.9"
    # Not from a trusted proxy: the header means nothing.
    assert client_address(request(proxied, "198.51.100.7", "203.0.113.9")) == "198.51.100.7"
    with pytest.raises(Exception, match="trusted_proxies"):
        limited_config(tmp_path, **{"listen.trusted_proxies": ["not-a-net"]})

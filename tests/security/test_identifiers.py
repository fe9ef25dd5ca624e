"""Finding 7: identifiers with a trailing newline passed validation.

The grammars were checked with ``re.match`` and patterns ending in ``$``,
which also matches just before a final ``\\n``: registering ``name-\\n``
created ``@name-\\n:server``. Each grammar is fed a trailing newline, a NUL,
an over-long value and each reserved character — first the parsers
themselves, then the endpoints of both APIs where each id enters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest

from homeserver.core.ids import (
    EventID,
    InvalidID,
    RoomAlias,
    RoomID,
    ServerName,
    UserID,
    is_opaque_id,
)
from tests.helpers import CS, MatrixClient


def _raises(parse: Callable[[str], Any]) -> Callable[[str], bool]:
    def accepts(value: str) -> bool:
        try:
            parse(value)
        except InvalidID:
            return False
        return True

    return accepts


# kind → (accepts, a valid value, where to insert a bad character, reserved characters)
GRAMMARS: dict[str, tuple[Callable[[str], bool], str, int, str]] = {
    "server name": (_raises(ServerName.parse), "example.org:8448", 7, "/@#!$?& \t_*"),
    "user id": (_raises(UserID.parse), "@alice:example.org", 3, ": \x7f\x1f"),
    "new localpart": (UserID.is_valid_new_localpart, "alice", 2, ":@#!$A ~*\x7f"),
    "room id": (_raises(RoomID.parse), "!abc:example.org", 2, " \t\x7f\x85"),
    "room id v12": (_raises(RoomID.parse), "!" + "a" * 43, 5, " \t\x7f\x85"),
    "event id": (_raises(EventID.parse), "$" + "b" * 43, 5, " \t\x7f\x85"),
    "room alias": (_raises(RoomAlias.parse), "#town:example.org", 2, " \t\x7f\x85"),
    "device id": (is_opaque_id, "ABCDEFGH", 3, ":@#!$ *%&?"),
}

LONG = 300


def _variants(valid: str, at: int, reserved: str) -> list[tuple[str, str]]:
    out = [
        ("trailing newline", valid + "\n"),
        ("newline inside", valid[:at] + "\n" + valid[at:]),
        ("trailing CR", valid + "\r"),
        ("NUL", valid[:at] + "\x00" + valid[at:]),
        ("trailing NUL", valid + "\x00"),
        ("lone surrogate", valid[:at] + "\ud800" + valid[at:]),
        ("over-long", valid[:at] + "a" * LONG + valid[at:]),
        ("empty", ""),
    ]
    out += [(f"reserved {c!r}", valid[:at] + c + valid[at:]) for c in reserved]
    return out


CASES = [
    pytest.param(kind, value, id=f"{kind}: {what}")
    for kind, (_, valid, at, reserved) in GRAMMARS.items()
    for what, value in _variants(valid, at, reserved)
]


@pytest.mark.parametrize("kind", list(GRAMMARS))
def test_valid_values_still_pass(kind: str) -> None:
    accepts, valid, _, _ = GRAMMARS[kind]
    assert accepts(valid)


@pytest.mark.parametrize(("kind", "value"), CASES)
def test_grammar_matches_the_whole_string(kind: str, value: str) -> None:
    accepts, _, _, _ = GRAMMARS[kind]
    assert not accepts(value), f"{kind} accepted {value!r}"


# ------------------------------------------------------- the client API


async def test_register_with_trailing_newline_is_refused(client: MatrixClient) -> None:
    """The original report: ``chrtestuser-10-\\n`` became a user."""
    body = {"username": "chrtestuser-10-\n", "auth": {"type": "m.login.dummy"}}
    r = await client.call("POST", f"{CS}/register", body, expect=400)
    assert r["errcode"] == "M_INVALID_USERNAME"
    r = await client.call("GET", f"{CS}/register/available?username=alice%0A", expect=400)
    assert r["errcode"] == "M_INVALID_USERNAME"


BAD_IN_URL = ["%0A", "%00", "%0D", "%20", "a" * LONG]


@pytest.mark.parametrize("bad", BAD_IN_URL)
async def test_client_api_refuses_bad_ids_where_they_enter(client: MatrixClient, bad: str) -> None:
    alice = await client.register("alice")
    room = await alice.create_room()
    r_q = quote(room, safe="")
    requests = [
        ("GET", f"{CS}/profile/%40alice{bad}%3Ahs.test", None),
        ("GET", f"{CS}/profile/%40alice%3Ahs.test{bad}", None),
        ("GET", f"{CS}/rooms/%21abc{bad}%3Ahs.test/state", None),
        ("GET", f"{CS}/rooms/{r_q}/event/%24abc{bad}", None),
        ("GET", f"{CS}/directory/room/%23town{bad}%3Ahs.test", None),
        ("POST", f"{CS}/join/%23town%3Ahs.test{bad}", {}),
        ("POST", f"{CS}/join/{r_q}?server_name=hs.test{bad}", {}),
        ("POST", f"{CS}/rooms/{r_q}/invite", {"user_id": f"@bob:hs.test{unquote(bad)}"}),
        ("POST", f"{CS}/createRoom", {"invite": [f"@bob{unquote(bad)}:hs.test"]}),
    ]
    for method, path, body in requests:
        r = await alice.call(method, path, body, expect=400)
        # U+0000 in a JSON body is refused before any id is read.
        allowed = (
            {"M_INVALID_PARAM", "M_BAD_JSON"} if body and bad == "%00" else {"M_INVALID_PARAM"}
        )
        assert r["errcode"] in allowed, (path, r)


def unquote(bad: str) -> str:
    return {"%0A": "\n", "%00": "\x00", "%0D": "\r", "%20": " "}.get(bad, bad)


@pytest.mark.parametrize("device_id", ["DEV\n", "DEV\x00", "DE V", "D:EV", "D" * LONG, ""])
async def test_device_ids_keep_to_the_opaque_grammar(client: MatrixClient, device_id: str) -> None:
    body = {
        "username": "carol",
        "password": "pw",
        "device_id": device_id,
        "auth": {"type": "m.login.dummy"},
    }
    # U+0000 anywhere in a JSON body is refused before the id is read.
    expected = {"M_INVALID_PARAM", "M_BAD_JSON"} if "\x00" in device_id else {"M_INVALID_PARAM"}
    r = await client.call("POST", f"{CS}/register", body, expect=400)
    assert r["errcode"] in expected
    await client.register("carol", "pw")
    login = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "carol"},
        "password": "pw",
        "device_id": device_id,
    }
    r = await client.call("POST", f"{CS}/login", login, expect=400)
    assert r["errcode"] in expected

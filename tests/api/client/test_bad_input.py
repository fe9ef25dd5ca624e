"""Bad input gets a clear Matrix error, never a 500: one row per input the
fuzzer (scripts/fuzz, tests/api/client/test_fuzz.py) found answered wrongly,
plus its neighbours.

Rows are (method, path, raw body, expected status, expected errcode). In the
path, {room}, {user} and {event} stand for a room, its creator and an event
in it; bodies are raw text so that escapes JSON allows but we cannot store
(U+0000, unpaired surrogates) reach the server as sent.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from tests.helpers import CS, MatrixClient

NUL = '"a\\u0000b"'
SURROGATE = '"a\\ud800b"'

ROWS: list[tuple[str, str, str | None, int, str]] = [
    # createRoom: a preset that is not a string (was 500: unhashable dict)
    ("POST", "/createRoom", '{"preset": {}}', 400, "M_BAD_JSON"),
    ("POST", "/createRoom", '{"preset": ["public_chat"]}', 400, "M_BAD_JSON"),
    ("POST", "/createRoom", '{"preset": "nope"}', 400, "M_BAD_JSON"),
    # room v12 additional_creators of the wrong shape
    (
        "POST",
        "/createRoom",
        '{"creation_content": {"additional_creators": 5}}',
        400,
        "M_BAD_JSON",
    ),
    (
        "POST",
        "/createRoom",
        '{"creation_content": {"additional_creators": ["nobody"]}}',
        400,
        "M_INVALID_PARAM",
    ),
    # our creation content: an unknown kind, a non-boolean owner_bound
    ("POST", "/createRoom", '{"creation_content": {"io.homeserver.kind": "x"}}', 400, "M_BAD_JSON"),
    (
        "POST",
        "/createRoom",
        '{"creation_content": {"io.homeserver.owner_bound": "yes"}}',
        400,
        "M_BAD_JSON",
    ),
    # U+0000 and unpaired surrogates in a body (were 500: PostgreSQL jsonb
    # refuses \u0000, UTF-8 cannot encode a lone surrogate)
    ("PUT", "/user/{user}/account_data/m.x", '{"k": ' + NUL + "}", 400, "M_BAD_JSON"),
    ("PUT", "/user/{user}/account_data/m.x", "{" + NUL + ": 1}", 400, "M_BAD_JSON"),
    ("PUT", "/user/{user}/account_data/m.x", '{"k": ' + SURROGATE + "}", 400, "M_NOT_JSON"),
    (
        "PUT",
        "/user/{user}/rooms/{room}/account_data/m.x",
        '{"k": [[' + SURROGATE + "]]}",
        400,
        "M_NOT_JSON",
    ),
    ("POST", "/user/{user}/filter", '{"room": {"not_rooms": [' + NUL + "]}}", 400, "M_BAD_JSON"),
    ("POST", "/user/{user}/filter", '{"presence": {' + SURROGATE + ": 1}}", 400, "M_NOT_JSON"),
    (
        "PUT",
        "/rooms/{room}/send/m.room.message/t1",
        '{"msgtype": "m.text", "body": ' + NUL + "}",
        400,
        "M_BAD_JSON",
    ),
    (
        "PUT",
        "/rooms/{room}/state/m.room.topic",
        '{"topic": ' + SURROGATE + "}",
        400,
        "M_NOT_JSON",
    ),
    ("PUT", "/profile/{user}/displayname", '{"displayname": ' + NUL + "}", 400, "M_BAD_JSON"),
    # U+0000 in the path or query (were 500)
    ("PUT", "/user/{user}/account_data/m.x%00y", "{}", 400, "M_INVALID_PARAM"),
    ("PUT", "/rooms/{room}/send/m.room%00x/t2", "{}", 400, "M_INVALID_PARAM"),
    ("PUT", "/rooms/{room}/send/m.room.message/t%003", "{}", 400, "M_INVALID_PARAM"),
    ("PUT", "/rooms/{room}/state/m.room.topic/a%00", '{"topic": "x"}', 400, "M_INVALID_PARAM"),
    ("GET", "/rooms/{room}/messages?from=s1%00", None, 400, "M_INVALID_PARAM"),
    # POST /publicRooms: limit beyond int64 (was 500: OverflowError)
    ("POST", "/publicRooms", '{"limit": 197643634242609068230003570769920}', 200, ""),
    ("POST", "/publicRooms", '{"limit": -1}', 400, "M_INVALID_PARAM"),
    # publicRooms since tokens out of range (were 500)
    ("GET", "/publicRooms?since=o99999999999999999999", None, 400, "M_INVALID_PARAM"),
    ("GET", "/publicRooms?since=o-5", None, 400, "M_INVALID_PARAM"),
    ("POST", "/publicRooms", '{"since": "o99999999999999999999"}', 400, "M_INVALID_PARAM"),
    # stream tokens beyond bigint or with non-ASCII digits (were 500)
    ("GET", "/rooms/{room}/messages?from=s99999999999999999999999_1", None, 400, "M_INVALID_PARAM"),
    ("GET", "/rooms/{room}/messages?from=s%C2%B2", None, 400, "M_INVALID_PARAM"),
    ("GET", "/rooms/{room}/messages?to=s99999999999999999999999", None, 400, "M_INVALID_PARAM"),
    ("GET", "/rooms/{room}/members?at=s99999999999999999999999", None, 400, "M_INVALID_PARAM"),
    # neighbours that were already right, kept so they stay so
    ("PUT", "/rooms/{room}/send/m.room.message/t4", '{"n": 1.5}', 400, "M_BAD_JSON"),
    ("PUT", "/rooms/{room}/send/m.room.message/t5", '{"n": 1e400}', 400, "M_BAD_JSON"),
    ("PUT", "/rooms/{room}/send/m.room.message/t6", '{"n": 9007199254740992}', 400, "M_BAD_JSON"),
    ("POST", "/rooms/{room}/receipt/m.read/$x%00", "{}", 400, "M_INVALID_PARAM"),
    ("GET", "/profile/@a%00:hs.test", None, 400, "M_INVALID_PARAM"),
]


async def test_bad_input_table(client: MatrixClient) -> None:
    alice = await client.register("alice")
    room = await alice.create_room()
    ids = {"room": quote(room, safe=""), "user": quote(alice.user_id, safe="")}
    wrong = []
    for method, path, body, status, errcode in ROWS:
        url = CS + path.format(**ids)
        headers = {"Authorization": f"Bearer {alice.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        resp = await client.http.request(
            method, url, data=body.encode() if body is not None else None, headers=headers
        )
        text = await resp.text()
        got_code = ""
        if resp.content_type == "application/json":
            out = json.loads(text)
            got_code = out.get("errcode", "") if isinstance(out, dict) else ""
        if (resp.status, got_code, resp.content_type) != (status, errcode, "application/json"):
            wrong.append((method, path, body, resp.status, resp.content_type, text[:200]))
    assert not wrong, "\n".join(map(repr, wrong))

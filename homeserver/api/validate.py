"""Reading request bodies and parameters into checked Python values.

Handlers never touch raw JSON twice: a body that is not JSON or not UTF-8 is
``M_NOT_JSON``, a value of the wrong type ``M_BAD_JSON``, a malformed id
``M_INVALID_PARAM`` — all decided here, at the edge (DESIGN rule 11).
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from aiohttp import web

from homeserver.api.appkeys import CONFIG
from homeserver.api.errors import UNSTORABLE, MatrixError, bad_json, invalid_param, missing_param
from homeserver.core.canonical import MAX_JSON_DEPTH, JSONTooDeep, parse_json
from homeserver.core.ids import (
    EventID,
    InvalidID,
    RoomAlias,
    RoomID,
    ServerName,
    UserID,
    is_opaque_id,
)

T = TypeVar("T")

_MISSING: Any = object()


async def read_body(request: web.Request) -> bytes:
    """The raw body, which must arrive within ``listen.body_timeout``
    seconds: a client that sends headers and then trickles (or withholds)
    its body does not hold a handler forever."""
    try:
        async with asyncio.timeout(request.app[CONFIG].listen.body_timeout):
            return await request.read()
    except TimeoutError as e:
        raise MatrixError(408, "M_UNKNOWN", "Request body not received in time") from e


async def read_json(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request body as a JSON object (``{}`` for an empty body when allowed)."""
    raw = await read_body(request)
    if not raw.strip():
        if allow_empty:
            return {}
        raise MatrixError(400, "M_NOT_JSON", "Request body is empty; expected a JSON object")
    body = parse_body(raw)
    if not isinstance(body, dict):
        raise MatrixError(400, "M_NOT_JSON", "Request body must be a JSON object")
    return body


def parse_body(raw: bytes | str, what: str = "Content", *, check_text: bool = True) -> Any:
    """Bytes from the network as a JSON value, on both listeners: not UTF-8
    or not JSON → M_NOT_JSON; nested deeper than ``MAX_JSON_DEPTH`` →
    M_BAD_JSON (checked before parsing, so 100,000 levels are no 500).
    With ``check_text``, U+0000 or a lone surrogate in a string →
    M_BAD_JSON / M_NOT_JSON (federation judges each PDU instead)."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = parse_json(text)
    except JSONTooDeep as e:
        raise bad_json(f"{what} nested deeper than {MAX_JSON_DEPTH} levels") from e
    except (UnicodeDecodeError, ValueError) as e:
        raise MatrixError(400, "M_NOT_JSON", f"{what} not JSON.") from e
    if check_text and "\\u" in text:
        # Only an escape can put U+0000 or a lone surrogate into a parsed
        # string (raw ones fail UTF-8 decoding or JSON parsing above), so
        # bodies without one skip the walk.
        check_strings(value)
    return value


def check_strings(value: Any) -> None:
    """Reject a JSON value holding a string (key or value) with U+0000
    (M_BAD_JSON) or an unpaired surrogate (M_NOT_JSON)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for k, val in item.items():
                _check_string(k)
                stack.append(val)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            _check_string(item)


def _check_string(text: str) -> None:
    m = UNSTORABLE.search(text)
    if m is None:
        return
    if m.group() == "\x00":
        raise bad_json("Strings must not contain U+0000")
    raise MatrixError(400, "M_NOT_JSON", "Content not JSON: unpaired UTF-16 surrogate")


def get(
    body: dict[str, Any], key: str, kind: type[T] | tuple[type, ...], default: Any = _MISSING
) -> Any:
    """``body[key]`` checked against ``kind``; missing → ``default`` or
    M_MISSING_PARAM; wrong type → M_BAD_JSON. Booleans are not integers."""
    if key not in body or (body[key] is None and default is not _MISSING):
        if default is _MISSING:
            raise missing_param(f"Missing '{key}'")
        return default
    value = body[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise bad_json(f"'{key}' must be of type {_names(kinds)}")
    if not isinstance(value, kinds):
        raise bad_json(f"'{key}' must be of type {_names(kinds)}")
    return value


def _names(kinds: tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", bool: "boolean", dict: "object", list: "array"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def get_str_list(body: dict[str, Any], key: str, default: Any = _MISSING) -> list[str]:
    value = get(body, key, list, default)
    if not all(isinstance(v, str) for v in value):
        raise bad_json(f"'{key}' must be an array of strings")
    return list(value)


_ID = TypeVar("_ID", UserID, RoomID, RoomAlias, EventID, ServerName)


def _typed_id(kind: type[_ID], value: Any, what: str) -> _ID:
    """Parse an id where it enters: wrong type → M_BAD_JSON, wrong grammar →
    M_INVALID_PARAM (DESIGN rule 11)."""
    if not isinstance(value, str):
        raise bad_json(f"'{what}' must be a string")
    try:
        return kind.parse(value)
    except InvalidID as e:
        raise invalid_param(f"Invalid {what}: {e}") from e


def user_id(value: Any, what: str = "user_id") -> UserID:
    return _typed_id(UserID, value, what)


def room_id(value: str) -> RoomID:
    return _typed_id(RoomID, value, "room id")


def room_alias(value: str) -> RoomAlias:
    return _typed_id(RoomAlias, value, "room alias")


def event_id(value: str) -> EventID:
    return _typed_id(EventID, value, "event id")


def server_name(value: str) -> ServerName:
    return _typed_id(ServerName, value, "server name")


def device_id(value: str | None) -> str | None:
    """A client-chosen device id (absent: the server picks one). Device ids
    name tokens and rows and travel to other servers, so they keep to the
    opaque-id set, matched on the whole string."""
    if value is not None and not is_opaque_id(value):
        raise invalid_param("device_id must be 1-255 characters of A-Z a-z 0-9 . _ ~ - + / =")
    return value


def query_int(
    request: web.Request, name: str, default: int, *, lo: int = 0, hi: int = 2**53 - 1
) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise invalid_param(f"'{name}' must be an integer") from e
    return max(lo, min(hi, value))


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw in ("true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    raise invalid_param(f"'{name}' must be true or false")

"""Canonical JSON, content and reference hashes, event ids, and redaction.

Canonical JSON (Appendices, "Canonical JSON"): sorted keys, no insignificant
whitespace, UTF-8, integers only in [-(2**53)+1, 2**53-1], no floats. The
content hash covers the event without ``unsigned``, ``signatures`` and
``hashes``; the reference hash covers the *redacted* event without
``signatures``, ``unsigned`` (and ``age_ts``); event ids since room v4 are
``$`` + URL-safe unpadded base64 of the reference hash.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from itertools import accumulate
from typing import Any

import canonicaljson
from unpaddedbase64 import encode_base64

from homeserver.core.room_versions import RoomVersion

MAX_SAFE_INT = 2**53 - 1

# Arrays and objects nested deeper than this are refused before parsing:
# Python's parser and every walk over the value (canonical encoding, the
# checks below) recurse, and 100,000 levels of ``[`` raise RecursionError.
# No Matrix payload comes near it (an event in a transaction is at level 3).
MAX_JSON_DEPTH = 100


class CanonicalJSONError(ValueError):
    """A value canonical JSON cannot carry (floats, out-of-range integers)."""


def _check(value: Any, path: str = "") -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise CanonicalJSONError(f"integer out of range at {path or '/'}")
        return
    if isinstance(value, float):
        raise CanonicalJSONError(f"floats are not allowed in events (at {path or '/'})")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CanonicalJSONError(f"object keys must be strings (at {path or '/'})")
            _check(v, f"{path}/{k}")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check(v, f"{path}/{i}")
        return
    raise CanonicalJSONError(f"unsupported JSON value {type(value).__name__} at {path or '/'}")


def encode_canonical_json(obj: Any) -> bytes:
    _check(obj)
    return canonicaljson.encode_canonical_json(obj)  # type: ignore[no-any-return]


def content_hash(pdu: Mapping[str, Any]) -> str:
    """The sha256 content hash (unpadded standard base64) of an event."""
    d = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    return encode_base64(hashlib.sha256(encode_canonical_json(d)).digest())


def check_content_hash(pdu: Mapping[str, Any]) -> bool:
    hashes = pdu.get("hashes")
    if not isinstance(hashes, Mapping) or not isinstance(hashes.get("sha256"), str):
        return False
    try:
        return hashes["sha256"] == content_hash(pdu)
    except CanonicalJSONError:
        return False


def reference_hash(pdu: Mapping[str, Any], rv: RoomVersion) -> bytes:
    d = redact(pdu, rv)
    for k in ("signatures", "unsigned", "age_ts"):
        d.pop(k, None)
    return hashlib.sha256(encode_canonical_json(d)).digest()


def compute_event_id(pdu: Mapping[str, Any], rv: RoomVersion) -> str:
    return "$" + encode_base64(reference_hash(pdu, rv), urlsafe=True)


def compute_room_id_v12(create_pdu: Mapping[str, Any], rv: RoomVersion) -> str:
    """Room v12: the room id is "!" + the create event's reference hash."""
    return "!" + encode_base64(reference_hash(create_pdu, rv), urlsafe=True)


# Redaction algorithm (room versions 10, 11 / 12).
_TOP_LEVEL_V11 = (
    "event_id",
    "type",
    "room_id",
    "sender",
    "state_key",
    "content",
    "hashes",
    "signatures",
    "depth",
    "prev_events",
    "auth_events",
    "origin_server_ts",
)
# v10 (and earlier) also keep three keys v11 dropped.
_TOP_LEVEL_V10 = (*_TOP_LEVEL_V11, "origin", "membership", "prev_state")


def _content_keys(event_type: str, rv: RoomVersion) -> tuple[str, ...] | None:
    """Keys of content kept for a type; None means keep everything."""
    if event_type == "m.room.member":
        return (
            ("membership", "join_authorised_via_users_server", "third_party_invite")
            if rv.updated_redaction_rules
            else ("membership", "join_authorised_via_users_server")
        )
    if event_type == "m.room.create":
        return None if rv.updated_redaction_rules else ("creator",)
    if event_type == "m.room.join_rules":
        return ("join_rule", "allow")
    if event_type == "m.room.power_levels":
        base = (
            "ban",
            "events",
            "events_default",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
        )
        return (*base, "invite") if rv.updated_redaction_rules else base
    if event_type == "m.room.history_visibility":
        return ("history_visibility",)
    if event_type == "m.room.redaction" and rv.updated_redaction_rules:
        return ("redacts",)
    return ()


def redact(pdu: Mapping[str, Any], rv: RoomVersion) -> dict[str, Any]:
    """The event with everything but the protected keys removed."""
    keep = _TOP_LEVEL_V11 if rv.updated_redaction_rules else _TOP_LEVEL_V10
    out = {k: v for k, v in pdu.items() if k in keep}
    content = pdu.get("content")
    content = content if isinstance(content, Mapping) else {}
    keys = _content_keys(str(pdu.get("type")), rv)
    new_content = dict(content) if keys is None else {k: content[k] for k in keys if k in content}
    if pdu.get("type") == "m.room.member":
        # v11+: ``third_party_invite`` keeps only ``signed`` — and stays, as
        # an empty object, when it has none (as Synapse prunes it, so that
        # redacted hashes and ids agree across servers). Not an object:
        # nothing of it is kept.
        tpi = new_content.pop("third_party_invite", None)
        if rv.updated_redaction_rules and isinstance(tpi, Mapping):
            new_content["third_party_invite"] = {"signed": tpi["signed"]} if "signed" in tpi else {}
    out["content"] = new_content
    return out


# ------------------------------------------------------------ parsing


class JSONTooDeep(ValueError):
    """JSON nested deeper than ``MAX_JSON_DEPTH``."""


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_nesting_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``text`` nests arrays and objects deeper than ``limit``,
    found without parsing (so without recursion): strings are cut out, then
    the running sum of brackets is taken in C (``accumulate``). On text that
    is not JSON the answer may be wrong, but never lower than the depth a
    parser would reach before failing."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    if len(brackets) <= limit:
        return False  # fewer brackets than the limit: cannot be deeper
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets))) > limit


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``text`` (bytes: UTF-8) as a JSON value: ``JSONTooDeep`` when nested
    deeper than ``max_depth``, ``ValueError`` when not JSON (``NaN`` and
    ``Infinity`` included, which JSON does not have; bad UTF-8 too)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if json_nesting_exceeds(text, max_depth):
        raise JSONTooDeep(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError as e:  # not reachable under the limit; never a 500
        raise JSONTooDeep("JSON nested too deeply") from e

"""The specification's appendix test vectors, plus event ids, room ids,
redaction and size limits — and an independent check, with only the
signedjson and canonicaljson packages, that our events verify the way
Synapse (which uses the same packages) verifies them."""

from __future__ import annotations

import hashlib
from typing import Any

import canonicaljson
import pytest
import signedjson.key
import signedjson.sign
from unpaddedbase64 import encode_base64

from homeserver.core.canonical import (
    CanonicalJSONError,
    compute_event_id,
    encode_canonical_json,
    redact,
)
from homeserver.core.events import Event, InvalidEvent, build_event
from homeserver.core.room_versions import V10, V11, V12, RoomVersion
from homeserver.core.signing import (
    parse_x_matrix_header,
    sign_event,
    sign_json,
    sign_request,
    verify_request,
)

SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
KEY = signedjson.key.decode_signing_key_base64("ed25519", "1", SEED)


def test_signing_json_vectors() -> None:
    assert sign_json({}, "domain", KEY)["signatures"] == {
        "domain": {
            "ed25519:1": (
                "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
            )
        }
    }
    signed = sign_json({"one": 1, "two": "Two"}, "domain", KEY)
    assert signed["signatures"]["domain"]["ed25519:1"] == (
        "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
    )


def test_signing_event_vector() -> None:
    ev = {
        "room_id": "!x:domain",
        "sender": "@a:domain",
        "origin": "domain",
        "origin_server_ts": 1000000,
        "signatures": {},
        "hashes": {},
        "type": "X",
        "content": {},
        "prev_events": [],
        "auth_events": [],
        "depth": 3,
        "unsigned": {"age_ts": 1000000},
    }
    signed = sign_event(ev, "domain", KEY, V10)
    assert signed["hashes"] == {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"}
    assert signed["signatures"] == {
        "domain": {
            "ed25519:1": (
                "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
            )
        }
    }


def test_canonical_json_refuses_floats_and_big_ints() -> None:
    assert encode_canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()
    for bad in ({"x": 1.5}, {"x": 2**53}, {"x": [-(2**53)]}):
        with pytest.raises(CanonicalJSONError):
            encode_canonical_json(bad)


def make(rv: RoomVersion, **kw: Any) -> Event:
    args: dict[str, Any] = dict(
        room_id="!r:hs",
        sender="@a:hs",
        type="m.room.message",
        content={"body": "x"},
        prev_events=["$p"],
        auth_events=["$a"],
        depth=5,
        origin_server_ts=1,
        server_name="hs",
        signing_key=KEY,
    )
    args.update(kw)
    return build_event(rv, **args)


@pytest.mark.parametrize("rv", [V10, V11, V12])
def test_built_events_verify_independently(rv: RoomVersion) -> None:
    """Only signedjson + canonicaljson + hashlib: what Synapse runs."""
    ev = make(rv)
    pdu = dict(ev.pdu)
    # content hash
    body = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    expected = encode_base64(hashlib.sha256(canonicaljson.encode_canonical_json(body)).digest())
    assert pdu["hashes"]["sha256"] == expected
    # signature over the redacted form (a message's redacted form drops content)
    keep = {
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
    }
    redacted = {k: v for k, v in pdu.items() if k in keep} | {"content": {}}
    signedjson.sign.verify_signed_json(redacted, "hs", signedjson.key.get_verify_key(KEY))
    # event id = urlsafe base64 of the reference hash
    ref = {k: v for k, v in redacted.items() if k not in ("signatures", "unsigned")}
    digest = hashlib.sha256(canonicaljson.encode_canonical_json(ref)).digest()
    assert ev.event_id == "$" + encode_base64(digest, urlsafe=True)


def test_v12_create_event_names_the_room() -> None:
    ev = make(
        V12,
        room_id=None,
        type="m.room.create",
        state_key="",
        content={"room_version": "12"},
        prev_events=[],
        auth_events=[],
        depth=1,
    )
    assert "room_id" not in ev.pdu
    assert ev.room_id == "!" + ev.event_id[1:]
    with pytest.raises(InvalidEvent):
        Event.from_pdu(dict(ev.pdu, room_id="!x:hs"), V12)


def test_redaction_rules_per_version() -> None:
    pl = {
        "type": "m.room.power_levels",
        "content": {"invite": 0, "ban": 50, "x": 1},
        "origin": "hs",
        "membership": "join",
    }
    assert redact(pl, V10) == {
        "type": "m.room.power_levels",
        "content": {"ban": 50},
        "origin": "hs",
        "membership": "join",
    }
    assert redact(pl, V11) == {"type": "m.room.power_levels", "content": {"invite": 0, "ban": 50}}
    create = {"type": "m.room.create", "content": {"creator": "@a:hs", "m.federate": False}}
    assert redact(create, V10)["content"] == {"creator": "@a:hs"}
    assert redact(create, V11)["content"] == create["content"]
    member = {
        "type": "m.room.member",
        "content": {
            "membership": "invite",
            "displayname": "A",
            "third_party_invite": {"display_name": "x", "signed": {"mxid": "@a:hs"}},
        },
    }
    assert redact(member, V10)["content"] == {"membership": "invite"}
    assert redact(member, V11)["content"] == {
        "membership": "invite",
        "third_party_invite": {"signed": {"mxid": "@a:hs"}},
    }
    red = {"type": "m.room.redaction", "content": {"redacts": "$x", "reason": "r"}}
    assert redact(red, V10)["content"] == {}
    assert redact(red, V11)["content"] == {"redacts": "$x"}
    jr = {"type": "m.room.join_rules", "content": {"join_rule": "restricted", "allow": [], "y": 1}}
    assert redact(jr, V10)["content"] == {"join_rule": "restricted", "allow": []}


def test_limits() -> None:
    with pytest.raises(InvalidEvent, match="too large"):
        make(V11, content={"body": "x" * 70_000})
    with pytest.raises(InvalidEvent, match="prev_events"):
        Event.from_pdu(dict(make(V11).pdu, prev_events=[f"$e{i}" for i in range(21)]), V11)
    with pytest.raises(InvalidEvent, match="auth_events"):
        Event.from_pdu(dict(make(V11).pdu, auth_events=[f"$e{i}" for i in range(11)]), V11)
    with pytest.raises(InvalidEvent, match="255"):
        make(V11, type="t" * 256)
    with pytest.raises(InvalidEvent, match="depth"):
        Event.from_pdu(dict(make(V11).pdu, depth=2**53), V11)
    ev = make(V11)
    assert compute_event_id(ev.pdu, V11) == ev.event_id


def test_request_signing_round_trip() -> None:
    header = sign_request(
        "PUT", "/_matrix/federation/v1/send/1", "hs", "other:8448", {"pdus": []}, KEY
    )
    auth = parse_x_matrix_header(header)
    assert auth.origin == "hs" and auth.destination == "other:8448" and auth.key == "ed25519:1"
    verify_request(
        "PUT",
        "/_matrix/federation/v1/send/1",
        "hs",
        "other:8448",
        {"pdus": []},
        auth.key,
        auth.sig,
        KEY.verify_key,
    )
    with pytest.raises(ValueError):
        verify_request(
            "PUT",
            "/_matrix/federation/v1/send/2",
            "hs",
            "other:8448",
            {"pdus": []},
            auth.key,
            auth.sig,
            KEY.verify_key,
        )
    odd = parse_x_matrix_header('X-Matrix origin=hs,key="ed25519:1", sig="abc"')
    assert odd.origin == "hs" and odd.destination is None and odd.sig == "abc"


@pytest.mark.parametrize(
    ("rv", "content", "kept"),
    [
        # v11+: only ``signed`` survives; without it an empty object stays
        # (as Synapse prunes it, so redacted hashes agree across servers).
        (V11, {"membership": "invite", "third_party_invite": {"display_name": "x"}}, {}),
        (
            V12,
            {"membership": "invite", "third_party_invite": {"signed": {"a": 1}, "b": 2}},
            {"signed": {"a": 1}},
        ),
        (V11, {"membership": "invite", "third_party_invite": "not an object"}, None),
        (V10, {"membership": "invite", "third_party_invite": {"signed": {"a": 1}}}, None),
    ],
)
def test_redacted_member_third_party_invite(
    rv: RoomVersion, content: dict[str, Any], kept: dict[str, Any] | None
) -> None:
    pdu = {"type": "m.room.member", "state_key": "@a:x", "content": content}
    out = redact(pdu, rv)["content"]
    assert out.get("third_party_invite") == kept
    assert ("third_party_invite" in out) is (kept is not None)
    assert out["membership"] == "invite"

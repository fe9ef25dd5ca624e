"""ed25519 signing of JSON objects, events and federation requests.

Events are signed over their redacted form (so a redaction never breaks a
signature) after the content hash is added (Server-Server API "Signing
Events"); requests are signed over a JSON object of method, uri, origin,
destination and content ("Request Authentication").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import signedjson.key
import signedjson.sign
from signedjson.types import SigningKey, VerifyKey
from unpaddedbase64 import decode_base64, encode_base64

from homeserver.core.canonical import content_hash, encode_canonical_json, redact
from homeserver.core.room_versions import RoomVersion


class SignatureError(ValueError):
    """A signature that is missing or does not verify."""


def generate_signing_key(version: str) -> SigningKey:
    return signedjson.key.generate_signing_key(version)


def key_id(key: SigningKey) -> str:
    return f"ed25519:{key.version}"


def verify_key_base64(key: SigningKey) -> str:
    return encode_base64(key.verify_key.encode())


def decode_verify_key(key_id_: str, key_b64: str) -> VerifyKey:
    return signedjson.key.decode_verify_key_bytes(key_id_, decode_base64(key_b64))


def sign_json(obj: Mapping[str, Any], server_name: str, key: SigningKey) -> dict[str, Any]:
    """A copy of ``obj`` with this server's signature added."""
    return signedjson.sign.sign_json(dict(obj), server_name, key)  # type: ignore[no-any-return]


def verify_json_signature(
    obj: Mapping[str, Any], server_name: str, key_id_: str, verify_key: VerifyKey
) -> None:
    sigs = obj.get("signatures", {})
    sig = sigs.get(server_name, {}).get(key_id_) if isinstance(sigs, Mapping) else None
    if not isinstance(sig, str):
        raise SignatureError(f"no signature from {server_name} with {key_id_}")
    stripped = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    try:
        verify_key.verify(encode_canonical_json(stripped), decode_base64(sig))
    except Exception as e:
        raise SignatureError(f"bad signature from {server_name} with {key_id_}") from e


def sign_event(
    pdu: Mapping[str, Any], server_name: str, key: SigningKey, rv: RoomVersion
) -> dict[str, Any]:
    """1. add the content hash; 2. sign the redacted event; 3. copy the signature in."""
    out = dict(pdu)
    out.pop("unsigned", None)
    out.pop("signatures", None)
    out["hashes"] = {"sha256": content_hash(out)}
    signed_redacted = sign_json(redact(out, rv), server_name, key)
    sigs = dict(pdu.get("signatures") or {})
    sigs.update(signed_redacted["signatures"])
    out["signatures"] = sigs
    return out


def verify_event_signature(
    pdu: Mapping[str, Any], rv: RoomVersion, server_name: str, key_id_: str, verify_key: VerifyKey
) -> None:
    verify_json_signature(
        redact(pdu, rv) | {"signatures": pdu.get("signatures", {})},
        server_name,
        key_id_,
        verify_key,
    )


@dataclass(frozen=True, slots=True)
class XMatrixAuth:
    origin: str
    destination: str | None
    key: str
    sig: str


def request_json(
    method: str, uri: str, origin: str, destination: str, content: Any | None
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "method": method,
        "uri": uri,
        "origin": origin,
        "destination": destination,
    }
    if content is not None:
        obj["content"] = content
    return obj


def sign_request(
    method: str, uri: str, origin: str, destination: str, content: Any | None, key: SigningKey
) -> str:
    signed = sign_json(request_json(method, uri, origin, destination, content), origin, key)
    sig = signed["signatures"][origin][key_id(key)]
    return f'X-Matrix origin="{origin}",destination="{destination}",key="{key_id(key)}",sig="{sig}"'


_PARAM = re.compile(r'\s*([A-Za-z0-9_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*(?:,|\Z)')


def parse_x_matrix_header(value: str) -> XMatrixAuth:
    scheme, _, rest = value.partition(" ")
    if scheme.lower() != "x-matrix":
        raise SignatureError("not an X-Matrix authorization")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if not m or m.end() == pos:
            raise SignatureError("malformed X-Matrix header")
        params[m.group(1).lower()] = (
            (m.group(2) if m.group(2) is not None else m.group(3))
            .replace('\\"', '"')
            .replace("\\\\", "\\")
        )
        pos = m.end()
    try:
        return XMatrixAuth(
            params["origin"], params.get("destination"), params["key"], params["sig"]
        )
    except KeyError as e:
        raise SignatureError(f"X-Matrix header lacks {e.args[0]}") from e


def verify_request(
    method: str,
    uri: str,
    origin: str,
    destination: str,
    content: Any | None,
    key_id_: str,
    sig: str,
    verify_key: VerifyKey,
) -> None:
    obj = request_json(method, uri, origin, destination, content)
    obj["signatures"] = {origin: {key_id_: sig}}
    verify_json_signature(obj, origin, key_id_, verify_key)

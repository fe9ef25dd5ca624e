"""Typed Matrix identifiers, validated where they enter the server.

Each id is a ``str`` subclass so it serialises as itself in JSON and compares
with plain strings, while the constructor (``parse``) guarantees the grammar
of the specification's appendix "Identifier Grammar". Code that holds a
``UserID`` never needs to re-check it.
"""

from __future__ import annotations

import re
from typing import Self

# Appendix "Server Name": hostname / IPv4 / [IPv6] with an optional port.
_HOST_RE = re.compile(
    r"(?:\[[0-9A-Fa-f:.]{2,45}\]|\d{1,3}(?:\.\d{1,3}){3}|[A-Za-z0-9.-]{1,255})(?::(\d{1,5}))?"
)
# Appendix "User Identifiers": the historical grammar accepted on receipt.
_LOCALPART_HISTORICAL_RE = re.compile(r"[\x21-\x39\x3b-\x7e]+")
# Localparts we allow for *new* accounts (the strict grammar).
_LOCALPART_STRICT_RE = re.compile(r"[a-z0-9._=\-/+]+")
_OPAQUE_RE = re.compile(r"[0-9A-Za-z._~\-+/=]+")
# Whitespace, C0/C1 controls and surrogates: in no opaque part of a room id,
# event id or alias (they would end up in logs, keys and the database).
_UNPRINTABLE_RE = re.compile(r"[\s\x00-\x1f\x7f-\x9f\ud800-\udfff]")

MAX_ID_LENGTH = 255


class InvalidID(ValueError):
    """A string that does not follow the identifier grammar."""


def _utf8_len(value: str) -> int:
    """Length in UTF-8 bytes; a lone surrogate counts (and is refused later)
    instead of raising UnicodeEncodeError out of a parser."""
    return len(value.encode("utf-8", "surrogatepass"))


def _split(kind: str, sigil: str, value: str) -> tuple[str, str]:
    if not isinstance(value, str) or not value.startswith(sigil):
        raise InvalidID(f"{kind} must start with {sigil!r}: {value!r}")
    if _utf8_len(value) > MAX_ID_LENGTH:
        raise InvalidID(f"{kind} is longer than {MAX_ID_LENGTH} bytes")
    local, sep, server = value[1:].partition(":")
    if not sep or not local:
        raise InvalidID(f"{kind} must be {sigil}localpart:server: {value!r}")
    ServerName.parse(server)
    return local, server


class ServerName(str):
    """A homeserver name: ``host[:port]``."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: str) -> Self:
        if not isinstance(value, str):
            raise InvalidID(f"server name must be a string: {value!r}")
        m = _HOST_RE.fullmatch(value)
        if not m or value.startswith(("-", ".")):
            raise InvalidID(f"invalid server name: {value!r}")
        port = m.group(1)
        if port is not None and not 0 < int(port) < 65536:
            raise InvalidID(f"invalid port in server name: {value!r}")
        return cls(value)

    @property
    def host(self) -> str:
        if self.startswith("["):
            return self[1 : self.index("]")]
        return self.rsplit(":", 1)[0] if ":" in self else str(self)

    @property
    def port(self) -> int | None:
        tail = self[self.index("]") + 1 :] if self.startswith("[") else self
        return int(tail.rsplit(":", 1)[1]) if ":" in tail else None


class UserID(str):
    """``@localpart:server``."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: str) -> Self:
        local, _ = _split("user id", "@", value)
        if not _LOCALPART_HISTORICAL_RE.fullmatch(local):
            raise InvalidID(f"invalid user id localpart: {value!r}")
        return cls(value)

    @classmethod
    def create(cls, localpart: str, server_name: str) -> Self:
        return cls.parse(f"@{localpart}:{server_name}")

    @staticmethod
    def is_valid_new_localpart(localpart: str) -> bool:
        return len(localpart) < MAX_ID_LENGTH and bool(_LOCALPART_STRICT_RE.fullmatch(localpart))

    @property
    def localpart(self) -> str:
        return self[1:].split(":", 1)[0]

    @property
    def server_name(self) -> ServerName:
        return ServerName(self.split(":", 1)[1])


class RoomAlias(str):
    """``#alias:server``."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: str) -> Self:
        local, _ = _split("room alias", "#", value)
        if _UNPRINTABLE_RE.search(local):
            raise InvalidID(f"invalid room alias: {value!r}")
        return cls(value)

    @property
    def localpart(self) -> str:
        return self[1:].split(":", 1)[0]

    @property
    def server_name(self) -> ServerName:
        return ServerName(self.split(":", 1)[1])


class RoomID(str):
    """``!opaque:server`` (rooms up to v11) or ``!hash`` (v12, no server part)."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: str) -> Self:
        if not isinstance(value, str) or not value.startswith("!") or len(value) < 2:
            raise InvalidID(f"room id must start with '!': {value!r}")
        if _utf8_len(value) > MAX_ID_LENGTH:
            raise InvalidID(f"room id is longer than {MAX_ID_LENGTH} bytes")
        local, sep, server = value[1:].partition(":")
        if not local or _UNPRINTABLE_RE.search(local):
            raise InvalidID(f"invalid room id: {value!r}")
        if sep:
            ServerName.parse(server)
        return cls(value)

    @property
    def server_name(self) -> ServerName | None:
        _, sep, server = self.partition(":")
        return ServerName(server) if sep else None


class EventID(str):
    """``$base64`` (room versions 4+) or ``$opaque:server`` (older)."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: str) -> Self:
        if not isinstance(value, str) or not value.startswith("$") or len(value) < 2:
            raise InvalidID(f"event id must start with '$': {value!r}")
        if _utf8_len(value) > MAX_ID_LENGTH:
            raise InvalidID(f"event id is longer than {MAX_ID_LENGTH} bytes")
        if _UNPRINTABLE_RE.search(value):
            raise InvalidID(f"invalid event id: {value!r}")
        return cls(value)


def is_opaque_id(value: str) -> bool:
    """Opaque ids (transaction ids, device ids) use the URL-safe set, matched
    on the whole string (``re.match`` with ``$`` would let a final newline
    through)."""
    return bool(_OPAQUE_RE.fullmatch(value)) and len(value) <= MAX_ID_LENGTH

"""Event filters (Client-Server API "Filtering") as predicates."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from homeserver.services.errors import MatrixError


class Filterable(Protocol):
    """What a filter looks at: events, and account data entries."""

    @property
    def type(self) -> str: ...
    @property
    def sender(self) -> str: ...
    @property
    def room_id(self) -> str: ...
    @property
    def content(self) -> Mapping[str, Any]: ...


def str_list(raw: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise MatrixError(400, "M_BAD_JSON", f"filter {key} must be an array of strings")
    return tuple(value)


def sub_object(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``raw[key]``, which must be an object when present ({} when absent):
    a filter of the wrong shape is refused (400), never silently ignored."""
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MatrixError(400, "M_BAD_JSON", f"filter {key} must be an object")
    return value


def flag(raw: Mapping[str, Any], key: str) -> bool | None:
    """``raw[key]``, which must be a boolean when present."""
    value = raw.get(key)
    if value is not None and not isinstance(value, bool):
        raise MatrixError(400, "M_BAD_JSON", f"filter {key} must be a boolean")
    return value


def _match(patterns: tuple[str, ...], value: str) -> bool:
    return any(fnmatch.fnmatchcase(value, p) if "*" in p else p == value for p in patterns)


@dataclass(frozen=True)
class EventFilter:
    types: tuple[str, ...] | None = None
    not_types: tuple[str, ...] = ()
    senders: tuple[str, ...] | None = None
    not_senders: tuple[str, ...] = ()
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    limit: int | None = None
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    contains_url: bool | None = None
    unread_thread_notifications: bool = False

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> EventFilter:
        limit = raw.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
            raise MatrixError(400, "M_BAD_JSON", "filter limit must be an integer")
        return cls(
            types=str_list(raw, "types"),
            not_types=str_list(raw, "not_types") or (),
            senders=str_list(raw, "senders"),
            not_senders=str_list(raw, "not_senders") or (),
            rooms=str_list(raw, "rooms"),
            not_rooms=str_list(raw, "not_rooms") or (),
            limit=limit,
            lazy_load_members=flag(raw, "lazy_load_members") is True,
            include_redundant_members=flag(raw, "include_redundant_members") is True,
            contains_url=flag(raw, "contains_url"),
            unread_thread_notifications=flag(raw, "unread_thread_notifications") is True,
        )

    @property
    def matches_everything(self) -> bool:
        """True when no event is ever filtered out (``limit`` aside)."""
        return (
            self.types is None
            and not self.not_types
            and self.senders is None
            and not self.not_senders
            and self.rooms is None
            and not self.not_rooms
            and self.contains_url is None
        )

    def __call__(self, ev: Filterable) -> bool:
        if self.types is not None and not _match(self.types, ev.type):
            return False
        if self.not_types and _match(self.not_types, ev.type):
            return False
        if self.senders is not None and ev.sender not in self.senders:
            return False
        if ev.sender in self.not_senders:
            return False
        if self.rooms is not None and ev.room_id not in self.rooms:
            return False
        if ev.room_id in self.not_rooms:
            return False
        return not (self.contains_url is not None and ("url" in ev.content) != self.contains_url)

    def allows_room(self, room_id: str) -> bool:
        if self.rooms is not None and room_id not in self.rooms:
            return False
        return room_id not in self.not_rooms

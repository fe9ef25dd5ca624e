"""The PDU as a frozen value, and the builders that make new ones.

An ``Event`` wraps the exact JSON object that was hashed and signed (``pdu``)
together with the parsed fields everything else reads. The JSON must never be
mutated after construction: its reference hash *is* the event id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from homeserver.core.room_versions import RoomVersion

StateKey = tuple[str, str]  # (event type, state key)


@dataclass(frozen=True, slots=True, eq=False)
class Event:
    """One persistent data unit of a room DAG (room versions 10-12).

    ``pdu`` is the event as it goes over federation (no ``event_id`` key:
    from event format v3 the id is derived from the reference hash). For v12
    create events the PDU has no ``room_id``; ``room_id`` here is the derived
    one, so readers never special-case it.
    """

    event_id: str
    room_id: str
    type: str
    sender: str
    content: Mapping[str, Any]
    state_key: str | None
    depth: int
    origin_server_ts: int
    prev_events: tuple[str, ...]
    auth_events: tuple[str, ...]
    room_version: RoomVersion
    pdu: Mapping[str, Any] = field(repr=False)
    redacts: str | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.event_id == self.event_id

    def __hash__(self) -> int:
        return hash(self.event_id)

    @property
    def is_state(self) -> bool:
        return self.state_key is not None

    @property
    def state_tuple(self) -> StateKey:
        assert self.state_key is not None, "not a state event"
        return (self.type, self.state_key)

    @property
    def membership(self) -> str | None:
        if self.type != "m.room.member":
            return None
        m = self.content.get("membership")
        return m if isinstance(m, str) else None

    def client_dict(self) -> dict[str, Any]:
        """The client-server API form (``ClientEvent`` without ``unsigned``)."""
        d: dict[str, Any] = {
            "event_id": self.event_id,
            "room_id": self.room_id,
            "type": self.type,
            "sender": self.sender,
            "content": dict(self.content),
            "origin_server_ts": self.origin_server_ts,
        }
        if self.state_key is not None:
            d["state_key"] = self.state_key
        if self.redacts is not None:
            d["redacts"] = self.redacts
        return d

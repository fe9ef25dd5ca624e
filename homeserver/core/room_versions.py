"""Room versions as values: one frozen set of feature flags per version.

Code branches on these flags, never on the version string (DESIGN rule 4).
Only versions 10, 11 and 12 are supported; everything else is refused with
``M_UNSUPPORTED_ROOM_VERSION`` at the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class StateResAlgorithm(Enum):
    V2 = "v2"
    V2_1 = "v2.1"  # room v12: empty start state, conflicted subgraph


@dataclass(frozen=True, slots=True)
class RoomVersion:
    identifier: str
    stable: bool
    state_res: StateResAlgorithm
    # v11+: the create event carries no ``creator``; the sender is the creator.
    implicit_room_creator: bool
    # v11+: redaction keeps create content, ``invite`` in power levels,
    # ``signed`` in member events; ``redacts`` lives in content.
    updated_redaction_rules: bool
    redacts_in_content: bool
    # v12: the room id is "!" + the create event's reference hash, the create
    # event has no room_id and is not listed in auth_events.
    room_id_is_create_event_hash: bool
    # v12: creators (sender + additional_creators) have infinite power.
    privileged_creators: bool
    # Rules common to all supported versions, kept as flags for clarity.
    knock_join_rule: bool = True
    restricted_join_rule: bool = True
    knock_restricted_join_rule: bool = True
    enforce_int_power_levels: bool = True
    strict_canonical_json: bool = True
    limit_notifications_power_levels: bool = True


V10 = RoomVersion(
    identifier="10",
    stable=True,
    state_res=StateResAlgorithm.V2,
    implicit_room_creator=False,
    updated_redaction_rules=False,
    redacts_in_content=False,
    room_id_is_create_event_hash=False,
    privileged_creators=False,
)
V11 = RoomVersion(
    identifier="11",
    stable=True,
    state_res=StateResAlgorithm.V2,
    implicit_room_creator=True,
    updated_redaction_rules=True,
    redacts_in_content=True,
    room_id_is_create_event_hash=False,
    privileged_creators=False,
)
V12 = RoomVersion(
    identifier="12",
    stable=True,
    state_res=StateResAlgorithm.V2_1,
    implicit_room_creator=True,
    updated_redaction_rules=True,
    redacts_in_content=True,
    room_id_is_create_event_hash=True,
    privileged_creators=True,
)

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {v.identifier: v for v in (V10, V11, V12)}
DEFAULT_ROOM_VERSION: RoomVersion = V12


class UnsupportedRoomVersion(ValueError):
    """A room version this server does not implement."""


def get_room_version(identifier: object) -> RoomVersion:
    if not isinstance(identifier, str) or identifier not in KNOWN_ROOM_VERSIONS:
        raise UnsupportedRoomVersion(f"unsupported room version: {identifier!r}")
    return KNOWN_ROOM_VERSIONS[identifier]

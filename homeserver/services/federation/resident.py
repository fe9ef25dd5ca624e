"""Serving other servers' users as the resident server of our rooms:
``make_join``/``send_join`` (v1, v2), ``make_leave``/``send_leave`` (v1, v2),
``make_knock``/``send_knock``, and receiving invites (``invite`` v2).

A ``make_*`` answer is an unsigned template built on the room's forward
extremities, refused (403) when it would not pass the authorization rules
against the current state. A ``send_*`` event is checked as any received
PDU (format, signatures, hash, auth against its auth events, the state
before it and the current state), appended, and sent on to the room's other
servers. Restricted joins name one of our users with the invite power in
``join_authorised_via_users_server`` and are countersigned by us.

Depends on: Ingest, FederationServer (state answers), RemoteRooms
(out-of-band invites), FederationSender, EventStore, Projections.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from homeserver.core.auth import (
    AuthError,
    check_auth,
    get_named_level,
    get_user_power_level,
)
from homeserver.core.canonical import redact
from homeserver.core.events import (
    STRIPPED_STATE_TYPES,
    Event,
    InvalidEvent,
    StateKey,
    auth_types_for_event,
)
from homeserver.core.ids import InvalidID, UserID
from homeserver.core.room_versions import RoomVersion, UnsupportedRoomVersion, get_room_version
from homeserver.core.signing import key_id, sign_json
from homeserver.services.clock import now_ms
from homeserver.services.errors import MatrixError, forbidden, not_found
from homeserver.services.federation.ingest import Dropped, Ingest
from homeserver.services.federation.joins import RemoteRooms, stripped
from homeserver.services.federation.sender import FederationSender
from homeserver.services.federation.served import FederationServer
from homeserver.services.server_keys import ServerKeys
from homeserver.storage.ephemeral import EphemeralStore
from homeserver.storage.events import EventStore
from homeserver.storage.federation import FederationStore
from homeserver.storage.projections import Projections

log = logging.getLogger(__name__)

MAX_PREV_EVENTS = 10


def _bad(msg: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", msg)


def _server(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


class Resident:
    def __init__(
        self,
        store: EventStore,
        projections: Projections,
        fstore: FederationStore,
        ingest: Ingest,
        served: FederationServer,
        remote: RemoteRooms,
        sender: FederationSender,
        keys: ServerKeys,
        ephemeral: EphemeralStore,
        profiles: Any,
    ) -> None:
        self._store = store
        self._proj = projections
        self._fstore = fstore
        self._ingest = ingest
        self._served = served
        self._remote = remote
        self._sender = sender
        self._keys = keys
        self._name = keys.server_name
        self._eph = ephemeral
        self._profiles = profiles

    # ---------------------------------------------------------- templates
    async def _room(self, room_id: str) -> RoomVersion:
        rv = await self._store.room_version(room_id)
        if rv is None or not await self._fstore.has_local_member(room_id, self._name, ("join",)):
            raise not_found(f"This server is not in room {room_id}")
        return rv

    async def _template(
        self,
        origin: str,
        room_id: str,
        user_id: str,
        membership: str,
        versions: Sequence[str] | None,
    ) -> dict[str, Any]:
        try:
            uid = UserID.parse(user_id)
        except InvalidID as e:
            raise MatrixError(400, "M_INVALID_PARAM", str(e)) from e
        if uid.server_name != origin:
            raise forbidden(f"{user_id} does not belong to {origin}")
        rv = await self._room(room_id)
        if versions is not None and rv.identifier not in versions:
            raise MatrixError(
                400,
                "M_INCOMPATIBLE_ROOM_VERSION",
                f"Your server does not support room version {rv.identifier}",
                room_version=rv.identifier,
            )
        state = await self._proj.current_state_ids(room_id)
        content: dict[str, Any] = {"membership": membership}
        if membership == "join":
            via = await self._restricted_via(room_id, user_id, state)
            if via is not None:
                content["join_authorised_via_users_server"] = via
        ext = await self._store.get_events(await self._store.forward_extremities(room_id))
        prevs = sorted(ext.values(), key=lambda s: -s.event.depth)[:MAX_PREV_EVENTS]
        types = auth_types_for_event(rv, "m.room.member", user_id, user_id, content)
        template: dict[str, Any] = {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": user_id,
            "state_key": user_id,
            "content": content,
            "depth": max((s.event.depth for s in prevs), default=0) + 1,
            "prev_events": [s.event.event_id for s in prevs],
            "auth_events": [state[k] for k in types if k in state],
            "origin_server_ts": now_ms(),
        }
        # Would it pass against the current state? (signed for the check only)
        probe = dict(template)
        probe["signatures"] = {self._name: {}}
        try:
            ev = Event.from_pdu(probe, rv)  # type: ignore[attr-defined]
            check_auth(ev, await self._ingest.auth_map_from_state(ev, state))
        except AuthError as e:
            raise forbidden(str(e)) from e
        except InvalidEvent as e:
            raise MatrixError(500, "M_UNKNOWN", f"could not build a template: {e}") from e
        return {"event": template, "room_version": rv.identifier}

    async def _restricted_via(
        self, room_id: str, user_id: str, state: Mapping[StateKey, str]
    ) -> str | None:
        """For restricted rooms a local user who can vouch for the joiner."""
        evs = await self._store.get_event_objs(
            [
                v
                for k, v in state.items()
                if k
                in (
                    ("m.room.join_rules", ""),
                    ("m.room.power_levels", ""),
                    ("m.room.create", ""),
                    ("m.room.member", user_id),
                )
            ]
        )
        by_key = {e.state_tuple: e for e in evs.values()}
        jr = by_key.get(("m.room.join_rules", ""))
        rule = jr.content.get("join_rule") if jr else None
        if rule not in ("restricted", "knock_restricted"):
            return None
        me = by_key.get(("m.room.member", user_id))
        if me is not None and me.membership in ("invite", "join", "ban"):
            return None  # no vouching needed, or none can help: the auth check decides
        allowed = False
        unknown = True
        for cond in (jr.content.get("allow") or []) if jr else []:
            if not isinstance(cond, Mapping) or cond.get("type") != "m.room_membership":
                continue
            other = cond.get("room_id")
            if not isinstance(other, str):
                continue
            if await self._store.room_version(other) is not None:
                unknown = False
                m = await self._proj.membership(other, user_id)
                if m is not None and m[0] == "join":
                    allowed = True
        if not allowed:
            if unknown and rule == "restricted":
                raise MatrixError(
                    400, "M_UNABLE_TO_AUTHORISE_JOIN", "This server cannot check the join rules"
                )
            if rule == "knock_restricted":
                return None
            raise forbidden("You are not allowed to join this restricted room")
        pl = by_key.get(("m.room.power_levels", ""))
        create = by_key.get(("m.room.create", ""))
        need = get_named_level(pl, "invite")
        for m in await self._proj.members(room_id, ["join"]):
            uid = m["user_id"]
            if _server(uid) == self._name and get_user_power_level(uid, pl, create) >= need:
                return str(uid)
        raise MatrixError(400, "M_UNABLE_TO_GRANT_JOIN", "No user here can authorise your join")

    async def make_join(
        self, origin: str, room_id: str, user_id: str, versions: Sequence[str]
    ) -> dict[str, Any]:
        return await self._template(origin, room_id, user_id, "join", list(versions) or ["1"])

    async def make_leave(self, origin: str, room_id: str, user_id: str) -> dict[str, Any]:
        return await self._template(origin, room_id, user_id, "leave", None)

    async def make_knock(
        self, origin: str, room_id: str, user_id: str, versions: Sequence[str]
    ) -> dict[str, Any]:
        if not versions:  # required here, unlike make_join's (which defaults to ["1"])
            raise MatrixError(400, "M_MISSING_PARAM", "Missing the room versions (ver)")
        return await self._template(origin, room_id, user_id, "knock", list(versions))

    # ------------------------------------------------------------- send_*
    async def _accept(
        self, origin: str, room_id: str, event_id: str, pdu: Any, membership: str
    ) -> Event:
        rv = await self._room(room_id)
        if not isinstance(pdu, Mapping):
            raise _bad("The event must be an object")
        content = pdu.get("content")
        sender = pdu.get("sender")
        if (
            pdu.get("type") != "m.room.member"
            or not isinstance(content, Mapping)
            or content.get("membership") != membership
        ):
            raise MatrixError(
                400, "M_BAD_JSON", f"The event is not an m.room.member {membership} event"
            )
        if not isinstance(sender, str) or pdu.get("state_key") != sender:
            raise _bad("The state_key must be the sender")
        if _server(sender) != origin:
            raise forbidden(f"{sender} does not belong to {origin}")
        if pdu.get("room_id") != room_id:
            raise _bad("The event is for another room")
        body = dict(pdu)
        via = content.get("join_authorised_via_users_server")
        if membership == "join" and isinstance(via, str) and _server(via) == self._name:
            body = self._countersign(body, rv)
        try:
            checked = await self._ingest.check_pdu(body, rv)
        except Dropped as e:
            raise forbidden(str(e)) from e
        if checked.event.event_id != event_id:
            raise _bad("The event id does not match the event")
        if checked.redacted is not None:
            raise _bad("The content hash of the event does not match")
        async with self._ingest.room_lock(room_id):
            out = await self._ingest.process(origin, checked, fetch_missing=True)
        if out.rejected or out.soft_failed:
            raise forbidden(f"The {membership} is not allowed: {out.rejected or 'soft-failed'}")
        if not out.already_known:
            servers = await self._fstore.joined_servers(None, room_id)
            await self._sender.send_pdu(event_id, servers - {origin})
        return checked.event

    def _countersign(self, pdu: dict[str, Any], rv: RoomVersion) -> dict[str, Any]:
        sig = sign_json(redact(pdu, rv), self._name, self._keys.signing_key)
        sigs = {k: dict(v) for k, v in (pdu.get("signatures") or {}).items()}
        sigs.setdefault(self._name, {})[key_id(self._keys.signing_key)] = sig["signatures"][
            self._name
        ][key_id(self._keys.signing_key)]
        out = dict(pdu)
        out["signatures"] = sigs
        return out

    async def send_join(self, origin: str, room_id: str, event_id: str, pdu: Any) -> dict[str, Any]:
        ev = await self._accept(origin, room_id, event_id, pdu, "join")
        se = await self._store.get_event(ev.event_id)
        assert se is not None
        before = await self._served.state_before(se)
        return {
            "origin": self._name,
            "event": dict(se.event.pdu),
            "state": await self._served.state_pdus(before),
            "auth_chain": await self._served.auth_chain_pdus([*before.values(), ev.event_id]),
            "members_omitted": False,
        }

    async def send_leave(self, origin: str, room_id: str, event_id: str, pdu: Any) -> None:
        await self._accept(origin, room_id, event_id, pdu, "leave")

    async def send_knock(
        self, origin: str, room_id: str, event_id: str, pdu: Any
    ) -> dict[str, Any]:
        await self._accept(origin, room_id, event_id, pdu, "knock")
        state = await self._proj.current_state_ids(room_id)
        ids = [state[(t, "")] for t in STRIPPED_STATE_TYPES if (t, "") in state]
        evs = await self._store.get_events(ids)
        return {"knock_room_state": [dict(evs[i].event.pdu) for i in ids if i in evs]}

    # -------------------------------------------------------------- invite
    async def invite(self, origin: str, room_id: str, event_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, Mapping):
            raise _bad("Expected an object")
        if "room_version" not in body:
            raise MatrixError(400, "M_MISSING_PARAM", "Missing the room version")
        invite_room_state = body.get("invite_room_state")
        if invite_room_state is None:
            invite_room_state = []
        if not isinstance(invite_room_state, list):
            raise _bad("invite_room_state must be a list")
        try:
            rv = get_room_version(body.get("room_version"))
        except UnsupportedRoomVersion as e:
            raise MatrixError(
                400,
                "M_INCOMPATIBLE_ROOM_VERSION",
                "This server does not support that room version",
                room_version=body.get("room_version"),
            ) from e
        pdu = body.get("event")
        if not isinstance(pdu, Mapping):
            raise MatrixError(400, "M_MISSING_PARAM", "Missing the invite event")
        content = pdu.get("content")
        target = pdu.get("state_key")
        sender = pdu.get("sender")
        if pdu.get("type") != "m.room.member":
            raise MatrixError(400, "M_INVALID_PARAM", "The event is not an m.room.member event")
        if not isinstance(content, Mapping) or content.get("membership") != "invite":
            raise MatrixError(400, "M_INVALID_PARAM", "The event is not an invite")
        if not isinstance(sender, str) or _server(sender) != origin:
            raise MatrixError(400, "M_INVALID_PARAM", "The sender is not on the origin server")
        if not isinstance(target, str) or _server(target) != self._name:
            raise MatrixError(400, "M_INVALID_PARAM", "The invitee is not on this server")
        if pdu.get("room_id") != room_id:
            raise MatrixError(400, "M_INVALID_PARAM", "The event is for another room")
        try:
            checked = await self._ingest.check_pdu(pdu, rv)
        except Dropped as e:
            raise MatrixError(400, "M_INVALID_PARAM", str(e)) from e
        if checked.event.event_id != event_id:
            raise MatrixError(400, "M_INVALID_PARAM", "The event id does not match the event")
        if checked.redacted is not None:
            raise MatrixError(400, "M_INVALID_PARAM", "The content hash does not match")
        if not await self._profiles.exists(target):
            raise not_found(f"Unknown user {target}")
        if await self._store.room_version(room_id) is not None:
            m = await self._proj.membership(room_id, target)
            if m is not None and m[0] == "ban":
                raise forbidden(f"{target} is banned from the room")
        signed = self._countersign(dict(pdu), rv)
        ev = Event.from_pdu(signed, rv)  # type: ignore[attr-defined]
        room_state = [s for s in (stripped(e) for e in invite_room_state) if s is not None]
        if not any(s["type"] == "m.room.create" for s in room_state):
            log.info("invite %s from %s comes without the create event", event_id, origin)
        await self._eph.put_invite_state(room_id, target, room_state)
        if not await self._fstore.has_local_member(room_id, self._name, ("join",)):
            creator = next(
                (s.get("sender") for s in room_state if s["type"] == "m.room.create"), sender
            )
            await self._remote.commit_out_of_band(ev, str(creator))
        return {"event": signed}

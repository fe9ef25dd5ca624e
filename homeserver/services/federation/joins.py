"""Membership of our users in rooms this server is not (yet) part of.

Joining (``make_join`` with our room versions in ``ver`` → check the
template → sign → ``send_join`` v2, falling back to v1 → verify the state and
auth chain (signatures, hashes, auth) → persist them as the room's state),
trying each candidate resident server in turn; leaving or rejecting an
invite (``make_leave``/``send_leave`` through a resident or the inviting
server); knocking (``make_knock``/``send_knock``); sending invites for local
inviters (``PUT /v2/invite``, the invitee's server countersigns); resolving
remote aliases (``/query/directory``).

Memberships known without the room's state (an invite we received, our
rejection of it, our knock) are stored "out of band": as events with only
that state, so /sync shows them; joining later replaces that state with the
room's own.

Implements ``RemoteMembership`` (services/membership.py) and
``RemoteDirectory`` (services/directory.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from homeserver.core.auth import AuthError, check_auth
from homeserver.core.canonical import redact
from homeserver.core.events import STRIPPED_STATE_TYPES, Event, InvalidEvent, StateKey
from homeserver.core.ids import InvalidID, RoomAlias, ServerName
from homeserver.core.room_versions import (
    KNOWN_ROOM_VERSIONS,
    RoomVersion,
    UnsupportedRoomVersion,
    get_room_version,
)
from homeserver.core.signing import SignatureError, sign_event
from homeserver.services.clock import now_ms
from homeserver.services.errors import MatrixError, not_found
from homeserver.services.federation.client import FederationClient, FederationError, encode_path
from homeserver.services.federation.ingest import Checked, Dropped, Ingest
from homeserver.services.federation.keyring import Keyring
from homeserver.services.persister import Pending
from homeserver.services.server_keys import ServerKeys
from homeserver.storage.database import Database
from homeserver.storage.ephemeral import EphemeralStore
from homeserver.storage.events import EventStore
from homeserver.storage.projections import Projections

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = sorted(KNOWN_ROOM_VERSIONS)
JOIN_TIMEOUT = 120.0


def stripped(ev: Mapping[str, Any]) -> dict[str, Any] | None:
    """A stripped state event from a PDU or a stripped event."""
    if not isinstance(ev, Mapping):
        return None
    t, sk, content, sender = (
        ev.get("type"),
        ev.get("state_key"),
        ev.get("content"),
        ev.get("sender"),
    )
    if not isinstance(t, str) or not isinstance(sk, str) or not isinstance(content, Mapping):
        return None
    out: dict[str, Any] = {"type": t, "state_key": sk, "content": dict(content)}
    if isinstance(sender, str):
        out["sender"] = sender
    return out


def _server_of(user_or_room: str) -> str | None:
    _, sep, server = user_or_room.partition(":")
    if not sep:
        return None
    try:
        return ServerName.parse(server)
    except InvalidID:
        return None


def _federation_to_matrix(e: FederationError, what: str) -> MatrixError:
    if e.blocked:
        return MatrixError(502, "M_UNKNOWN", f"{what}: {e}")
    if e.status is None:
        return MatrixError(502, "M_UNKNOWN", f"{what}: {e.destination} is unreachable")
    errcode = e.errcode or "M_UNKNOWN"
    msg = e.body.get("error") if isinstance(e.body.get("error"), str) else str(e)
    if e.status in (403, 404) or errcode in (
        "M_FORBIDDEN",
        "M_NOT_FOUND",
        "M_INCOMPATIBLE_ROOM_VERSION",
        "M_UNSUPPORTED_ROOM_VERSION",
    ):
        status = e.status if e.status in (400, 403, 404) else 400
        return MatrixError(status, errcode, f"{what}: {msg}")
    return MatrixError(502, errcode, f"{what}: {e.destination} answered {e.status}: {msg}")


class RemoteRooms:
    def __init__(
        self,
        db: Database,
        store: EventStore,
        projections: Projections,
        ingest: Ingest,
        client: FederationClient,
        keyring: Keyring,
        keys: ServerKeys,
        ephemeral: EphemeralStore,
        sender: Any,
    ) -> None:
        self._db = db
        self._store = store
        self._proj = projections
        self._ingest = ingest
        self._client = client
        self._keyring = keyring
        self._keys = keys
        self._eph = ephemeral
        self._sender = sender
        self._name = keys.server_name
        # Told of a leave made locally because no server could be reached:
        # (our leave, the servers tried, the leave's content).
        self.rejected_locally: (
            Callable[[Event, Sequence[str], dict[str, Any]], Awaitable[None]] | None
        ) = None

    # ---------------------------------------------------------- candidates
    async def _candidates(self, user_id: str, room_id: str, servers: Sequence[str]) -> list[str]:
        out: list[str] = []
        for s in servers:
            if s and s != self._name and s not in out:
                out.append(s)
        m = await self._proj.membership(room_id, user_id)
        if m is not None:
            se = await self._store.get_event(m[1])
            if se is not None:
                for by in (_server_of(se.event.sender), _server_of(se.event.state_key or "")):
                    if by and by != self._name and by not in out:
                        out.append(by)
        stripped_state = await self._eph.invite_state(room_id, user_id) or []
        for ev in stripped_state:
            sender = _server_of(str(ev.get("sender", "")))
            if sender and sender != self._name and sender not in out:
                out.append(sender)
        for s in sorted(await self._proj.room_servers(room_id)):
            if s != self._name and s not in out:
                out.append(s)
        of_room = _server_of(room_id)
        if of_room and of_room != self._name and of_room not in out:
            out.append(of_room)
        return out

    # ---------------------------------------------------------------- join
    async def join_remote(
        self, user_id: str, room_id: str, servers: Sequence[str], content: dict[str, Any]
    ) -> str:
        candidates = await self._candidates(user_id, room_id, servers)
        if not candidates:
            raise not_found("No known servers for this room")
        last: MatrixError | None = None
        for server in candidates:
            try:
                await self._join_via(server, user_id, room_id, content)
                return room_id
            except FederationError as e:
                log.info("joining %s via %s failed: %s", room_id, server, e)
                last = _federation_to_matrix(e, "Join failed")
                if e.status == 403:
                    break  # the room refuses: other residents will agree
            except MatrixError as e:
                log.info("joining %s via %s failed: %s", room_id, server, e.message)
                last = e
                if e.status == 403:
                    break
        assert last is not None
        raise last

    async def _make(
        self,
        server: str,
        kind: str,
        room_id: str,
        user_id: str,
        with_versions: bool,
    ) -> tuple[RoomVersion, dict[str, Any]]:
        query = {"ver": SUPPORTED_VERSIONS} if with_versions else None
        resp = await self._client.get_json(
            server,
            encode_path(f"/_matrix/federation/v1/make_{kind}/{{}}/{{}}", room_id, user_id),
            query,
        )
        if not isinstance(resp, dict) or not isinstance(resp.get("event"), dict):
            raise MatrixError(502, "M_UNKNOWN", f"make_{kind} from {server}: no event template")
        try:
            rv = get_room_version(resp.get("room_version", "1"))
        except UnsupportedRoomVersion as e:
            raise MatrixError(
                400,
                "M_UNSUPPORTED_ROOM_VERSION",
                f"room version {resp.get('room_version')!r} is not supported",
            ) from e
        return rv, resp["event"]

    def _sign_template(
        self,
        rv: RoomVersion,
        template: Mapping[str, Any],
        room_id: str,
        user_id: str,
        membership: str,
        content: Mapping[str, Any],
    ) -> Event:
        """Check the template (type, room_id, sender, state_key, membership)
        and sign our event from it."""
        tc = template.get("content")
        if (
            template.get("type") != "m.room.member"
            or template.get("room_id") != room_id
            or template.get("sender") != user_id
            or template.get("state_key") != user_id
            or not isinstance(tc, Mapping)
            or tc.get("membership") != membership
        ):
            raise MatrixError(502, "M_UNKNOWN", f"the {membership} template is not as expected")
        new_content = dict(content)
        new_content["membership"] = membership
        via = tc.get("join_authorised_via_users_server")
        if membership == "join" and isinstance(via, str):
            new_content["join_authorised_via_users_server"] = via
        pdu: dict[str, Any] = {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": user_id,
            "state_key": user_id,
            "content": new_content,
            "depth": template.get("depth"),
            "prev_events": template.get("prev_events"),
            "auth_events": template.get("auth_events"),
            "origin_server_ts": now_ms(),
        }
        signed = sign_event(pdu, self._name, self._keys.signing_key, rv)
        try:
            return Event.from_pdu(signed, rv)  # type: ignore[attr-defined,no-any-return]
        except InvalidEvent as e:
            raise MatrixError(502, "M_UNKNOWN", f"the {membership} template is invalid: {e}") from e

    async def _send(self, server: str, kind: str, ev: Event, *, v2: bool = True) -> Any:
        path = f"/_matrix/federation/v{'2' if v2 else '1'}/send_{kind}/{{}}/{{}}"
        try:
            resp = await self._client.put_json(
                server,
                encode_path(path, ev.room_id, ev.event_id),
                dict(ev.pdu),
                timeout=JOIN_TIMEOUT,
            )
        except FederationError as e:
            if v2 and kind != "knock" and (e.status == 404 or e.errcode == "M_UNRECOGNIZED"):
                return await self._send(server, kind, ev, v2=False)
            raise
        if not v2 and kind != "knock":  # v1 join/leave answer [200, body]
            if isinstance(resp, list) and len(resp) == 2 and isinstance(resp[1], dict):
                return resp[1]
            raise MatrixError(502, "M_UNKNOWN", f"bad send_{kind} v1 answer from {server}")
        return resp

    async def _join_via(
        self, server: str, user_id: str, room_id: str, content: dict[str, Any]
    ) -> None:
        t_make = now_ms()
        rv, template = await self._make(server, "join", room_id, user_id, True)
        ev = self._sign_template(rv, template, room_id, user_id, "join", content)
        t_send = now_ms()
        resp = await self._send(server, "join", ev)
        if not isinstance(resp, dict):
            raise MatrixError(502, "M_UNKNOWN", "bad send_join answer")
        # The resident may have countersigned (restricted joins): keep its copy.
        returned = resp.get("event")
        if isinstance(returned, dict):
            try:
                again = Event.from_pdu(returned, rv)  # type: ignore[attr-defined]
                if again.event_id == ev.event_id:
                    ev = again
            except InvalidEvent:
                pass
        state_pdus = resp.get("state")
        chain_pdus = resp.get("auth_chain")
        if not isinstance(state_pdus, list) or not isinstance(chain_pdus, list):
            raise MatrixError(502, "M_UNKNOWN", "send_join answer lacks state or auth_chain")
        t0 = now_ms()
        stored = await self._ingest.persist_outliers(
            server, room_id, rv, [*chain_pdus, *state_pdus]
        )
        t_checked = now_ms()
        have = await self._store.get_events(stored)
        state: dict[StateKey, str] = {}
        for p in state_pdus:
            try:
                eid = Event.from_pdu(p, rv).event_id  # type: ignore[attr-defined]
            except (InvalidEvent, ValueError, TypeError):
                continue
            se = have.get(eid)
            if se is not None and se.event.is_state and se.rejected_reason is None:
                state[se.event.state_tuple] = eid
        create_id = state.get(("m.room.create", ""))
        create = have.get(create_id) if create_id else None
        if create is None or create.event.content.get("room_version", "1") != rv.identifier:
            raise MatrixError(502, "M_UNKNOWN", "send_join state has no valid create event")
        auth_map = await self._ingest.auth_map_from_state(ev, state)
        try:
            check_auth(ev, auth_map)
        except AuthError as e:
            raise MatrixError(502, "M_UNKNOWN", f"our join does not pass auth: {e}") from e
        await self.commit_with_state(ev, state, rv, create.event.sender)
        done = now_ms()
        log.info(
            "joined %s via %s: %d state events, %d in auth chain, checked in %d ms "
            "(make_join %d ms, send_join %d ms, verify+store %d ms, commit %d ms)",
            room_id,
            server,
            len(state_pdus),
            len(chain_pdus),
            done - t0,
            t_send - t_make,
            t0 - t_send,
            t_checked - t0,
            done - t_checked,
        )

    async def commit_with_state(
        self, ev: Event, before: Mapping[StateKey, str], rv: RoomVersion, creator: str
    ) -> None:
        """Append ``ev`` on top of ``before`` (a state we were given): the
        event is adopted as the room's head (``Pending.adopt``), so the state
        after it becomes the room's current state."""
        room_id = ev.room_id
        persister = self._ingest.persister
        async with self._ingest.room_lock(room_id), self._db.pool.acquire() as conn:
            await persister.lock_room(conn, room_id)
            try:
                if await self._store.have_events([ev.event_id]):
                    return
                exists = await self._store.room_version(room_id) is not None
                group = await self._ingest.snapshot_state_before(conn, ev, before)
                entry = Pending(event=ev, state_before=dict(before), before_group=group, adopt=True)
                await persister.commit(
                    conn,
                    room_id,
                    [entry],
                    new_room=None if exists else (rv.identifier, creator, ev.origin_server_ts),
                )
            finally:
                await persister.unlock_room(conn, room_id)

    async def commit_out_of_band(self, ev: Event, creator: str) -> None:
        """Our membership in a room whose state we lack (invite, rejection,
        knock): appended on top of whatever we know of the room."""
        room_id = ev.room_id
        current: Mapping[StateKey, str] = {}
        if await self._store.room_version(room_id) is not None:
            current = await self._proj.current_state_ids(room_id)
        await self.commit_with_state(ev, current, ev.room_version, creator)

    # --------------------------------------------------------------- leave
    async def leave_remote(self, user_id: str, room_id: str, content: dict[str, Any]) -> str:
        """Reject an invite or retract a knock through a resident server."""
        candidates = await self._candidates(user_id, room_id, [])
        last: Exception | None = None
        for server in candidates:
            try:
                ev = await self.leave_via(server, user_id, room_id, content)
                await self.commit_out_of_band(ev, ev.sender)
                return ev.event_id
            except (FederationError, MatrixError) as e:
                log.info("leaving %s via %s failed: %s", room_id, server, e)
                last = e
        # Nobody could be reached: still end the invite here, as the user asked
        # (as Synapse does); the rejection is owed to the room's servers.
        local = await self._local_leave(user_id, room_id, content)
        if local is None:
            if isinstance(last, FederationError):
                raise _federation_to_matrix(last, "Leave failed")
            raise last or not_found("No known servers for this room")
        if self.rejected_locally is not None:
            await self.rejected_locally(local, candidates, content)
        return local.event_id

    async def leave_via(
        self, server: str, user_id: str, room_id: str, content: dict[str, Any]
    ) -> Event:
        """``make_leave`` + ``send_leave`` through ``server``: our leave, as
        the room's DAG has it there (not stored here)."""
        rv, template = await self._make(server, "leave", room_id, user_id, False)
        ev = self._sign_template(rv, template, room_id, user_id, "leave", content)
        await self._send(server, "leave", ev)
        return ev

    async def _local_leave(
        self, user_id: str, room_id: str, content: dict[str, Any]
    ) -> Event | None:
        m = await self._proj.membership(room_id, user_id)
        if m is None or m[0] not in ("invite", "knock"):
            return None
        se = await self._store.get_event(m[1])
        if se is None:
            return None
        prev = se.event
        rv = prev.room_version
        pdu = {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": user_id,
            "state_key": user_id,
            "content": {**content, "membership": "leave"},
            "depth": prev.depth + 1,
            "prev_events": [prev.event_id],
            "auth_events": [prev.event_id],
            "origin_server_ts": now_ms(),
        }
        ev = Event.from_pdu(  # type: ignore[attr-defined]
            sign_event(pdu, self._name, self._keys.signing_key, rv), rv
        )
        await self.commit_out_of_band(ev, ev.sender)
        return ev  # type: ignore[no-any-return]

    # --------------------------------------------------------------- knock
    async def knock_remote(
        self, user_id: str, room_id: str, servers: Sequence[str], content: dict[str, Any]
    ) -> str:
        candidates = await self._candidates(user_id, room_id, servers)
        if not candidates:
            raise not_found("No known servers for this room")
        last: MatrixError | None = None
        for server in candidates:
            try:
                rv, template = await self._make(server, "knock", room_id, user_id, True)
                ev = self._sign_template(rv, template, room_id, user_id, "knock", content)
                resp = await self._send(server, "knock", ev, v2=False)
                state = resp.get("knock_room_state", []) if isinstance(resp, dict) else []
                events = [s for s in (stripped(e) for e in state) if s is not None]
                await self._eph.put_invite_state(room_id, user_id, events)
                creator = next(
                    (e.get("sender") for e in events if e["type"] == "m.room.create"), ev.sender
                )
                await self.commit_out_of_band(ev, str(creator))
                return room_id
            except FederationError as e:
                log.info("knocking on %s via %s failed: %s", room_id, server, e)
                last = _federation_to_matrix(e, "Knock failed")
                if e.status == 403:
                    break
            except MatrixError as e:
                last = e
        assert last is not None
        raise last

    # -------------------------------------------------------------- invite
    async def invite_room_state(self, room_id: str, inviter: str) -> list[dict[str, Any]]:
        state = await self._proj.current_state_ids(room_id)
        ids = [state[(t, "")] for t in STRIPPED_STATE_TYPES if (t, "") in state]
        if ("m.room.member", inviter) in state:
            ids.append(state[("m.room.member", inviter)])
        evs = await self._store.get_events(ids)
        return [dict(evs[i].event.pdu) for i in ids if i in evs]

    async def send_invite(self, event: Event) -> Event:
        """Have the invitee's server countersign ``event`` (PUT /v2/invite)."""
        target = event.state_key or ""
        dest = _server_of(target)
        if dest is None:
            raise MatrixError(400, "M_INVALID_PARAM", f"bad invitee {target}")
        body = {
            "room_version": event.room_version.identifier,
            "event": dict(event.pdu),
            "invite_room_state": await self.invite_room_state(event.room_id, event.sender),
        }
        try:
            resp = await self._client.put_json(
                dest,
                encode_path("/_matrix/federation/v2/invite/{}/{}", event.room_id, event.event_id),
                body,
            )
        except FederationError as e:
            raise _federation_to_matrix(e, "Invite failed") from e
        signed = resp.get("event") if isinstance(resp, dict) else None
        if not isinstance(signed, dict):
            raise MatrixError(502, "M_UNKNOWN", f"{dest} returned no signed invite")
        rv = event.room_version
        try:
            got = Event.from_pdu(signed, rv)  # type: ignore[attr-defined]
        except InvalidEvent as e:
            raise MatrixError(502, "M_UNKNOWN", f"{dest} returned a bad invite: {e}") from e
        if got.event_id != event.event_id:
            raise MatrixError(502, "M_UNKNOWN", f"{dest} changed the invite")
        try:
            await self._keyring.verify_signed_by(
                redact(signed, rv) | {"signatures": signed.get("signatures", {})},
                dest,
                got.origin_server_ts,
            )
        except SignatureError as e:
            raise MatrixError(502, "M_UNKNOWN", f"{dest} did not sign the invite: {e}") from e
        return got  # type: ignore[no-any-return]

    # ---------------------------------------------------------- directory
    async def query_alias(self, alias: str) -> tuple[str, list[str]] | None:
        server = RoomAlias(alias).server_name
        try:
            resp = await self._client.get_json(
                server, "/_matrix/federation/v1/query/directory", {"room_alias": alias}
            )
        except FederationError as e:
            if e.status == 404:
                return None
            raise _federation_to_matrix(e, "Alias lookup failed") from e
        room_id = resp.get("room_id") if isinstance(resp, dict) else None
        if not isinstance(room_id, str):
            return None
        servers = [s for s in resp.get("servers", []) if isinstance(s, str)]
        if server not in servers:
            servers.append(server)
        return room_id, servers

    async def hierarchy(
        self, server: str, room_id: str, suggested_only: bool
    ) -> Mapping[str, Any] | None:
        """A remote space's part of a hierarchy (Server-Server ``/hierarchy``)."""
        resp = await self._client.get_json(
            server,
            encode_path("/_matrix/federation/v1/hierarchy/{}", room_id),
            {"suggested_only": "true" if suggested_only else "false"},
        )
        return resp if isinstance(resp, dict) else None

    # ------------------------------------------------------------ helpers
    def checked(self, ev: Event) -> Checked:
        return Checked(ev, None)


__all__ = ["Dropped", "RemoteRooms", "stripped"]

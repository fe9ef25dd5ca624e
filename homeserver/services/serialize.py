"""Events as clients see them: the ClientEvent form with ``unsigned``
(age, transaction_id for the sender's device, prev_content, redacted_because,
the bundled aggregations of ``m.relations``) and redactions applied."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from homeserver.core.canonical import redact
from homeserver.core.events import Event
from homeserver.services.clock import now_ms
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.projections import Projections
from homeserver.storage.relations import RelationStore, Summary


class VisibilityFilter(Protocol):
    """Which of some events a user may see (services/timeline.Visibility)."""

    async def filter_many(
        self, user_id: str, events: Sequence[StoredEvent]
    ) -> list[StoredEvent]: ...


class EventSerializer:
    def __init__(
        self,
        store: EventStore,
        projections: Projections,
        relations: RelationStore | None = None,
        visibility: VisibilityFilter | None = None,
    ) -> None:
        self._store = store
        self._proj = projections
        self._relations = relations
        self._visibility = visibility

    async def serialize(
        self,
        events: Sequence[StoredEvent],
        *,
        viewer: tuple[str, str] | None = None,
        prev_content: bool = True,
        redactions: Mapping[str, list[str]] | None = None,
        redactions_cover: Collection[str] = (),
        bundle: bool = True,
        relations_cover: Collection[str] = (),
    ) -> list[dict[str, Any]]:
        """``redactions`` (redacted id → redaction ids) is authoritative for
        the ids in ``redactions_cover`` (already read by the caller); the
        rest are looked up. With ``bundle``, events get the aggregations of
        their relations (one query for all of them), except those in
        ``relations_cover``, which the caller knows have none."""
        if not events:
            return []
        known = dict(redactions or {})
        rest = [e.event.event_id for e in events if e.event.event_id not in redactions_cover]
        redactions = {**known, **(await self._proj.redactions_of(rest))} if rest else known
        redaction_events = await self._store.get_events(
            r for ids in redactions.values() for r in ids
        )
        if prev_content:
            # Warm the cache with every predecessor of a state event at once.
            await self._store.get_events(
                {p for se in events if se.event.is_state for p in se.event.prev_events}
            )
        now = now_ms()
        out = []
        for se in events:
            ev = se.event
            d = ev.client_dict()
            unsigned: dict[str, Any] = {"age": max(0, now - ev.origin_server_ts)}
            applied = self._valid_redaction(ev, redactions.get(ev.event_id, []), redaction_events)
            if applied is not None:
                pruned = redact(dict(ev.pdu), ev.room_version)
                d["content"] = pruned.get("content", {})
                red = applied.event.client_dict()
                unsigned["redacted_because"] = red
            if (
                viewer is not None
                and se.txn_id
                and ev.sender == viewer[0]
                and se.txn_device_id == viewer[1]
            ):
                unsigned["transaction_id"] = se.txn_id
            if prev_content and ev.is_state:
                prev = await self._prev_state(se)
                if prev is not None:
                    unsigned["replaces_state"] = prev.event_id
                    unsigned["prev_content"] = dict(prev.content)
                    unsigned["prev_sender"] = prev.sender
            d["unsigned"] = unsigned
            out.append(d)
        if bundle and viewer is not None and self._relations is not None:
            wanted = [e for e in events if e.event.event_id not in relations_cover]
            await self._bundle(wanted, out, viewer, depth=1)
        return out

    async def _bundle(
        self,
        events: Sequence[StoredEvent],
        out: list[dict[str, Any]],
        viewer: tuple[str, str],
        depth: int,
    ) -> None:
        """Add ``unsigned.m.relations`` to the unredacted ``events`` (their
        forms in ``out``) (Client-Server API "Aggregations of child events"):
        the m.thread summary, the latest m.replace event in full (since v1.7
        the content itself is never replaced) and the m.reference ids. The
        latest thread replies and edits are serialised in turn and bundled
        ``depth`` more times (1 from the top: a reply's own edit). One the
        viewer may not see (history visibility) is never shown: its
        aggregation is left out rather than leak it."""
        assert self._relations is not None
        by_id = {d["event_id"]: d for d in out}
        todo = [
            se for se in events if "redacted_because" not in by_id[se.event.event_id]["unsigned"]
        ]
        reader = viewer[0]
        summaries = await self._relations.aggregations([se.event for se in todo], reader)
        if not summaries:
            return
        found = await self._store.get_events({s.latest for s in summaries})
        chosen = list(found.values())
        if self._visibility is not None:
            chosen = await self._visibility.filter_many(reader, chosen)
        rendered = await self.serialize(chosen, viewer=viewer, bundle=False)
        if depth > 0:
            await self._bundle(chosen, rendered, viewer, depth - 1)
        latest = {d["event_id"]: d for d in rendered}
        parents = {se.event.event_id: se.event for se in todo}
        for s in summaries:
            parent = parents[s.parent]
            if s.latest not in latest or (s.rel_type == "m.replace" and _is_edit(parent)):
                continue  # (an edit is never edited itself)
            rel = by_id[s.parent]["unsigned"].setdefault("m.relations", {})
            rel[s.rel_type] = _aggregation(s, latest[s.latest], parent.sender == reader)

    async def serialize_one(
        self, se: StoredEvent, viewer: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        return (await self.serialize([se], viewer=viewer))[0]

    def _valid_redaction(
        self, ev: Event, redaction_ids: list[str], events: dict[str, StoredEvent]
    ) -> StoredEvent | None:
        """The first redaction that applies: same sender, or sender on the
        same server (the redact power was checked when it was accepted)."""
        for rid in redaction_ids:
            r = events.get(rid)
            if r is None or r.rejected_reason or r.soft_failed:
                continue
            return r
        return None

    async def _prev_state(self, se: StoredEvent) -> Event | None:
        ev = se.event
        if not ev.prev_events:
            return None
        prevs = await self._store.get_events(ev.prev_events)
        for p in prevs.values():
            if p.state_group is None:
                continue
            state = await self._store.state_at_group(p.state_group)
            eid = state.get(ev.state_tuple)
            if eid is not None and eid != ev.event_id:
                got = await self._store.get_event(eid)
                return got.event if got else None
        return None


def _aggregation(s: Summary, latest: dict[str, Any], reader_is_parent_sender: bool) -> Any:
    """One relation type's entry in ``unsigned.m.relations``."""
    if s.rel_type == "m.thread":
        return {
            "latest_event": latest,
            "count": s.count,
            "current_user_participated": s.participated or reader_is_parent_sender,
        }
    if s.rel_type == "m.replace":
        return latest
    return {"chunk": [{"event_id": i} for i in s.ids]}


def _is_edit(ev: Event) -> bool:
    rel = ev.content.get("m.relates_to")
    return isinstance(rel, Mapping) and rel.get("rel_type") == "m.replace"

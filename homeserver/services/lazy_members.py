"""Which member events each device was already sent, for lazy-loading /sync.

The Client-Server API ("Lazy-loading room members") lets a server send a
member event the client already has, but asks it not to unless the filter
sets ``include_redundant_members``; conformance suites check that a sender's
membership is not repeated on every incremental sync. Like Synapse, this
remembers per process and per device, bounded: a device served by another
process, or evicted here, is sent them again, which the spec allows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

from homeserver.core.events import StateKey
from homeserver.core.lru import CacheFill

MAX_DEVICES = 20_000


class SentMembers:
    """(user, device) → room → member user id → the member event id sent."""

    def __init__(self, max_devices: int = MAX_DEVICES) -> None:
        self._max = max_devices
        self._sent: OrderedDict[tuple[str, str], dict[str, dict[str, str]]] = OrderedDict()

    @property
    def fill(self) -> CacheFill:
        return CacheFill(len(self._sent), len(self._sent), self._max)

    def unsent(
        self,
        user_id: str,
        device_id: str,
        room_id: str,
        state_ids: Mapping[StateKey, str],
        timeline_members: Iterable[tuple[str, str]],
        *,
        reset: bool,
    ) -> dict[StateKey, str]:
        """``state_ids`` without the member events this device already has,
        recording what it gets now (``state_ids`` and the member events of
        the timeline, as (state key, event id)). ``reset`` (an initial or
        full-state sync) forgets what was sent before: the client starts
        over."""
        key = (user_id, device_id)
        rooms = self._sent.pop(key, {})
        self._sent[key] = rooms
        while len(self._sent) > self._max:
            self._sent.popitem(last=False)
        sent = rooms.setdefault(room_id, {})
        if reset:
            sent.clear()
        out = {k: v for k, v in state_ids.items() if k[0] != "m.room.member" or sent.get(k[1]) != v}
        sent.update((k[1], v) for k, v in out.items() if k[0] == "m.room.member")
        sent.update(timeline_members)
        return out

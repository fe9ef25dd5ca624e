"""A least-recently-used cache bounded by weight.

Each value weighs ``weigh(value)`` (1 by default, so the bound is a count).
Caches of state maps weigh them by their length: a state group of a
10,000-member room holds 10,000 entries, and a room's state only grows, so
a bound on the number of groups is no bound on memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple


class CacheFill(NamedTuple):
    """How full a bounded cache is, for the metrics: an operator (and
    ``scripts/soak``) tells a cache still filling toward its bound from
    memory that grows without one."""

    entries: int
    weight: int  # in the bound's unit (entries, unless the cache weighs them)
    bound: int


def scaled(bound: int, factor: float) -> int:
    """A cache's default bound times the operator's ``caches.global_factor``
    (never below one entry)."""
    return max(1, int(bound * factor))


class LRU(OrderedDict[Any, Any]):
    def __init__(self, max_weight: int, *, weigh: Callable[[Any], int] | None = None) -> None:
        super().__init__()
        self._max = max_weight
        self._weigh = weigh
        self.weight = 0

    @property
    def fill(self) -> CacheFill:
        return CacheFill(len(self), self.weight, self._max)

    def _w(self, value: Any) -> int:
        return 1 if self._weigh is None else self._weigh(value)

    def get_(self, key: Any) -> Any:
        """The value (None if absent), now the most recently used."""
        v = self.get(key)
        if v is not None:
            self.move_to_end(key)
        return v

    def drop(self, key: Any) -> None:
        old = self.pop(key, None)
        if old is not None:
            self.weight -= self._w(old)

    def put(self, key: Any, value: Any) -> None:
        self.drop(key)
        w = self._w(value)
        if w > self._max:
            return  # heavier than the whole cache: not kept
        self[key] = value
        self.weight += w
        while self.weight > self._max:
            _, evicted = self.popitem(last=False)
            self.weight -= self._w(evicted)

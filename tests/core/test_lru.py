"""core/lru.py: caches bounded by weight."""

from __future__ import annotations

from homeserver.core.lru import LRU


def test_state_cache_is_bounded_by_entries_not_groups() -> None:
    """A room's state only grows, and a big room's groups each hold all of
    it: the cache of state maps counts entries (soak: the old 2,000-group
    cap let a churning room's maps grow the process without bound)."""
    cache = LRU(100, weigh=len)
    for g in range(10):
        cache.put(g, {("m.room.member", f"@u{i}:x"): f"$e{i}" for i in range(30)})
    assert cache.weight <= 100 and list(cache) == [7, 8, 9]
    assert cache.get_(7) is not None  # now the most recent
    cache.put(10, {("k", ""): "$e"})
    assert list(cache) == [8, 9, 7, 10] and cache.weight == 91
    cache.put(11, {(str(i), ""): "$e" for i in range(101)})  # bigger than the cache
    assert 11 not in cache and cache.weight == 91
    cache.drop(8)
    assert list(cache) == [9, 7, 10] and cache.weight == 61

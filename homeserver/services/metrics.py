"""Metrics for Prometheus (``prometheus_client``), on a listener of their own.

One registry per server process (no module globals). Request counts and
latencies are observed by a middleware; everything else is read from the
services' own counters when Prometheus scrapes, so the write and sync paths
pay nothing for it. What needs the database (the federation queues) is read
by the scrape itself, before the text is generated.

Families (all prefixed ``homeserver_``):

- ``http_requests_total`` / ``http_request_duration_seconds``: by listener,
  method, route (the route's pattern, never the raw path) and status;
- ``events_persisted_total``: by origin (local, federated) and outcome
  (accepted, rejected, soft_failed, outlier);
- ``state_resolutions_total`` and ``state_resolution_seconds_total``;
- ``state_reset_alarms_total`` (see ``services/room_head.py``);
- ``sync_waiters`` (parked long-polls) and ``sync_wakeups_total``;
- ``federation_queue_items`` / ``federation_queue_oldest_age_seconds`` per
  destination; ``federation_transactions_total`` by direction and result;
- ``db_pool_connections`` by state (in use, idle), ``db_pool_max``;
- ``rate_limited_total``: requests refused by a rate limit (429), by route;
- ``malloc_in_use_bytes`` / ``malloc_system_bytes`` (glibc) and
  ``python_allocated_blocks``: live memory, to tell from RSS (see
  ``services/memory.py``);
- ``cache_entries`` / ``cache_weight`` / ``cache_bound`` by cache: how full
  each in-memory cache is (weight in the bound's unit; a bound of 0: bounded
  by something else, see ``core/lru.py``), so memory still growing can be
  told from a cache still filling;
- the process collector's ``process_*`` (RSS, CPU, open files).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from homeserver.core.lru import CacheFill
from homeserver.services.memory import heap_figures


@dataclass
class Sources:
    """Where the scrape-time figures come from (set by app.py)."""

    persisted: Callable[[], dict[tuple[str, str], int]] = dict
    resolutions: Callable[[], tuple[int, float]] = lambda: (0, 0.0)
    alarms: Callable[[], int] = lambda: 0
    waiters: Callable[[], int] = lambda: 0
    wakeups: Callable[[], int] = lambda: 0
    transactions: Callable[[], dict[tuple[str, str], int]] = dict
    pool: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)  # size, idle, max
    caches: Callable[[], dict[str, CacheFill]] = dict
    # (destination, items, oldest created_ts ms), read at scrape time
    queues: Callable[[], Awaitable[list[tuple[str, int, int]]]] | None = None
    _queue_snapshot: list[tuple[str, int, int]] = field(default_factory=list)


class _FromServices(Collector):
    def __init__(self, sources: Sources) -> None:
        self._s = sources

    def collect(self) -> Iterator[Metric]:
        s = self._s
        persisted = CounterMetricFamily(
            "homeserver_events_persisted", "Events written to the log", labels=["origin", "outcome"]
        )
        for (origin, outcome), n in sorted(s.persisted().items()):
            persisted.add_metric([origin, outcome], n)
        yield persisted
        count, seconds = s.resolutions()
        yield CounterMetricFamily(
            "homeserver_state_resolutions", "State resolutions run", value=count
        )
        yield CounterMetricFamily(
            "homeserver_state_resolution_seconds", "Time spent in state resolution", value=seconds
        )
        yield CounterMetricFamily(
            "homeserver_state_reset_alarms", "Resolutions that moved state back", value=s.alarms()
        )
        yield GaugeMetricFamily(
            "homeserver_sync_waiters", "Parked /sync long-polls", value=s.waiters()
        )
        yield CounterMetricFamily(
            "homeserver_sync_wakeups", "Long-polls woken by new data", value=s.wakeups()
        )
        txns = CounterMetricFamily(
            "homeserver_federation_transactions",
            "Federation transactions",
            labels=["direction", "result"],
        )
        for (direction, result), n in sorted(s.transactions().items()):
            txns.add_metric([direction, result], n)
        yield txns
        now_ms = time.time() * 1000
        items = GaugeMetricFamily(
            "homeserver_federation_queue_items", "Queued PDUs and EDUs", labels=["destination"]
        )
        age = GaugeMetricFamily(
            "homeserver_federation_queue_oldest_age_seconds",
            "Age of the oldest queued item",
            labels=["destination"],
        )
        for dest, n, oldest in s._queue_snapshot:
            items.add_metric([dest], n)
            age.add_metric([dest], max(0.0, (now_ms - oldest) / 1000))
        yield items
        yield age
        size, idle, top = s.pool()
        pool = GaugeMetricFamily(
            "homeserver_db_pool_connections", "Database pool connections", labels=["state"]
        )
        pool.add_metric(["in_use"], size - idle)
        pool.add_metric(["idle"], idle)
        yield pool
        yield GaugeMetricFamily("homeserver_db_pool_max", "Database pool size limit", value=top)
        yield from _cache_families(s.caches())
        heap = heap_figures()
        if heap.malloc_in_use is not None and heap.malloc_system is not None:
            yield GaugeMetricFamily(
                "homeserver_malloc_in_use_bytes", "C heap bytes in use", value=heap.malloc_in_use
            )
            yield GaugeMetricFamily(
                "homeserver_malloc_system_bytes",
                "C heap bytes held from the system (freed pages included until trimmed)",
                value=heap.malloc_system,
            )
        yield GaugeMetricFamily(
            "homeserver_python_allocated_blocks",
            "Blocks allocated by Python's object allocator",
            value=heap.python_blocks,
        )


def _cache_families(caches: dict[str, CacheFill]) -> Iterator[Metric]:
    families = [
        GaugeMetricFamily(f"homeserver_cache_{field}", help_, labels=["cache"])
        for field, help_ in (
            ("entries", "Entries in an in-memory cache"),
            ("weight", "An in-memory cache's weight, in its bound's unit"),
            ("bound", "An in-memory cache's bound (0: bounded by what uses it)"),
        )
    ]
    for name, fill in sorted(caches.items()):
        for family, value in zip(families, fill, strict=True):
            family.add_metric([name], value)
    yield from families


class Metrics:
    """The process's registry and the request observations."""

    def __init__(self, sources: Sources | None = None) -> None:
        self.registry = CollectorRegistry()
        self.sources = sources or Sources()
        self.requests = Counter(
            "homeserver_http_requests",
            "HTTP requests answered",
            ["listener", "method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "homeserver_http_request_duration_seconds",
            "HTTP request latency",
            ["listener", "method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        # Refusals by a rate limit (429 M_LIMIT_EXCEEDED), by route.
        self.rate_limited = Counter(
            "homeserver_rate_limited",
            "Requests refused by a rate limit",
            ["route"],
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        self.registry.register(_FromServices(self.sources))

    def observe(self, listener: str, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(listener, method, route, str(status)).inc()
        if status == 429:
            self.rate_limited.labels(route).inc()
        self.latency.labels(listener, method, route).observe(seconds)

    async def refresh(self) -> None:
        """What a scrape must read from the database first."""
        if self.sources.queues is not None:
            self.sources._queue_snapshot = await self.sources.queues()


def transactions_of(
    received: Callable[[], int],
    sent: Callable[[], Iterable[int]],
    failed: Callable[[], Iterable[int]],
) -> Callable[[], dict[tuple[str, str], int]]:
    def read() -> dict[tuple[str, str], int]:
        return {
            ("in", "handled"): received(),
            ("out", "sent"): sum(sent()),
            ("out", "failed"): sum(failed()),
        }

    return read

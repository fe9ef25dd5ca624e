"""Token buckets, as pure arithmetic (no clock, no storage).

A bucket holds ``level`` recent actions; it drains at ``per_second`` and
takes at most ``burst_count``. An action of ``cost`` is allowed when it fits
on top of the drained level; when it does not, the answer says how long to
wait until it would — the ``retry_after_ms`` of a 429 ``M_LIMIT_EXCEEDED``.
A refused action is not counted, so a client that waits as told gets in.
Synapse's ``rc_*`` settings have the same two numbers and meaning.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    """``burst_count`` actions at once, refilled at ``per_second``."""

    per_second: float
    burst_count: float


@dataclass(frozen=True, slots=True)
class Bucket:
    """``level`` actions counted, as measured at time ``at`` (seconds)."""

    level: float
    at: float

    def drained(self, rate: Rate, now: float) -> float:
        """The level at ``now``: what has leaked out since ``at`` is gone."""
        return max(0.0, self.level - max(0.0, now - self.at) * rate.per_second)

    def empty_at(self, rate: Rate) -> float:
        """When the bucket has drained completely (it can then be forgotten)."""
        return self.at + self.level / rate.per_second


EMPTY = Bucket(0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Decision:
    """The bucket after the attempt, and 0 if allowed or the seconds to wait."""

    bucket: Bucket
    retry_after: float

    @property
    def allowed(self) -> bool:
        return self.retry_after == 0.0


def attempt(bucket: Bucket | None, rate: Rate, now: float, cost: float = 1.0) -> Decision:
    """Try to add ``cost`` actions at ``now``. Refused: the bucket keeps its
    drained level, and ``retry_after`` is when enough will have drained."""
    level = (bucket or EMPTY).drained(rate, now)
    if level + cost <= rate.burst_count:
        return Decision(Bucket(level + cost, now), 0.0)
    wait = (level + cost - rate.burst_count) / rate.per_second
    return Decision(Bucket(level, now), max(wait, 0.001))


def retry_after_ms(seconds: float) -> int:
    """Whole milliseconds, rounded up, never 0 for a refusal."""
    return max(1, int(seconds * 1000 + 0.999))

"""Rate limits: per-user and per-address token buckets, and inbound
federation per origin (docs/security.md, "Rate limits").

Over a limit the caller gets 429 ``M_LIMIT_EXCEEDED`` with ``retry_after_ms``
(the error middleware adds ``Retry-After``). Two kinds of bucket:

- ``LocalLimiter``: in this process's memory, for the authenticated hot paths
  (sends, createRoom, joins, invites). A dict lookup and a few float
  operations per request. With several processes on one database each counts
  on its own, so a user spreading requests over N processes gets N times the
  rate — acceptable for these, whose caller is a known account.
- ``SharedLimiter``: in PostgreSQL (``storage/ratelimits.py``), for login and
  registration. Those guard credentials and are paid for with an Argon2 hash
  anyway, so one more round trip is nothing, and a password guesser spreading
  attempts over the processes behind one name is still counted once.

Server admins are exempt when ``rate_limits.exempt_admins`` is on (default),
and ``rate_limits.enabled: false`` lifts everything (test setups, benchmarks).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from homeserver.config import FederationRateConfig, RateLimitsConfig
from homeserver.core.ratelimit import Bucket, Rate, attempt, retry_after_ms
from homeserver.services.accounts import Requester
from homeserver.services.errors import MatrixError
from homeserver.storage.ratelimits import RateLimitStore

# Forget drained buckets this often (seconds), so memory and the table hold
# only the keys that were active lately.
PRUNE_EVERY = 60.0


def limit_exceeded(seconds: float) -> MatrixError:
    return MatrixError(
        429, "M_LIMIT_EXCEEDED", "Too many requests", retry_after_ms=retry_after_ms(seconds)
    )


class LocalLimiter:
    """One limit, its buckets kept in this process."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._buckets: dict[str, Bucket] = {}
        self._pruned = clock()

    def check(self, key: str, cost: float = 1.0, *, update: bool = True) -> None:
        """Count ``cost`` actions for ``key``, or raise 429 (counting nothing);
        with ``update=False`` only ask whether they would fit."""
        now = self._clock()
        decision = attempt(self._buckets.get(key), self.rate, now, cost)
        if not decision.allowed:
            raise limit_exceeded(decision.retry_after)
        if update:
            self._buckets[key] = decision.bucket
        if now - self._pruned > PRUNE_EVERY:
            self._prune(now)

    def _prune(self, now: float) -> None:
        self._pruned = now
        for key in [k for k, b in self._buckets.items() if b.empty_at(self.rate) < now]:
            del self._buckets[key]


class SharedLimiter:
    """One limit, its buckets kept in the database for every process."""

    def __init__(
        self,
        name: str,
        rate: Rate,
        store: RateLimitStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.rate = rate
        self._store = store
        self._clock = clock
        self._pruned = clock()

    async def peek(self, key: str) -> None:
        """Raise 429 if one more action would not fit now; count nothing."""
        decision = attempt(await self._store.bucket(self.name, key), self.rate, self._clock())
        if not decision.allowed:
            raise limit_exceeded(decision.retry_after)

    async def check(self, key: str, cost: float = 1.0, *, refuse: bool = True) -> None:
        """Count ``cost`` actions for ``key``, or raise 429 (counting nothing;
        with ``refuse=False`` an action past the limit is just not counted —
        for what has already happened)."""
        now = self._clock()
        outcome: list[float] = []

        def decide(current: Bucket | None) -> Bucket | None:
            decision = attempt(current, self.rate, now, cost)
            outcome.append(decision.retry_after)
            return decision.bucket if decision.allowed else None

        await self._store.update(self.name, key, self.rate, decide)
        if outcome and outcome[0] and refuse:
            raise limit_exceeded(outcome[0])
        if now - self._pruned > PRUNE_EVERY:
            self._pruned = now
            await self._store.forget_empty(now)


@dataclass
class _Origin:
    """What one remote server has under way with us."""

    times: deque[float] = field(default_factory=deque)
    in_flight: int = 0
    slots: asyncio.Semaphore | None = None


class FederationLimiter:
    """Inbound federation per origin, with Synapse's ``rc_federation`` knobs:
    at most ``concurrent`` requests of one origin are processed at a time
    (the rest queue); past ``sleep_limit`` requests within ``window_size_ms``
    each new one first sleeps ``sleep_delay_ms``; and with ``reject_limit``
    requests already queued or running, a new one is refused with 429."""

    def __init__(
        self, config: FederationRateConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._cfg = config
        self._clock = clock
        self._origins: dict[str, _Origin] = {}
        self._pruned = clock()

    async def enter(self, origin: str) -> None:
        """Wait for a slot for ``origin`` (or raise 429); ``leave`` must follow."""
        cfg = self._cfg
        now = self._clock()
        state = self._origins.get(origin)
        if state is None:
            state = self._origins[origin] = _Origin(slots=asyncio.Semaphore(cfg.concurrent))
        window = cfg.window_size_ms / 1000
        while state.times and now - state.times[0] >= window:
            state.times.popleft()
        if state.in_flight >= cfg.reject_limit:
            raise limit_exceeded(window / cfg.sleep_limit)
        state.times.append(now)
        state.in_flight += 1
        try:
            if len(state.times) > cfg.sleep_limit and cfg.sleep_delay_ms:
                await asyncio.sleep(cfg.sleep_delay_ms / 1000)
            assert state.slots is not None
            await state.slots.acquire()
        except BaseException:
            state.in_flight -= 1
            raise
        if now - self._pruned > PRUNE_EVERY:
            self._prune(now)

    def leave(self, origin: str) -> None:
        state = self._origins[origin]
        state.in_flight -= 1
        assert state.slots is not None
        state.slots.release()

    def _prune(self, now: float) -> None:
        self._pruned = now
        window = self._cfg.window_size_ms / 1000
        for origin in [
            o
            for o, s in self._origins.items()
            if s.in_flight == 0 and (not s.times or now - s.times[-1] >= window)
        ]:
            del self._origins[origin]


class RateLimits:
    """Every limit of the server, by action; the handlers call these."""

    def __init__(self, config: RateLimitsConfig, store: RateLimitStore) -> None:
        self.enabled = config.enabled
        self._exempt_admins = config.exempt_admins
        local = {name: LocalLimiter(rate) for name, rate in config.rates}
        shared = {name: SharedLimiter(name, rate, store) for name, rate in config.rates}
        self._message = local["message"]
        self._room_creation = local["room_creation"]
        self._joins_local = local["joins.local"]
        self._joins_remote = local["joins.remote"]
        self._joins_per_room = local["joins_per_room"]
        self._invites_per_room = local["invites.per_room"]
        self._invites_per_user = local["invites.per_user"]
        self._invites_per_issuer = local["invites.per_issuer"]
        self._login_address = shared["login.address"]
        self._login_account = shared["login.account"]
        self._login_failures = shared["login.failed_attempts"]
        self._registration = shared["registration"]
        self._token_validity = shared["registration_token_validity"]
        self.federation = FederationLimiter(config.federation)

    def _applies(self, requester: Requester) -> bool:
        return self.enabled and not (self._exempt_admins and requester.is_admin)

    # ------------------------------------------------ authenticated users
    def message(self, requester: Requester) -> None:
        """An event sent by a user: /send, /state, /redact (``message``)."""
        if self._applies(requester):
            self._message.check(requester.user_id)

    def room_creation(self, requester: Requester, invites: int) -> None:
        """createRoom; its invites count as sent by the creator (``per_issuer``)."""
        if self._applies(requester):
            self._room_creation.check(requester.user_id)
            if invites:
                self._invites_per_issuer.check(requester.user_id, invites)

    def join(self, requester: Requester, room_id: str, remote: bool) -> None:
        """A join by a local user: into a room we are in, or over federation."""
        if self._applies(requester):
            (self._joins_remote if remote else self._joins_local).check(requester.user_id)
            self._joins_per_room.check(room_id)

    def invite(self, requester: Requester, room_id: str, target: str) -> None:
        """An invite by a local user: per room, per receiver, per issuer."""
        if self._applies(requester):
            self._invites_per_room.check(room_id)
            self._invites_per_user.check(target)
            self._invites_per_issuer.check(requester.user_id)

    # ------------------------------------------------ other servers
    def remote_invite(self, target: str) -> None:
        """An invite arriving over federation, per receiving user (the room
        is the sending server's business, as Synapse has it)."""
        if self.enabled:
            self._invites_per_user.check(target)

    def remote_join_allowed(self, room_id: str) -> None:
        """Before a join through us by a remote user (send_join): the room's
        join limit, asked but not counted — a join we then refuse must not
        use up the room's allowance for real joiners."""
        if self.enabled:
            self._joins_per_room.check(room_id, update=False)

    def remote_joined(self, room_id: str) -> None:
        """Count a remote join that went through."""
        if self.enabled:
            try:
                self._joins_per_room.check(room_id)
            except MatrixError:
                pass  # raced past the check; it happened, the next one waits

    # ------------------------------------------------ credentials (shared)
    async def login_attempt(self, address: str) -> None:
        """Every /login, per client address."""
        if self.enabled:
            await self._login_address.check(address)

    async def login_failures_allow(self, user_id: str) -> None:
        """Before checking a password: refuse while the account's failures
        are over the limit (the right password too — no guessing through)."""
        if self.enabled:
            await self._login_failures.peek(user_id)

    async def login_failed(self, user_id: str) -> None:
        if self.enabled:
            await self._login_failures.check(user_id, refuse=False)

    async def login_succeeded(self, user_id: str) -> None:
        """Logins into one account (new sessions), counted when granted."""
        if self.enabled:
            await self._login_account.check(user_id)

    async def registration_allow(self, address: str) -> None:
        """Before a registration attempt, per client address (counts nothing)."""
        if self.enabled:
            await self._registration.peek(address)

    async def registered(self, address: str) -> None:
        """An account made from ``address``: counted once it exists."""
        if self.enabled:
            await self._registration.check(address, refuse=False)

    async def token_validity(self, address: str) -> None:
        """GET .../m.login.registration_token/validity, per client address."""
        if self.enabled:
            await self._token_validity.check(address)

"""A seeded, randomized convergence run over real servers (ours and Synapse).

Each server has one *observer* (power 100, joined all along, never a target)
and a few *actors*. In every round each server that is up acts at the same
moment (``ACTS_PER_ROUND`` actions each, all sent concurrently): a message,
a name or topic change, a power-level change, an invite, a join, a leave, a
kick, a ban or an unban. Refusals (403 and the like) are outcomes, not failures: under
concurrency a server may legitimately refuse what another allowed.

During a window of rounds one server is stopped (a partition) while the
others keep writing; it is started again mid-run and acts at once, while the
others' queued events are still arriving. Optionally the other servers of
ours forget what they queued for it, so that it must close the gap itself
(``get_missing_events``, then the state at the gap). Events therefore reach
each server in different orders and across forks of the DAG.

When the stopped server comes back, every other server's observer sends a
message in that round, so the events it missed are cited and it must fetch
them. After the last round nothing more is sent (a closing message would hand
every server a fresh resolution and could mask a state it lost), and the run
*quiesces*: it polls, bounded, until our servers' federation outboxes are
empty and every server reports the same snapshot. The verdict compares, through the client API only:

- the current state: the same event id for every (type, state_key);
- the joined members;
- ``homeserver verify`` on each server of ours: no drift between the
  projections and a rebuild from the log (its state reset alarms are
  reported, not failed on: a resolution may legitimately roll a key back);
- the messages: every message that was sent successfully is shown by every
  server, except those of an actor who was ever the target of a kick or ban:
  a server that has not yet heard of the removal lets the actor send, and the
  others may then soft-fail the message, as the spec asks (so those messages
  may legitimately differ between servers).

The seed fixes the plan (who does what when, the room version, the
partition); timing still varies from run to run. A failure prints the seed,
the plan as it happened, and the differences, so the run can be replayed with
``HOMESERVER_CONVERGENCE_SEED``.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

from tests.federation.harness import (
    CS,
    REPO,
    Client,
    MatrixError,
    OurServer,
    SynapseServer,
    q,
)

ACTIONS: tuple[tuple[str, int], ...] = (
    ("message", 34),
    ("name", 8),
    ("topic", 8),
    ("power", 9),
    ("invite", 8),
    ("join", 8),
    ("leave", 6),
    ("kick", 7),
    ("ban", 6),
    ("unban", 6),
)
# Without power changes, kicks and bans no resolution may legitimately move
# state back (the state reset alarm must stay silent).
NO_ROLLBACKS: tuple[tuple[str, int], ...] = tuple(
    (k, w) for k, w in ACTIONS if k not in ("power", "kick", "ban", "unban")
)
ACTOR_LEVELS = (0, 25, 50, 75)  # below the observers' 100: they can always act on actors
ROOM_VERSIONS = ("10", "11", "12")
ACTS_PER_ROUND = 2  # per server: more concurrent events, more forks


@dataclass
class Node:
    """One server in the run, its observer and its actors."""

    label: str
    server: OurServer | SynapseServer
    observer: Client
    actors: list[Client]
    up: bool = True

    @property
    def ours(self) -> bool:
        return isinstance(self.server, OurServer)

    async def stop(self) -> None:
        await asyncio.to_thread(self.server.stop)
        self.up = False

    async def start(self) -> None:
        if isinstance(self.server, OurServer):
            self.server.start()
            await self.server.wait_ready(timeout=60)
        else:
            await asyncio.to_thread(self.server.start)
        self.up = True

    @asynccontextmanager
    async def db(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection to our server's database (tests may look inside)."""
        assert isinstance(self.server, OurServer)
        conn = await asyncpg.connect(self.server.db_url)
        try:
            yield conn
        finally:
            await conn.close()

    async def outbox(self) -> int:
        """Events and EDUs our server still has to send (0 for Synapse,
        whose queue the run cannot see: agreement is the test there)."""
        if not isinstance(self.server, OurServer) or not self.up:
            return 0
        async with self.db() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM federation_outbox"))

    async def verify(self, room_id: str) -> tuple[list[str], list[str]]:
        """``homeserver verify --room`` on our server's database: the drift
        lines (projections that differ from a rebuild from the log) and the
        state reset alarm lines. Synapse: nothing to verify."""
        srv = self.server
        if not isinstance(srv, OurServer):
            return [], []
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "homeserver.cli",
            "verify",
            "--server-name",
            srv.server_name,
            "--data-dir",
            str(srv.data_dir),
            "--database-url",
            srv.db_url,
            "--room",
            room_id,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        lines = out.decode(errors="replace").splitlines()
        if proc.returncode not in (0, 1) or not any(
            ln.startswith("state reset alarms:") for ln in lines
        ):
            return [f"verify failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}"], []
        drift = [ln for ln in lines if "rows missing" in ln]
        if any(": room_members: " in ln for ln in drift):
            drift += await self.member_rows_off(room_id)
        return drift, [ln for ln in lines if ": state reset alarm: " in ln]

    async def member_rows_off(self, room_id: str) -> list[str]:
        """Where the room_members projection and current state disagree (the
        detail behind verify's room_members count)."""
        async with self.db() as conn:
            rows = await conn.fetch(
                "SELECT user_id, membership, event_id, sender, stream_ordering "
                "FROM room_members WHERE room_id = $1",
                room_id,
            )
            state = await conn.fetch(
                "SELECT c.state_key AS user_id, e.json::jsonb->'content'->>'membership' "
                "AS membership, c.event_id, e.sender, e.stream_ordering "
                "FROM current_state c JOIN events e USING (event_id) "
                "WHERE c.room_id = $1 AND c.type = 'm.room.member'",
                room_id,
            )
        have = {r["user_id"]: tuple(r) for r in rows}
        want = {r["user_id"]: tuple(r) for r in state}
        return [
            f"  {u}: room_members {have.get(u)}, from current state {want.get(u)}"
            for u in sorted(set(have) | set(want))
            if have.get(u) != want.get(u)
        ]

    async def event_status(self, event_id: str) -> str:
        """How our server holds ``event_id`` (why a client may not see it)."""
        if not isinstance(self.server, OurServer):
            return "(Synapse: not inspected)"
        async with self.db() as conn:
            r = await conn.fetchrow(
                "SELECT outlier, soft_failed, rejected_reason, stream_ordering "
                "FROM events WHERE event_id = $1",
                event_id,
            )
        if r is None:
            return "not stored"
        flags = [k for k in ("outlier", "soft_failed") if r[k]]
        if r["rejected_reason"]:
            flags.append(f"rejected ({r['rejected_reason']})")
        return f"stored at {r['stream_ordering']}" + (f", {', '.join(flags)}" if flags else "")

    async def forget_queue_to(self, other: Node) -> int:
        """Drop what our server queued for ``other`` (it must then fetch it)."""
        if not isinstance(self.server, OurServer):
            return 0
        async with self.db() as conn:
            done = await conn.execute(
                "DELETE FROM federation_outbox WHERE destination = $1", other.server.server_name
            )
        return int(done.split()[-1])


@dataclass(frozen=True)
class Snapshot:
    """What one server reports about the room through its client API."""

    state: dict[tuple[str, str], str]
    contents: dict[str, Any]  # event id -> content, of the state events
    joined: frozenset[str]
    messages: dict[str, str]  # event id -> body


@dataclass(frozen=True)
class Planned:
    """One action: its kind, who acts, whom it concerns, a power level."""

    kind: str
    me: Client
    target: Client | None = None
    level: int = 0


@dataclass
class Sent:
    event_id: str
    body: str
    sender: str


@dataclass
class Run:
    """The plan as it happened and what it produced."""

    seed: int
    rounds: int
    room_version: str = ""
    room_id: str = ""
    log: list[str] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    removed: set[str] = field(default_factory=set)  # actors ever targeted by a kick or ban
    outcomes: dict[str, int] = field(default_factory=dict)
    alarms: dict[str, list[str]] = field(default_factory=dict)  # label -> verify's alarm lines
    actions: tuple[tuple[str, int], ...] = ACTIONS  # what may be drawn, with weights
    seconds: dict[str, float] = field(default_factory=dict)

    def note(self, line: str) -> None:
        self.log.append(line)

    def count(self, what: str) -> None:
        self.outcomes[what] = self.outcomes.get(what, 0) + 1

    def header(self) -> str:
        return (
            f"convergence seed={self.seed} rounds={self.rounds} "
            f"room_version={self.room_version} room={self.room_id} "
            f"(replay: HOMESERVER_CONVERGENCE_SEED={self.seed} "
            f"HOMESERVER_CONVERGENCE_ROUNDS={self.rounds})"
        )


# ------------------------------------------------------------- reading
async def snapshot(client: Client, room_id: str) -> Snapshot:
    events = await client.state(room_id)
    state = {(e["type"], e["state_key"]): e["event_id"] for e in events}
    contents = {e["event_id"]: e.get("content") for e in events}
    joined = frozenset(await client.joined_members(room_id))
    return Snapshot(state, contents, joined, await all_messages(client, room_id))


async def all_messages(client: Client, room_id: str) -> dict[str, str]:
    """Every m.room.message the server shows, paging /messages back to the start."""
    out: dict[str, str] = {}
    token: str | None = None
    for _ in range(200):
        path = f"{CS}/rooms/{q(room_id)}/messages?dir=b&limit=100"
        page = await client.call("GET", path + (f"&from={q(token)}" if token else ""))
        for e in page.get("chunk", []):
            if e.get("type") == "m.room.message":
                out[e["event_id"]] = str(e.get("content", {}).get("body"))
        token = page.get("end")
        if not page.get("chunk") or not token:
            break
    return out


def differences(run: Run, labels: Sequence[str], snaps: Sequence[Snapshot]) -> list[str]:
    """Human-readable differences between the snapshots (empty: they agree)
    and the sent messages some server lacks."""
    out: list[str] = []
    keys = sorted(set().union(*(s.state for s in snaps)))
    for key in keys:
        ids = [s.state.get(key) for s in snaps]
        if len(set(ids)) > 1:
            shown = ", ".join(
                f"{lab}={eid} {_short(s.contents.get(eid)) if eid else ''}".rstrip()
                for lab, s, eid in zip(labels, snaps, ids, strict=True)
            )
            out.append(f"state {key[0]}/{key[1]!r} differs: {shown}")
    if len({s.joined for s in snaps}) > 1:
        every = frozenset.intersection(*(s.joined for s in snaps))
        for lab, s in zip(labels, snaps, strict=True):
            if s.joined != every:
                out.append(f"joined members on {lab} also: {sorted(s.joined - every)}")
        union = frozenset.union(*(s.joined for s in snaps))
        for lab, s in zip(labels, snaps, strict=True):
            if union - s.joined:
                out.append(f"joined members on {lab} lack: {sorted(union - s.joined)}")
    for m in run.sent:
        if m.sender in run.removed:
            continue  # another server may soft-fail it (see the module's docstring)
        lacking_on = [
            lab for lab, s in zip(labels, snaps, strict=True) if m.event_id not in s.messages
        ]
        if lacking_on:
            out.append(f"message {m.event_id} {m.body!r} sent OK is missing on {lacking_on}")
    return out


def _short(content: Any) -> str:
    text = repr(content)
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------- acting
class Actor:
    """Carries out one planned action and records its outcome."""

    def __init__(self, run: Run, nodes: Sequence[Node], rng: random.Random) -> None:
        self.run = run
        self.nodes = nodes
        self.rng = rng
        self.room = run.room_id
        self.banned: set[Client] = set()

    def everyone(self) -> list[Client]:
        return [a for n in self.nodes for a in n.actors]

    def plan(self, node: Node) -> Planned:
        """One action for ``node``, drawn from the seeded generator and
        earlier plans only, never from outcomes: a seed always gives the
        same plan."""
        kinds, weights = zip(*self.run.actions, strict=True)
        kind = self.rng.choices(kinds, weights)[0]
        some_actor = self.rng.choice(node.actors)
        anyone = self.rng.choice(self.everyone())
        by_observer = self.rng.random() < 0.6
        level = self.rng.choice(ACTOR_LEVELS)
        if kind == "unban" and self.banned:  # mostly someone a ban was planned for
            anyone = self.rng.choice(sorted(self.banned, key=lambda c: c.user_id))
        if kind == "ban":
            self.banned.add(anyone)
        if kind in ("join", "leave"):
            return Planned(kind, some_actor)
        if kind in ("invite", "kick", "ban", "unban"):
            return Planned(kind, node.observer, anyone)
        me = node.observer if by_observer else some_actor
        return Planned(kind, me, anyone if kind == "power" else None, level)

    async def _do(self, p: Planned, body: str) -> Any:
        """Carry out ``p``; the event id (or answer) of the server."""
        if p.kind == "message":
            return await p.me.send(self.room, body)
        if p.kind in ("name", "topic"):
            content = {p.kind: f"{p.kind} {body}"}
            return await p.me.put_state(self.room, f"m.room.{p.kind}", content)
        if p.kind == "join":
            return await p.me.join(self.room, [n.server.server_name for n in self.nodes if n.up])
        if p.kind == "leave":
            return await p.me.membership(self.room, "leave")
        assert p.target is not None
        if p.kind == "power":
            return await self._set_power(p.me, p.target.user_id, p.level)
        return await p.me.membership(self.room, p.kind, user_id=p.target.user_id)

    async def act(self, rnd: int, node: Node, p: Planned) -> None:
        body = f"{node.label}-r{rnd}-{p.me.user_id.split(':')[0][1:]}-{uuid.uuid4().hex[:4]}"
        what = f"r{rnd} {node.label} {p.me.user_id} {p.kind}"
        if p.target is not None:
            what += f" {p.target.user_id}" + (f"={p.level}" if p.kind == "power" else "")
            if p.kind in ("kick", "ban"):
                self.run.removed.add(p.target.user_id)
        try:
            result = await asyncio.wait_for(self._do(p, body), 60)
        except MatrixError as e:
            errcode = e.body.get("errcode") if isinstance(e.body, dict) else None
            self.run.note(f"{what}: {e.status} {errcode}")
            self.run.count(f"{p.kind} refused")
            return
        except (aiohttp.ClientError, TimeoutError) as e:
            self.run.note(f"{what}: no answer ({type(e).__name__})")
            self.run.count(f"{p.kind} no answer")
            return
        self.run.count(f"{p.kind} ok")
        if p.kind == "message":
            self.run.sent.append(Sent(str(result), body, p.me.user_id))
        event_id = isinstance(result, str) and result.startswith("$")
        self.run.note(f"{what}: {result if event_id else 'ok'}")

    async def _set_power(self, me: Client, user_id: str, level: int) -> str:
        content = await me.state_event(self.room, "m.room.power_levels")
        users = dict(content.get("users", {}))
        users[user_id] = level
        return await me.put_state(self.room, "m.room.power_levels", {**content, "users": users})


# ------------------------------------------------------------- the run
async def setup_room(run: Run, nodes: Sequence[Node], rng: random.Random) -> None:
    """The first node's observer creates a public room with the other
    observers at power 100; every observer and half the actors join."""
    creator = nodes[0].observer
    run.room_version = rng.choice(ROOM_VERSIONS)
    others = {n.observer.user_id: 100 for n in nodes[1:]}
    override: dict[str, Any] = {"users": others}
    if run.room_version != "12":  # v12 creators have no entry (infinite power)
        override["users"] = {**others, creator.user_id: 100}
    run.room_id = await creator.create_room(
        preset="public_chat",
        room_version=run.room_version,
        name="convergence",
        power_level_content_override=override,
    )
    via = [nodes[0].server.server_name]
    for n in nodes[1:]:
        await n.observer.join(run.room_id, via)
    for n in nodes:
        for a in n.actors:
            if rng.random() < 0.5:
                await a.join(run.room_id, via)


async def wait_for_join(nodes: Sequence[Node], room_id: str, timeout: float = 60) -> None:
    """Every observer is seen joined by every server before the rounds begin."""
    want = {n.observer.user_id for n in nodes}
    deadline = time.monotonic() + timeout
    while True:
        seen = [await n.observer.joined_members(room_id) for n in nodes]
        if all(want <= s for s in seen):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"observers never all joined: {seen}")
        await asyncio.sleep(0.5)


@dataclass(frozen=True)
class Partition:
    node: int
    start: int
    end: int
    forget_queues: bool


def plan_partition(rng: random.Random, nodes: Sequence[Node], rounds: int) -> Partition | None:
    """Which server is stopped, from which round to which, and whether the
    others forget what they queued for it (only servers of ours can be made to)."""
    if rounds < 4 or len(nodes) < 2:
        return None
    idx = rng.choice([i for i in range(1, len(nodes))])
    start = rng.randint(1, max(1, rounds // 3))
    end = min(rounds - 2, start + rng.randint(2, max(2, rounds // 3)))
    return Partition(idx, start, end, rng.random() < 0.5)


async def part_stop(run: Run, nodes: Sequence[Node], part: Partition, rnd: int) -> None:
    p = nodes[part.node]
    await p.stop()
    run.note(f"r{rnd} partition: {p.label} stopped")


async def part_end(run: Run, nodes: Sequence[Node], part: Partition, rnd: int) -> None:
    p = nodes[part.node]
    if part.forget_queues:
        for n in nodes:
            if n is not p:
                dropped = await n.forget_queue_to(p)
                run.note(f"r{rnd} {n.label} forgot {dropped} queued for {p.label}")
    await p.start()
    run.note(f"r{rnd} partition: {p.label} back")


async def play(
    run: Run, nodes: Sequence[Node], rng: random.Random, quiesce_s: float = 90.0
) -> tuple[list[Snapshot], list[str]]:
    """Set up, play the rounds, quiesce; returns the final snapshots and
    their differences (empty when the servers converged)."""
    t0 = time.monotonic()
    await setup_room(run, nodes, rng)
    await wait_for_join(nodes, run.room_id)
    run.seconds["setup"] = time.monotonic() - t0
    part = plan_partition(rng, nodes, run.rounds)
    actor = Actor(run, nodes, rng)
    t1 = time.monotonic()
    for rnd in range(run.rounds):
        # Plans are drawn for every node, up or not, so a seed's plan does
        # not depend on timing.
        planned = [(n, actor.plan(n)) for n in nodes for _ in range(ACTS_PER_ROUND)]
        if part is not None and rnd == part.start:
            await part_stop(run, nodes, part, rnd)
        if part is not None and rnd == part.end:
            await part_end(run, nodes, part, rnd)
            # The others cite what the stopped server missed.
            back = nodes[part.node]
            planned += [(n, Planned("message", n.observer)) for n in nodes if n is not back]
        await asyncio.gather(*(actor.act(rnd, n, pl) for n, pl in planned if n.up))
    run.seconds["rounds"] = time.monotonic() - t1
    t2 = time.monotonic()
    snaps, diff = await quiesce(run, nodes, quiesce_s)
    run.seconds["quiesce"] = time.monotonic() - t2
    diff += await explain_missing(run, nodes, snaps)
    if diff and snaps:
        diff += await explain_split(nodes, snaps, run.room_id)
        diff += await heal_probe(run, nodes)
    for n in nodes:
        if n.ours:
            drift, run.alarms[n.label] = await n.verify(run.room_id)
            diff += [f"homeserver verify on {n.label}: {d}" for d in drift]
    return snaps, diff


async def quiesce(
    run: Run, nodes: Sequence[Node], timeout: float
) -> tuple[list[Snapshot], list[str]]:
    """Poll until our outboxes are empty and the servers agree, at most
    ``timeout`` seconds; returns the last snapshots and differences."""
    labels = [n.label for n in nodes]
    deadline = time.monotonic() + timeout
    while True:
        queued = sum([await n.outbox() for n in nodes])
        snaps: list[Snapshot] = []
        try:
            snaps = [await snapshot(n.observer, run.room_id) for n in nodes]
            diff = differences(run, labels, snaps)
        except (MatrixError, aiohttp.ClientError) as e:
            diff = [f"a server did not answer: {e}"]
        if not diff and not queued:
            return snaps, diff
        if time.monotonic() > deadline:
            if queued:
                diff.append(f"{queued} events/EDUs still queued in our outboxes")
            return snaps, diff
        await asyncio.sleep(1.0)


async def explain_missing(run: Run, nodes: Sequence[Node], snaps: Sequence[Snapshot]) -> list[str]:
    """For each sent message a server of ours should show and does not: how
    it holds it (only explains differences already found)."""
    if not snaps:
        return []
    out = []
    for m in run.sent:
        if m.sender in run.removed:
            continue
        for n, snap in zip(nodes, snaps, strict=True):
            if n.ours and m.event_id not in snap.messages:
                out.append(f"{m.event_id} on {n.label}: {await n.event_status(m.event_id)}")
    return out


async def explain_split(
    nodes: Sequence[Node], snaps: Sequence[Snapshot], room_id: str
) -> list[str]:
    """For state the servers disagree on: how each server of ours holds each
    of the competing events, and each one's forward extremities — a split
    left by different soft-fail decisions shows here (an event that is an
    extremity on one server and soft-failed on another)."""
    keys = [
        k
        for k in set().union(*(s.state for s in snaps))
        if len({s.state.get(k) for s in snaps}) > 1
    ]
    ids = sorted({s.state[k] for s in snaps for k in keys if k in s.state})
    out: list[str] = []
    for n in nodes:
        if not n.ours:
            continue
        for eid in ids:
            out.append(f"  {eid} on {n.label}: {await n.event_status(eid)}")
        async with n.db() as conn:
            ext = await conn.fetch(
                "SELECT f.event_id, e.type, e.state_key, e.sender FROM forward_extremities f "
                "JOIN events e USING (event_id) WHERE f.room_id = $1 ORDER BY f.event_id",
                room_id,
            )
        shown = [
            f"{r['event_id']} ({r['type']} {r['state_key'] or ''} by {r['sender']})" for r in ext
        ]
        out.append(f"  forward extremities on {n.label}: {shown}")
    return out


async def heal_probe(run: Run, nodes: Sequence[Node]) -> list[str]:
    """After a failed quiesce: one message from every server's observer in
    turn (each citing what its server holds), then whether that brought the
    servers together. Said in the report; the run has failed regardless."""
    for n in nodes:
        if n.up:
            try:
                await n.observer.send(run.room_id, "heal probe")
            except (MatrixError, aiohttp.ClientError) as e:
                return [f"heal probe: {n.label} could not send: {e}"]
            await asyncio.sleep(2.0)
    _, after = await quiesce(run, nodes, 30.0)
    after = [d for d in after if "heal probe" not in d]
    if not after:
        return ["after one message from every server: converged (a split no event had merged)"]
    return [f"after one message from every server: still {len(after)} differences"]


def report(run: Run, diff: Sequence[str]) -> str:
    lines = [run.header(), f"outcomes: {dict(sorted(run.outcomes.items()))}"]
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in run.seconds.items()))
    counts = {label: len(a) for label, a in run.alarms.items()}
    lines.append(f"homeserver verify: state reset alarms {counts}")
    lines += [f"  {label}: {a}" for label, alarms in run.alarms.items() for a in alarms]
    if diff:
        lines.append(f"NOT CONVERGED ({len(diff)} differences):")
        lines += [f"  {d}" for d in diff]
    if diff or any(run.alarms.values()):
        lines.append("plan as it happened:")
        lines += [f"  {line}" for line in run.log]
    return "\n".join(lines)

"""The outbound queue survives a peer being down: stop B, send 100 messages
on A, start B again; all 100 arrive exactly once, in order, by themselves."""

from __future__ import annotations

import time
import uuid

from tests.federation.conftest import Pair
from tests.federation.harness import eventually


async def test_peer_down_then_back_gets_everything_once_in_order(pair: Pair) -> None:
    alice = await pair.client(pair.a).register(f"alice{uuid.uuid4().hex[:6]}")
    bob = await pair.client(pair.b).register(f"bob{uuid.uuid4().hex[:6]}")
    room = await alice.create_room(preset="public_chat")
    await bob.join(room, [pair.a.server_name])
    await alice.send(room, "warm-up")
    await eventually(lambda: bob.bodies(room), lambda b: "warm-up" in b)

    pair.b.stop()
    for i in range(100):
        await alice.send(room, f"m{i:03d}")
    pair.b.start()
    await pair.b.wait_ready()
    t0 = time.monotonic()

    want = [f"m{i:03d}" for i in range(100)]

    async def received() -> list[str]:
        return [b for b in await bob.bodies(room, limit=200) if b.startswith("m")]

    got = await eventually(received, lambda b: len(b) >= 100, timeout=90, interval=0.5)
    assert got == want  # exactly once, in order
    print(f"caught up {time.monotonic() - t0:.1f}s after B came back")

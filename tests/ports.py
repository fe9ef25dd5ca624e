"""Ports for the servers tests start.

A port picked by binding to port 0 comes from the kernel's ephemeral range
(32768–60999 on Linux), the range it also hands to every outgoing
connection and to every other process doing the same: between picking the
port and the server binding it, someone else may take it (CI saw a test
server fail with "address already in use"). Ports here come from below that
range, checked free, and never twice from one process.
"""

from __future__ import annotations

import random
import socket

_LOW, _HIGH = 10_000, 32_000
_given: set[int] = set()
_rng = random.SystemRandom()  # (independent of any seeded global random)


def free_port() -> int:
    for _ in range(200):
        port = _rng.randrange(_LOW, _HIGH)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")

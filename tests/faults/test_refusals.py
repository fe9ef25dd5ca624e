"""Start-up refusals are one clear line and leave nothing running: a second
server on a data dir in use, a busy port, another server_name on an
existing database. A SIGTERM during start-up is honoured (exit 0, the
embedded PostgreSQL stopped)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.faults.procs import Proc, run_cli

pytestmark = pytest.mark.slow


def refusal(p: Proc, timeout: float = 90) -> str:
    """Run ``p`` to its exit; it must fail with status 1 and no traceback.
    Returns the last line of its output (the refusal)."""
    start = p.log_path.stat().st_size if p.log_path.exists() else 0
    p.spawn()
    assert p.wait(timeout) == 1
    out = p.log_path.read_text()[start:]
    assert "Traceback" not in out, out
    return out.strip().splitlines()[-1]


async def test_second_server_busy_port_and_other_name_are_refused(data_root: Path) -> None:
    first = Proc(data_root / "d")
    await first.start()
    try:
        # 1. a second server on the same data dir: refused before touching
        #    the database
        pid = first.popen.pid if first.popen else 0
        line = refusal(Proc(data_root / "d"))
        assert line == (
            f"homeserver: another homeserver (pid {pid}) is running on data dir "
            f"{data_root / 'd'}; stop it first"
        ), line
        assert first.postmaster() is not None  # the first server's cluster untouched
        # an operator command beside the running server shares its cluster
        # and leaves it running
        r = run_cli("verify", "--data-dir", str(data_root / "d"))
        assert r.returncode == 0 and "no drift" in r.stdout, r.stdout + r.stderr
        assert first.postmaster() is not None
        # 2. a busy client port, on another data dir: refused, and the
        #    cluster it started for that is stopped again
        other = Proc(data_root / "e", port=first.port)
        line = refusal(other)
        assert line.startswith(f"homeserver: cannot listen on 127.0.0.1:{first.port} (client port)")
        assert other.postmaster() is None
        assert not (data_root / "e" / "postgres" / "postmaster.pid").exists()
    finally:
        first.stop()
    assert first.wait() == 0
    # 3. the database belongs to faults.test: another name is refused
    renamed = Proc(data_root / "d", server_name="other.test")
    line = refusal(renamed)
    assert "belongs to server_name 'faults.test', not 'other.test'" in line, line
    assert renamed.postmaster() is None


async def test_busy_federation_port_is_one_line(data_root: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        p = Proc(data_root / "d", fed_port=busy)
        line = refusal(p)
    assert line.startswith(f"homeserver: cannot listen on 127.0.0.1:{busy} (federation port)")
    assert p.postmaster() is None


async def test_sigterm_during_start_up_stops_everything(data_root: Path) -> None:
    p = Proc(data_root / "d")
    p.spawn()
    # Wait until start-up is under way (the embedded cluster being made),
    # then ask it to stop.
    deadline = time.monotonic() + 60
    while "embedded PostgreSQL" not in p.log() and time.monotonic() < deadline:
        time.sleep(0.02)
    p.sigterm()
    t0 = time.monotonic()
    assert p.wait(60) == 0, p.log()
    print(f"stopped {time.monotonic() - t0:.1f} s after SIGTERM during start-up")
    assert "stop requested during start-up" in p.log()
    assert p.postmaster() is None
    assert not (data_root / "d" / "postgres" / "postmaster.pid").exists()

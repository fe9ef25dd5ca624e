"""Real homeserver processes for federation tests: ours (subprocesses of
``homeserver.cli serve``) and Synapse (``shared/peers/synapse.sh``), and a
small Matrix client that talks to either over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

from homeserver.core.ip_ranges import DEFAULT_BLOCKLIST, LOOPBACK_ALLOWLIST, IPRangeFilter

CS = "/_matrix/client/v3"
# federation.ip_range_allowlist for servers that federate over loopback, and
# the filter of in-process clients that do.
LOOPBACK = ",".join(LOOPBACK_ALLOWLIST)
LOOPBACK_OPEN = IPRangeFilter.from_strings(DEFAULT_BLOCKLIST, LOOPBACK_ALLOWLIST)
REPO = Path(__file__).resolve().parents[2]
SYNAPSE_SH = REPO.parent / "shared" / "peers" / "synapse.sh"

T = TypeVar("T")


class MatrixError(AssertionError):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


class Client:
    """One logged-in user on one server (any Matrix server)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, server_name: str) -> None:
        self.s = session
        self.base = base
        self.server_name = server_name
        self.token: str | None = None
        self.user_id = ""

    async def call(
        self, method: str, path: str, body: Any = None, *, expect: int | None = 200
    ) -> Any:
        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.s.request(method, self.base + path, json=body, headers=h) as r:
            try:
                data = await r.json(content_type=None)
            except ValueError:
                data = {"raw": await r.text()}
            if expect is not None and r.status != expect:
                raise MatrixError(r.status, data)
            if expect is None and isinstance(data, dict):
                data["_status"] = r.status
            return data

    async def register(self, name: str) -> Client:
        c = Client(self.s, self.base, self.server_name)
        r = await c.call(
            "POST",
            f"{CS}/register",
            {"username": name, "password": "pw-" + name, "auth": {"type": "m.login.dummy"}},
        )
        c.token, c.user_id = r["access_token"], r["user_id"]
        return c

    # ------------------------------------------------------------ rooms
    async def create_room(self, **body: Any) -> str:
        return str((await self.call("POST", f"{CS}/createRoom", body))["room_id"])

    async def send(self, room_id: str, body: str = "hello", **kw: Any) -> str:
        content = kw.pop("content", None) or {"msgtype": "m.text", "body": body}
        t = kw.pop("type", "m.room.message")
        r = await self.call(
            "PUT", f"{CS}/rooms/{q(room_id)}/send/{t}/{uuid.uuid4().hex}", content, **kw
        )
        return str(r.get("event_id"))

    async def put_state(
        self, room_id: str, type: str, content: dict[str, Any], state_key: str = ""
    ) -> str:
        r = await self.call("PUT", f"{CS}/rooms/{q(room_id)}/state/{type}/{q(state_key)}", content)
        return str(r["event_id"])

    async def redact(self, room_id: str, event_id: str, reason: str = "") -> str:
        r = await self.call(
            "PUT",
            f"{CS}/rooms/{q(room_id)}/redact/{q(event_id)}/{uuid.uuid4().hex}",
            {"reason": reason} if reason else {},
        )
        return str(r["event_id"])

    async def join(self, room: str, via: list[str] | None = None, **kw: Any) -> Any:
        qs = "&".join(f"server_name={q(s)}" for s in via or [])
        return await self.call("POST", f"{CS}/join/{q(room)}" + (f"?{qs}" if qs else ""), {}, **kw)

    async def knock(
        self, room: str, via: list[str] | None = None, reason: str = "", **kw: Any
    ) -> Any:
        qs = "&".join(f"server_name={q(s)}" for s in via or [])
        body = {"reason": reason} if reason else {}
        return await self.call(
            "POST", f"{CS}/knock/{q(room)}" + (f"?{qs}" if qs else ""), body, **kw
        )

    async def membership(self, room_id: str, action: str, **body: Any) -> Any:
        expect = body.pop("expect", 200)
        return await self.call("POST", f"{CS}/rooms/{q(room_id)}/{action}", body, expect=expect)

    async def state(self, room_id: str) -> list[dict[str, Any]]:
        return await self.call("GET", f"{CS}/rooms/{q(room_id)}/state")  # type: ignore[no-any-return]

    async def state_event(self, room_id: str, type: str, key: str = "", **kw: Any) -> Any:
        return await self.call("GET", f"{CS}/rooms/{q(room_id)}/state/{type}/{q(key)}", **kw)

    async def messages(self, room_id: str, limit: int = 100) -> list[dict[str, Any]]:
        r = await self.call("GET", f"{CS}/rooms/{q(room_id)}/messages?dir=b&limit={limit}")
        return list(reversed(r["chunk"]))

    async def joined_members(self, room_id: str) -> set[str]:
        r = await self.call("GET", f"{CS}/rooms/{q(room_id)}/joined_members")
        return set(r["joined"])

    async def membership_of(self, room_id: str, user_id: str) -> str | None:
        r = await self.call(
            "GET", f"{CS}/rooms/{q(room_id)}/state/m.room.member/{q(user_id)}", expect=None
        )
        return r.get("membership") if r.get("_status") == 200 else None

    async def sync(self, since: str | None = None, timeout: int = 0) -> dict[str, Any]:
        # A distinct inline filter each time: Synapse caches identical /sync
        # requests for a while.
        flt = q(json.dumps({"account_data": {"not_types": [f"x.{uuid.uuid4().hex}"]}}))
        path = f"{CS}/sync?timeout={timeout}&filter={flt}" + (f"&since={since}" if since else "")
        return await self.call("GET", path)  # type: ignore[no-any-return]

    # ------------------------------------------------------ ephemeral
    async def typing(self, room_id: str, typing: bool = True, timeout: int = 30_000) -> None:
        body: dict[str, Any] = {"typing": typing}
        if typing:
            body["timeout"] = timeout
        await self.call("PUT", f"{CS}/rooms/{q(room_id)}/typing/{q(self.user_id)}", body)

    async def read(self, room_id: str, event_id: str) -> None:
        await self.call("POST", f"{CS}/rooms/{q(room_id)}/receipt/m.read/{q(event_id)}", {})

    async def ephemeral(self, room_id: str) -> list[dict[str, Any]]:
        """The room's ephemeral events in an initial /sync."""
        room = (await self.sync())["rooms"].get("join", {}).get(room_id, {})
        return list(room.get("ephemeral", {}).get("events", []))

    async def typing_users(self, room_id: str) -> set[str]:
        for e in await self.ephemeral(room_id):
            if e["type"] == "m.typing":
                return set(e["content"].get("user_ids", []))
        return set()

    async def read_up_to(self, room_id: str, user_id: str) -> set[str]:
        """The event ids ``user_id`` has a public read receipt on."""
        out = set()
        for e in await self.ephemeral(room_id):
            if e["type"] == "m.receipt":
                for eid, by_type in e["content"].items():
                    if user_id in by_type.get("m.read", {}):
                        out.add(eid)
        return out

    async def bodies(self, room_id: str, limit: int = 100) -> list[str]:
        return [
            e["content"]["body"]
            for e in await self.messages(room_id, limit)
            if e["type"] == "m.room.message" and "body" in e.get("content", {})
        ]


def q(s: str) -> str:
    return quote(s, safe="")


async def eventually(
    fn: Callable[[], Awaitable[T]],
    ok: Callable[[T], bool] = bool,  # type: ignore[assignment]
    timeout: float = 20.0,
    interval: float = 0.2,
) -> T:
    """Poll ``fn`` until ``ok`` holds for its result (errors count as not yet)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await fn()
            if ok(last):
                return last
        except (MatrixError, aiohttp.ClientError) as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last: {last!r}")
        await asyncio.sleep(interval)


def state_map(events: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {(e["type"], e["state_key"]): e["event_id"] for e in events}


TXN_LINE = re.compile(r"transaction (\S+) from (\S+): (\d+) PDUs, (\d+) EDUs")


def transactions_logged(server: OurServer, origin: str, since: int) -> list[tuple[str, int, int]]:
    """(txn id, PDUs, EDUs) of each /send from ``origin`` that ``server``
    logged after byte ``since`` of its log."""
    with open(server.log_path, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    return [(m[1], int(m[3]), int(m[4])) for m in TXN_LINE.finditer(text) if m[2] == origin]


# ------------------------------------------------------------ our server
class OurServer:
    """``python -m homeserver.cli serve`` as a subprocess."""

    def __init__(
        self,
        name: str,
        fed_port: int,
        client_port: int,
        db_url: str,
        data_dir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.server_name = f"localhost:{fed_port}"
        self.extra_env = env or {}
        self.fed_port = fed_port
        self.client_port = client_port
        self.db_url = db_url
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{client_port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Loopback test servers: self-signed certificates, and loopback
        # opened in the outbound address filter (closed by default).
        env = dict(
            os.environ,
            HOMESERVER_FEDERATION_VERIFY_CERTIFICATES="false",
            HOMESERVER_FEDERATION_IP_RANGE_ALLOWLIST=LOOPBACK,
            HOMESERVER_REGISTRATION_ENABLED="true",
            # Lifted, as the Synapse peer's are (tests/security turns them on).
            HOMESERVER_RATE_LIMITS_ENABLED="false",
        )
        env.update(self.extra_env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "homeserver.cli",
                "serve",
                "--server-name",
                self.server_name,
                "--data-dir",
                str(self.data_dir),
                "--database-url",
                self.db_url,
                "--client-port",
                str(self.client_port),
                "--federation-port",
                str(self.fed_port),
            ],
            env=env,
            stdout=log,
            stderr=log,
            cwd=REPO,
        )

    async def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"{self.server_name} exited:\n{self.log_tail()}")
                try:
                    async with s.get(self.base + "/_matrix/client/versions") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.server_name} did not start:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


# -------------------------------------------------------------- Synapse
def _process_in(folder: Path, marker: str) -> int | None:
    want = str(folder.resolve())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd").removesuffix(" (deleted)")
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cwd == want and marker in cmd:
            return int(proc.name)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


class SynapseServer:
    def __init__(self, name: str, fed_port: int, client_port: int, peers_dir: Path) -> None:
        self.name = name
        self.server_name = f"localhost:{fed_port}"
        self.fed_port = fed_port
        self.client_port = client_port
        self.peers_dir = peers_dir
        self.base = f"http://127.0.0.1:{client_port}"

    def _env(self) -> dict[str, str]:
        return dict(os.environ, PEERS_DIR=str(self.peers_dir))

    def start(self, timeout: float = 900) -> None:
        if not SYNAPSE_SH.exists() or shutil.which("bash") is None:
            raise RuntimeError("synapse.sh is not available")
        if not _port_free(self.fed_port) or not _port_free(self.client_port):
            raise RuntimeError(f"ports {self.fed_port}/{self.client_port} are taken")
        self.peers_dir.mkdir(parents=True, exist_ok=True)
        out_path = self.peers_dir / f"{self.name}.start.log"
        with open(out_path, "wb") as out:  # a file, not a pipe Synapse could inherit
            r = subprocess.run(
                [
                    "bash",
                    str(SYNAPSE_SH),
                    "start",
                    self.name,
                    str(self.fed_port),
                    str(self.client_port),
                ],
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                cwd=REPO,
            )
        if r.returncode != 0:
            raise RuntimeError(f"synapse did not start: {out_path.read_text(errors='replace')}")

    def stop(self) -> None:
        # synapse.sh records the pid of the subshell that started Synapse; the
        # server itself is the process running in its state folder.
        pid = _process_in(self.peers_dir / self.name, "synapse.app.homeserver")
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        subprocess.run(
            ["bash", str(SYNAPSE_SH), "stop", self.name],
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            cwd=REPO,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and pid is not None and _alive(pid):
            time.sleep(0.2)
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _port_free(self.fed_port):
            time.sleep(0.2)

    def log_tail(self, n: int = 60) -> str:
        p = self.peers_dir / self.name / "homeserver.log"
        try:
            return "\n".join(p.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

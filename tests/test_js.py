"""The JavaScript Room API: its static serving, and the node test suite.

``test_node_suite`` runs ``node --test tests/js/`` (the Node tests of
homeserver/web/room-api.js against a live server they start, and the headless
Chromium test of the demo page), so the project's one test command covers
them. It installs what they need first: ``npm ci --prefix tests/js`` when
node_modules lacks what they use (playwright-core, matrix-js-sdk), and Debian's Chromium through
tests/js/ensure-chromium.sh (apt-get, as root; the browser test skips without
it). Skipped when node (20+) is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from homeserver.api.static import WEB_DIR, content_type
from tests.helpers import MatrixClient

ROOT = Path(__file__).resolve().parent.parent
JS_DIR = ROOT / "tests" / "js"


async def test_static_files_are_served(client: MatrixClient) -> None:
    http = client.http
    resp = await http.get("/_homeserver/static/room-api.js")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/javascript")
    assert await resp.read() == (WEB_DIR / "room-api.js").read_bytes()
    resp = await http.get("/_homeserver/static/room-api.d.ts")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/typescript")
    resp = await http.get("/_homeserver/static/demo.css")
    assert resp.headers["Content-Type"].startswith("text/css")
    resp = await http.get("/")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/html")
    assert b"/_homeserver/static/room-api.js" in await resp.read()
    resp = await http.head("/_homeserver/static/room-api.js")
    assert resp.status == 200


@pytest.mark.parametrize(
    "path", ["nope.js", ".hidden", "..%2Fapp.py", "%2E%2E%2Fapp.py", "..", "a%2Fb"]
)
async def test_static_refuses_unknown_and_traversal(client: MatrixClient, path: str) -> None:
    resp = await client.http.get("/_homeserver/static/" + path)
    assert resp.status == 404
    assert (await resp.json())["errcode"] in ("M_NOT_FOUND", "M_UNRECOGNIZED")


def test_content_types() -> None:
    assert content_type("room-api.js") == "application/javascript"
    assert content_type("room-api.d.ts") == "application/typescript"
    assert content_type("index.html") == "text/html"
    assert content_type("x.bin") == "application/octet-stream"


def _node_major(node: str) -> int:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().lstrip("v").split(".")[0])


@pytest.mark.slow
def test_node_suite() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if _node_major(node) < 20:
        pytest.skip("node 20+ is needed")
    npm = shutil.which("npm")
    needed = ("playwright-core", "matrix-js-sdk")
    if npm is not None and not all((JS_DIR / "node_modules" / m).is_dir() for m in needed):
        # A failure here only makes the browser test skip; the rest still runs.
        subprocess.run(
            [npm, "ci", "--prefix", str(JS_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=ROOT,
            check=False,
            timeout=300,
        )
    subprocess.run(["bash", str(JS_DIR / "ensure-chromium.sh")], check=False, timeout=900)
    env = dict(os.environ)
    server = Path(sys.executable).parent / "homeserver"
    if server.exists():
        env.setdefault("HOMESERVER_BIN", str(server))
    proc = subprocess.run(
        # (--test-force-exit: matrix-js-sdk leaves each request's local
        # timeout armed after stopClient, which would keep node up ~2 min)
        [node, "--test", "--test-force-exit", "tests/js/"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    summary = dict(re.findall(r"^# (tests|pass|fail|skipped|cancelled) (\d+)$", out, re.M))
    failures = "\n".join(line for line in out.splitlines() if re.match(r"^\s*not ok \d+", line))
    assert proc.returncode == 0, (
        f"node --test tests/js/ failed ({summary}):\n{failures}\n\n--- output (tail) ---\n"
        + out[-20000:]
    )
    assert int(summary.get("pass", 0)) > 0, out[-5000:]
    print(f"node --test tests/js/: {summary}")

"""nginx (Debian's package) in front of our processes, for tests: the
configuration is scripts/nginx.conf.template, as scripts/cluster uses it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "scripts" / "nginx.conf.template"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def render(prefix: Path, listen: str, client_ports: list[int]) -> Path:
    servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in client_ports
    )
    text = (
        TEMPLATE.read_text()
        .replace("{prefix}", str(prefix))
        .replace("{listen}", listen)
        .replace("{client_servers}", servers)
    )
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return conf


def start(prefix: Path, listen: str, client_ports: list[int]) -> subprocess.Popen[bytes]:
    binary = nginx_binary()
    assert binary is not None
    prefix.mkdir(parents=True, exist_ok=True)
    conf = render(prefix, listen, client_ports)
    return subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=open(prefix / "stderr.log", "ab"),
    )

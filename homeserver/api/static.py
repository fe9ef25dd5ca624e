"""Static files the server hosts from the ``homeserver/web`` package folder:
the JavaScript Room API (``/_homeserver/static/room-api.js`` and its typings)
and the demo chat page at ``/``.

Only plain file names inside that one folder are served (no sub-folders, no
dot-files), so a request can never reach outside it.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from aiohttp import web

from homeserver.api.errors import MatrixError

routes = web.RouteTableDef()

WEB_DIR = Path(str(files("homeserver").joinpath("web")))

# Longest suffix first: ``room-api.d.ts`` is TypeScript, not "ts" video.
CONTENT_TYPES = (
    (".d.ts", "application/typescript"),
    (".js", "application/javascript"),
    (".mjs", "application/javascript"),
    (".ts", "application/typescript"),
    (".css", "text/css"),
    (".html", "text/html"),
    (".json", "application/json"),
    (".svg", "image/svg+xml"),
    (".png", "image/png"),
    (".ico", "image/x-icon"),
    (".md", "text/markdown"),
)
_TEXT = ("application/javascript", "application/typescript", "application/json", "image/svg+xml")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def content_type(name: str) -> str:
    for suffix, ctype in CONTENT_TYPES:
        if name.endswith(suffix):
            return ctype
    return "application/octet-stream"


def _serve(name: str) -> web.Response:
    path = WEB_DIR / name
    if not _NAME.fullmatch(name) or ".." in name or not path.is_file():
        raise MatrixError(404, "M_NOT_FOUND", f"No static file {name!r}")
    ctype = content_type(name)
    charset = "utf-8" if ctype.startswith("text/") or ctype in _TEXT else None
    return web.Response(
        body=path.read_bytes(),
        content_type=ctype,
        charset=charset,
        headers={"Cache-Control": "no-cache"},
    )


@routes.get("/_homeserver/static/{name}")
async def static_file(request: web.Request) -> web.Response:
    return _serve(request.match_info["name"])


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    return _serve("index.html")

#!/usr/bin/env python3
"""Which Client-Server endpoints of each advertised spec version we serve.

Reads the spec's OpenAPI document (../shared/spec/client-server-api.json, or
the path given) and the routes of every module under ``homeserver.api``, and
prints, per version we advertise in /versions, how many of that version's
endpoints are served and which are not, with why (``NOT_YET`` below).
``tests/api/client/test_versions_honest.py`` fails when an advertised
endpoint is neither served nor accounted for here.

usage: .venv/bin/python scripts/api_coverage.py [client-server-api.json] [--markdown]
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT.parent / "shared" / "spec" / "client-server-api.json"

# Endpoints of advertised versions that are not served, by the module that
# will bring them (prefix match on the spec's path) and why.
NOT_YET: dict[str, str] = {
    "/_matrix/client/v3/keys/": "end-to-end encryption (a later issue)",
    "/_matrix/client/v3/sendToDevice/": "end-to-end encryption (a later issue)",
    "/_matrix/client/v3/room_keys/": "end-to-end encryption (a later issue)",
    "/_matrix/client/v1/media/": "media (a later issue)",
    "/_matrix/media/": "media (a later issue)",
    "/_matrix/client/v1/login/get_token": "QR sign-in tokens (off: 404 M_UNRECOGNIZED)",
    "/_matrix/client/v3/login/sso/": "no single sign-on provider (login flows offer none)",
    "/_matrix/client/v1/auth_metadata": "no OAuth 2.0 API (404 M_UNRECOGNIZED, as the spec asks)",
    "/_matrix/client/v3/user/{userId}/openid/": "no OpenID provider (404 M_UNRECOGNIZED)",
    "/_matrix/client/v3/admin/whois/": "device sessions for admins: the operator API instead",
    "/_matrix/client/v3/profile/{userId}/{keyName}": "extended profile fields (displayname and "
    "avatar_url only)",
    "/_matrix/client/v3/events": "the pre-/sync event stream (deprecated; /sync instead)",
    "/_matrix/client/v3/initialSync": "deprecated (/sync instead)",
    "/_matrix/client/v3/rooms/{roomId}/initialSync": "deprecated (/sync instead)",
}


def version_of(op: dict) -> int:
    """The minor version (1.x) an operation appeared in; 1 for older ones."""
    v = op.get("x-addedInMatrixVersion")
    return int(str(v).split(".")[1]) if v else 1


def spec_operations(spec: dict) -> Iterator[tuple[str, str, int]]:
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method in ("get", "put", "post", "delete") and isinstance(op, dict):
                if op.get("deprecated") is True:
                    continue
                yield method.upper(), path.strip(), version_of(op)


def our_routes() -> list[tuple[str, re.Pattern[str]]]:
    import homeserver.api as api

    out = []
    for mod in pkgutil.walk_packages(api.__path__, "homeserver.api."):
        m = importlib.import_module(mod.name)
        routes = getattr(m, "routes", None)
        if not isinstance(routes, web.RouteTableDef):
            continue
        for r in routes:
            if not isinstance(r, web.RouteDef):
                continue
            pattern = re.sub(r"\{[^}:]+:([^}]+)\}", r"(?:\1)", r.path)
            pattern = re.sub(r"\{[^}]+\}", "[^/]+", pattern)
            out.append((r.method.upper(), re.compile(pattern + "$")))
    return out


def served(method: str, path: str, routes: list[tuple[str, re.Pattern[str]]]) -> bool:
    sample = re.sub(r"\{[^}]+\}", "x", path)
    return any(m in (method, "*") and p.match(sample) for m, p in routes)


def why_not(path: str) -> str | None:
    for prefix, why in NOT_YET.items():
        if path.startswith(prefix) and why:
            return why
    return None


def coverage(spec_path: Path, advertised: list[int]) -> dict[int, dict]:
    spec = json.loads(spec_path.read_text())
    routes = our_routes()
    ops = list(spec_operations(spec))
    out = {}
    for v in advertised:
        mine = [(m, p) for m, p, added in ops if added <= v]
        missing = [(m, p) for m, p in mine if not served(m, p, routes)]
        out[v] = {"total": len(mine), "missing": missing}
    return out


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    spec_path = Path(args[0]) if args else SPEC
    from homeserver.api.client.versions import SUPPORTED_VERSIONS

    advertised = sorted(int(v.split(".")[1]) for v in SUPPORTED_VERSIONS if v.startswith("v1."))
    cov = coverage(spec_path, advertised)
    if "--markdown" in sys.argv:
        print("| version | endpoints | served | not served (why) |")
        print("|---|---:|---:|---|")
        for v, c in cov.items():
            whys: dict[str, list[str]] = {}
            for m, p in c["missing"]:
                whys.setdefault(why_not(p) or "UNACCOUNTED", []).append(f"`{m} {p}`")
            cell = "; ".join(f"{w}: {len(e)}" for w, e in sorted(whys.items())) or "—"
            print(f"| v1.{v} | {c['total']} | {c['total'] - len(c['missing'])} | {cell} |")
        return 0
    for v, c in cov.items():
        print(f"v1.{v}: {c['total'] - len(c['missing'])}/{c['total']} served")
        for m, p in c["missing"]:
            print(f"   {m} {p}  [{why_not(p) or 'UNACCOUNTED'}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

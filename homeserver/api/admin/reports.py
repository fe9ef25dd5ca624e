"""Operator API: the reports users made (server admins only)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import REPORTS, ROOM_ADMIN
from homeserver.api.auth import require_admin
from homeserver.api.errors import json_response
from homeserver.storage.reports import Report

routes = web.RouteTableDef()
P = "/_homeserver/admin/v1"


def _json(r: Report) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": r.id,
        "received_ts": r.ts,
        "room_id": r.room_id,
        "user_id": r.reporter,
        "reason": r.reason,
        "score": r.score,
    }
    if r.event_id is not None:
        out["event_id"] = r.event_id
    return out


@routes.get(P + "/reports")
async def list_reports(request: web.Request) -> web.Response:
    requester = await require_admin(request)
    await request.app[ROOM_ADMIN].audit(requester.user_id, "list_reports", None)
    offset = v.query_int(request, "from", 0)
    limit = v.query_int(request, "limit", 100, lo=1, hi=1000)
    reports, total = await request.app[REPORTS].list(offset, limit)
    out: dict[str, Any] = {"reports": [_json(r) for r in reports], "total": total}
    if offset + len(reports) < total:
        out["next_token"] = offset + len(reports)
    return json_response(out)

"""Devices, password, deactivation and third-party identifiers
(Client-Server API "Device management", "Account management")."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import DEVICES
from homeserver.api.auth import require_user
from homeserver.api.errors import MatrixError, json_response
from homeserver.services.devices import AuthRequired
from homeserver.storage.devices import Device

routes = web.RouteTableDef()

P = "/_matrix/client/{version:(?:v3|r0)}"
MAX_DEVICE_NAME = 1000
MAX_PASSWORD = 512


def _device_json(d: Device) -> dict[str, Any]:
    # Every key, null when unknown, as Synapse answers (matrix-nio requires
    # them all). The address a device was last seen from is not recorded.
    return {
        "device_id": d.device_id,
        "display_name": d.display_name,
        "last_seen_ip": None,
        "last_seen_ts": d.last_seen_ts,
    }


async def _interactive(call: Any) -> web.Response | None:
    """Run ``call``; a 401 with the auth flows when it needs them."""
    try:
        await call
    except AuthRequired as e:
        return json_response(e.body, 401)
    return None


@routes.get(P + "/devices")
async def list_devices(request: web.Request) -> web.Response:
    me = await require_user(request)
    devices = await request.app[DEVICES].list_devices(me.user_id)
    return json_response({"devices": [_device_json(d) for d in devices]})


@routes.get(P + "/devices/{device_id}")
async def get_device(request: web.Request) -> web.Response:
    me = await require_user(request)
    d = await request.app[DEVICES].get_device(me.user_id, request.match_info["device_id"])
    return json_response(_device_json(d))


@routes.put(P + "/devices/{device_id}")
async def rename_device(request: web.Request) -> web.Response:
    me = await require_user(request)
    body = await v.read_json(request, allow_empty=True)
    name = v.get(body, "display_name", str, None)
    if name is not None and len(name) > MAX_DEVICE_NAME:
        raise MatrixError(400, "M_INVALID_PARAM", "display_name is too long")
    await request.app[DEVICES].rename_device(me.user_id, request.match_info["device_id"], name)
    return json_response({})


@routes.delete(P + "/devices/{device_id}")
async def delete_device(request: web.Request) -> web.Response:
    me = await require_user(request)
    body = await v.read_json(request, allow_empty=True)
    service = request.app[DEVICES]
    device_id = request.match_info["device_id"]
    await service.get_device(me.user_id, device_id)  # 404 before asking for auth
    answer = await _interactive(service.delete_devices(me, [device_id], body.get("auth")))
    return answer or json_response({})


@routes.post(P + "/delete_devices")
async def delete_devices(request: web.Request) -> web.Response:
    me = await require_user(request)
    body = await v.read_json(request)
    ids = v.get(body, "devices", list)
    if not all(isinstance(i, str) for i in ids):
        raise MatrixError(400, "M_BAD_JSON", "devices must be a list of device ids")
    service = request.app[DEVICES]
    answer = await _interactive(service.delete_devices(me, ids, body.get("auth")))
    return answer or json_response({})


@routes.post(P + "/account/password")
async def change_password(request: web.Request) -> web.Response:
    me = await require_user(request)
    body = await v.read_json(request)
    new_password = v.get(body, "new_password", str)
    if not new_password or len(new_password) > MAX_PASSWORD:
        raise MatrixError(400, "M_WEAK_PASSWORD", "The password must be 1 to 512 characters")
    logout = v.get(body, "logout_devices", bool, True)
    service = request.app[DEVICES]
    answer = await _interactive(service.change_password(me, new_password, logout, body.get("auth")))
    return answer or json_response({})


@routes.post(P + "/account/deactivate")
async def deactivate(request: web.Request) -> web.Response:
    me = await require_user(request)
    body = await v.read_json(request, allow_empty=True)
    v.get(body, "erase", bool, False)  # messages are kept either way (as Synapse by default)
    answer = await _interactive(request.app[DEVICES].deactivate(me, body.get("auth")))
    return answer or json_response({"id_server_unbind_result": "no-support"})


# Third-party identifiers: this server has no e-mail or SMS sender and no
# identity server, so it holds none; adding one is refused the spec's way
# (capabilities say m.3pid_changes is off).
@routes.get(P + "/account/3pid")
async def list_threepids(request: web.Request) -> web.Response:
    await require_user(request)
    return json_response({"threepids": []})


@routes.post(P + "/account/3pid/{medium:(?:email|msisdn)}/requestToken")
@routes.post(P + "/register/{medium:(?:email|msisdn)}/requestToken")
@routes.post(P + "/account/password/{medium:(?:email|msisdn)}/requestToken")
async def request_token(request: web.Request) -> web.Response:
    await v.read_json(request)
    medium = request.match_info["medium"]
    raise MatrixError(
        400,
        "M_THREEPID_MEDIUM_NOT_SUPPORTED",
        f"This server does not validate {medium} addresses",
    )


@routes.post(P + "/account/3pid/add")
@routes.post(P + "/account/3pid/bind")
@routes.post(P + "/account/3pid")
async def add_threepid(request: web.Request) -> web.Response:
    await require_user(request)
    await v.read_json(request)
    raise MatrixError(
        400, "M_THREEPID_AUTH_FAILED", "No third-party identifier was validated on this server"
    )


@routes.post(P + "/account/3pid/delete")
@routes.post(P + "/account/3pid/unbind")
async def delete_threepid(request: web.Request) -> web.Response:
    await require_user(request)
    body = await v.read_json(request)
    v.get(body, "medium", str)
    v.get(body, "address", str)
    return json_response({"id_server_unbind_result": "no-support"})

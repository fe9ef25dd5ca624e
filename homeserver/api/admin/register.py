"""Shared-secret registration (``registration.shared_secret``), in the form
Synapse's ``register_new_matrix_user`` speaks: GET a nonce, then POST the
account with an HMAC-SHA1 over nonce, user, password and admin flag. It works
even when open registration is off; without a configured secret it is 404."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import ACCOUNTS, CONFIG
from homeserver.api.errors import MatrixError, json_response
from homeserver.services.accounts import AccountError

routes = web.RouteTableDef()
PATHS = ("/_homeserver/admin/v1/register", "/_synapse/admin/v1/register")
NONCE_TTL = 60.0

_NONCES = web.AppKey("register_nonces", dict)


def _secret(request: web.Request) -> str:
    secret = request.app[CONFIG].registration.shared_secret
    if not secret:
        raise MatrixError(404, "M_UNRECOGNIZED", "Shared-secret registration is not enabled")
    return secret


def _nonces(request: web.Request) -> dict[str, float]:
    store = request.app.get(_NONCES)
    if store is None:
        raise MatrixError(500, "M_UNKNOWN", "nonce store missing")
    now = time.monotonic()
    for n in [n for n, t in store.items() if t < now]:
        del store[n]
    return store


def mac_for(secret: str, nonce: str, user: str, password: str, admin: bool) -> str:
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    mac.update(
        b"\x00".join(x.encode() for x in (nonce, user, password, "admin" if admin else "notadmin"))
    )
    return mac.hexdigest()


async def get_nonce(request: web.Request) -> web.Response:
    _secret(request)
    nonce = secrets.token_hex(16)
    _nonces(request)[nonce] = time.monotonic() + NONCE_TTL
    return json_response({"nonce": nonce})


async def register(request: web.Request) -> web.Response:
    secret = _secret(request)
    body = await v.read_json(request)
    nonce = v.get(body, "nonce", str)
    user = v.get(body, "username", str)
    password = v.get(body, "password", str)
    admin = v.get(body, "admin", bool, False)
    mac = v.get(body, "mac", str)
    if _nonces(request).pop(nonce, None) is None:
        raise MatrixError(400, "M_UNKNOWN", "unrecognised nonce")
    if not hmac.compare_digest(mac, mac_for(secret, nonce, user, password, admin)):
        raise MatrixError(403, "M_FORBIDDEN", "HMAC incorrect")
    accounts = request.app[ACCOUNTS]
    try:
        user_id = await accounts.register(user.lower(), password, admin=admin)
    except AccountError as e:
        raise MatrixError(e.status, e.code, str(e)) from e
    session = await accounts.create_session(user_id, None, None)
    return json_response(
        {
            "user_id": user_id,
            "access_token": session.access_token,
            "device_id": session.device_id,
            "home_server": request.app[CONFIG].server_name,
        }
    )


for _p in PATHS:
    routes.get(_p)(get_nonce)
    routes.post(_p)(register)


def install(app: web.Application) -> None:
    app[_NONCES] = {}

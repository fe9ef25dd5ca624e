"""Registration, login, logout and whoami (Client-Server API "Account")."""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import ACCOUNTS, CONFIG
from homeserver.api.auth import require_user
from homeserver.api.errors import MatrixError, json_response
from homeserver.services.accounts import AccountError

routes = web.RouteTableDef()

P = "/_matrix/client/{version:(?:v3|r0)}"


def _account_error(e: AccountError) -> MatrixError:
    return MatrixError(e.status, e.code, str(e))


def _uia_flows(session: str) -> dict[str, Any]:
    return {"flows": [{"stages": ["m.login.dummy"]}], "params": {}, "session": session}


@routes.post(P + "/register")
async def register(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    accounts = request.app[ACCOUNTS]
    body = await v.read_json(request, allow_empty=True)
    kind = request.query.get("kind", "user")
    if kind not in ("user", "guest"):
        raise MatrixError(400, "M_INVALID_PARAM", "kind must be 'user' or 'guest'")
    if kind == "guest":
        raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is not enabled")
    if not cfg.registration.enabled:
        raise MatrixError(403, "M_FORBIDDEN", "Registration has been disabled")
    username = v.get(body, "username", str, None)
    password = v.get(body, "password", str, None)
    device_id = v.device_id(v.get(body, "device_id", str, None))
    display_name = v.get(body, "initial_device_display_name", str, None)
    inhibit_login = v.get(body, "inhibit_login", bool, False)
    auth = v.get(body, "auth", dict, None)
    if password is not None and len(password) > 512:
        raise MatrixError(400, "M_INVALID_PARAM", "Password too long")
    try:
        # Check the name before asking for auth, as the spec's flow does.
        if username is not None and not await accounts.is_available(username.lower()):
            raise AccountError("M_USER_IN_USE", "User ID already taken.")
        # User-interactive auth: the only stage is m.login.dummy.
        if auth is None or auth.get("type") != "m.login.dummy":
            session = (auth or {}).get("session") or secrets.token_urlsafe(12)
            return json_response(_uia_flows(str(session)), 401)
        user_id = await accounts.register(username.lower() if username else None, password)
    except AccountError as e:
        raise _account_error(e) from e
    out: dict[str, Any] = {"user_id": user_id, "home_server": cfg.server_name}
    if not inhibit_login:
        session = await accounts.create_session(user_id, device_id, display_name)
        out.update(access_token=session.access_token, device_id=session.device_id)
    return json_response(out)


@routes.get(P + "/register/available")
async def register_available(request: web.Request) -> web.Response:
    username = request.query.get("username")
    if not username:
        raise MatrixError(400, "M_MISSING_PARAM", "Missing 'username'")
    try:
        available = await request.app[ACCOUNTS].is_available(username)
    except AccountError as e:
        raise _account_error(e) from e
    if not available:
        raise MatrixError(400, "M_USER_IN_USE", "User ID already taken.")
    return json_response({"available": True})


@routes.get(P + "/login")
async def login_flows(request: web.Request) -> web.Response:
    return json_response({"flows": [{"type": "m.login.password"}]})


@routes.post(P + "/login")
async def login(request: web.Request) -> web.Response:
    accounts = request.app[ACCOUNTS]
    body = await v.read_json(request)
    login_type = v.get(body, "type", str)
    if login_type != "m.login.password":
        raise MatrixError(400, "M_UNKNOWN", f"Unknown login type {login_type}")
    identifier = v.get(body, "identifier", dict, None)
    if identifier is not None:
        if identifier.get("type") != "m.id.user":
            raise MatrixError(400, "M_UNKNOWN", "Only m.id.user identifiers are supported")
        name = v.get(identifier, "user", str)
    else:
        name = v.get(body, "user", str)  # the deprecated top-level form
    password = v.get(body, "password", str)
    device_id = v.device_id(v.get(body, "device_id", str, None))
    try:
        user_id = accounts.user_id_for(name)
    except AccountError as e:
        raise MatrixError(403, "M_FORBIDDEN", "Invalid username or password") from e
    if not await accounts.check_password(user_id, password):
        raise MatrixError(403, "M_FORBIDDEN", "Invalid username or password")
    session = await accounts.create_session(
        user_id,
        device_id,
        v.get(body, "initial_device_display_name", str, None),
    )
    return json_response(
        {
            "user_id": session.user_id,
            "access_token": session.access_token,
            "device_id": session.device_id,
            "home_server": accounts.server_name,
            "well_known": {"m.homeserver": {"base_url": f"{request.scheme}://{request.host}"}},
        }
    )


@routes.post(P + "/logout")
async def logout(request: web.Request) -> web.Response:
    requester = await require_user(request)
    await request.app[ACCOUNTS].logout(requester)
    return json_response({})


@routes.post(P + "/logout/all")
async def logout_all(request: web.Request) -> web.Response:
    requester = await require_user(request)
    await request.app[ACCOUNTS].logout_all(requester)
    return json_response({})


@routes.get(P + "/account/whoami")
async def whoami(request: web.Request) -> web.Response:
    requester = await require_user(request)
    return json_response(
        {"user_id": requester.user_id, "device_id": requester.device_id, "is_guest": False}
    )

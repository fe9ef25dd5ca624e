"""Registration, login, logout and whoami (Client-Server API "Account")."""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import ACCOUNTS, CONFIG, RATE_LIMITS, REGISTRATION_TOKENS
from homeserver.api.auth import require_user
from homeserver.api.errors import MatrixError, json_response
from homeserver.services.accounts import AccountError
from homeserver.services.registration_tokens import InvalidToken

routes = web.RouteTableDef()

P = "/_matrix/client/{version:(?:v3|r0)}"


def _account_error(e: AccountError) -> MatrixError:
    return MatrixError(e.status, e.code, str(e))


DUMMY = "m.login.dummy"
TOKEN = "m.login.registration_token"


def _uia_flows(stage: str, session: str, **error: str) -> dict[str, Any]:
    return {"flows": [{"stages": [stage]}], "params": {}, "session": session, **error}


def client_address(request: web.Request) -> str:
    """The client's address, the key of the per-address limits: the peer, or
    — when the peer is a configured trusted proxy (``listen.trusted_proxies``)
    — the right-most address in X-Forwarded-For that is not one of them
    (what the proxies saw; what a client wrote there itself is ignored)."""
    peer = request.remote or "unknown"
    proxies = request.app[CONFIG].listen.trusted_proxies
    if not proxies or not _within(peer, proxies):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _within(hop, proxies):
            return hop
    return peer


def _within(address: str, networks: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n) for n in networks)


@routes.post(P + "/register")
async def register(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    accounts = request.app[ACCOUNTS]
    limits = request.app[RATE_LIMITS]
    address = client_address(request)
    await limits.registration_allow(address)
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
        # User-interactive auth: one stage, m.login.registration_token when
        # the server requires tokens, m.login.dummy otherwise.
        stage = TOKEN if cfg.registration.requires_token else DUMMY
        uia_session = str((auth or {}).get("session") or secrets.token_urlsafe(12))
        if auth is None or auth.get("type") != stage:
            return json_response(_uia_flows(stage, uia_session), 401)
        localpart = username.lower() if username else None
        if stage == DUMMY:
            user_id = await accounts.register(localpart, password)
        else:
            token = auth.get("token")
            try:
                if not isinstance(token, str):
                    raise InvalidToken(token)
                async with request.app[REGISTRATION_TOKENS].use(token):
                    user_id = await accounts.register(localpart, password)
            except InvalidToken:
                refused = _uia_flows(
                    stage,
                    uia_session,
                    errcode="M_UNAUTHORIZED",
                    error="Invalid registration token",
                )
                return json_response(refused, 401)
    except AccountError as e:
        raise _account_error(e) from e
    await limits.registered(address)
    out: dict[str, Any] = {"user_id": user_id, "home_server": cfg.server_name}
    if not inhibit_login:
        session = await accounts.create_session(user_id, device_id, display_name)
        out.update(access_token=session.access_token, device_id=session.device_id)
    return json_response(out)


@routes.get("/_matrix/client/v1/register/m.login.registration_token/validity")
async def registration_token_validity(request: web.Request) -> web.Response:
    """Whether a token would be accepted now; rate limited per address, as
    the spec asks, against guessing."""
    await request.app[RATE_LIMITS].token_validity(client_address(request))
    if not request.app[CONFIG].registration.enabled:
        raise MatrixError(403, "M_FORBIDDEN", "Registration is not enabled on this homeserver.")
    token = request.query.get("token")
    if token is None:
        raise MatrixError(400, "M_MISSING_PARAM", "Missing 'token'")
    return json_response({"valid": await request.app[REGISTRATION_TOKENS].is_valid(token)})


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
    limits = request.app[RATE_LIMITS]
    await limits.login_attempt(client_address(request))
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
    # Failures per account: checked before the (costly) hash, counted after.
    await limits.login_failures_allow(user_id)
    if not await accounts.check_password(user_id, password):
        await limits.login_failed(user_id)
        raise MatrixError(403, "M_FORBIDDEN", "Invalid username or password")
    await limits.login_succeeded(user_id)
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

"""Registration tokens: the ``m.login.registration_token`` stage of
registration (Client-Server API, "Token-authenticated registration") and
their management by operators (the shape of Synapse's admin API: token,
uses_allowed, pending, completed, expiry_time).

A registration takes one use of its token before the account is made
(``pending``) and turns it into a completed use once the account exists, or
gives it back if registration fails — so a token with one use left admits one
account, however many clients try it at once.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from homeserver.services.clock import now_ms
from homeserver.services.errors import invalid_param, not_found
from homeserver.storage.registration_tokens import (
    RegistrationToken,
    RegistrationTokenStore,
    TokenExists,
)

# The spec: an opaque identifier of at most 64 characters.
TOKEN_GRAMMAR = re.compile(r"[A-Za-z0-9._~-]{1,64}")
# Generated tokens avoid '.' and '~', as Synapse's do.
_ALPHABET = string.ascii_letters + string.digits + "-_"
DEFAULT_LENGTH = 16


class InvalidToken(Exception):
    """The token is unknown, used up or expired."""


def _optional_count(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise invalid_param(f"{key} must be a non-negative integer or null")
    return value


def _expiry(body: dict[str, Any]) -> int | None:
    value = _optional_count(body, "expiry_time")
    if value is not None and value < now_ms():
        raise invalid_param("expiry_time must not be in the past")
    return value


class RegistrationTokens:
    def __init__(self, store: RegistrationTokenStore) -> None:
        self._store = store

    # ------------------------------------------------ registration
    async def is_valid(self, token: str) -> bool:
        """Usable right now (a point-in-time answer, as the spec says)."""
        return bool(TOKEN_GRAMMAR.fullmatch(token)) and await self._store.is_valid(token, now_ms())

    @asynccontextmanager
    async def use(self, token: str) -> AsyncIterator[None]:
        """Hold one use of ``token`` while the body registers the account:
        completed if it returns, given back if it raises."""
        if not TOKEN_GRAMMAR.fullmatch(token) or not await self._store.reserve(token, now_ms()):
            raise InvalidToken(token)
        try:
            yield
        except BaseException:
            await self._store.finish(token, completed=False)
            raise
        await self._store.finish(token, completed=True)

    # ------------------------------------------------ operators
    async def create(self, body: dict[str, Any]) -> RegistrationToken:
        """``token`` (default: random, ``length`` characters, default 16),
        ``uses_allowed`` (null: unlimited), ``expiry_time`` (ms, null: never)."""
        token = body.get("token")
        if token is None:
            length = body.get("length", DEFAULT_LENGTH)
            if not isinstance(length, int) or isinstance(length, bool) or not 0 < length <= 64:
                raise invalid_param("length must be an integer between 1 and 64")
            token = "".join(secrets.choice(_ALPHABET) for _ in range(length))
        elif not isinstance(token, str) or not TOKEN_GRAMMAR.fullmatch(token):
            raise invalid_param("token must be 1 to 64 characters of A-Z a-z 0-9 . _ ~ -")
        uses_allowed = _optional_count(body, "uses_allowed")
        expiry_time = _expiry(body)
        try:
            return await self._store.create(token, uses_allowed, expiry_time, now_ms())
        except TokenExists as e:
            raise invalid_param(f"Token already exists: {token}") from e

    async def get(self, token: str) -> RegistrationToken:
        found = await self._store.get(token)
        if found is None:
            raise not_found(f"No such registration token: {token}")
        return found

    async def list(self, valid: bool | None = None) -> list[RegistrationToken]:
        return await self._store.list(valid, now_ms())

    async def update(self, token: str, body: dict[str, Any]) -> RegistrationToken:
        """Change ``uses_allowed`` / ``expiry_time``; keys left out stay."""
        changes: dict[str, int | None] = {}
        if "uses_allowed" in body:
            changes["uses_allowed"] = _optional_count(body, "uses_allowed")
        if "expiry_time" in body:
            changes["expiry_time"] = _expiry(body)
        updated = await self._store.update(token, changes)
        if updated is None:
            raise not_found(f"No such registration token: {token}")
        return updated

    async def delete(self, token: str) -> None:
        """Revoke: the token stops working at once (registrations already
        holding a use of it still finish)."""
        if not await self._store.delete(token):
            raise not_found(f"No such registration token: {token}")

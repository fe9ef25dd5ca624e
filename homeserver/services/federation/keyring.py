"""Remote servers' signing keys: fetch, check, cache, and verify with them.

Server-Server API "Retrieving server keys": a server's keys come from
``GET /_matrix/key/v2/server`` on the server itself (the response must name
the server and be signed by every key it lists), or, when that fails, from
the notaries the operator configured (``federation.trusted_key_servers``,
``POST /_matrix/key/v2/query``; the answer must still be self-signed by the
server, and signed by the notary with a key pinned in the configuration or
fetched from the notary itself). Never from anyone else — in particular
not from the server that relayed the events being checked: a hostile
server could otherwise vouch for keys it made up for a server that is
down. Events whose signatures cannot be checked this way are dropped
(the receipt checks, step 2). Keys are kept in PostgreSQL
(``federation_server_keys``) and in memory. A current key counts as valid
until the lesser of its ``valid_until_ts`` and seven days after it was
fetched; an old key (``old_verify_keys``) until its ``expired_ts``. A
signature by a key not valid at the time it matters (now for requests, the
event's ``origin_server_ts`` for events) is ignored, and the keys are
fetched again first.

Also the incoming request check (``Request Authentication``):
``authenticate_request`` verifies an ``Authorization: X-Matrix`` header.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from signedjson.key import get_verify_key
from signedjson.types import VerifyKey

from homeserver.config import TrustedKeyServer
from homeserver.core.canonical import redact
from homeserver.core.ids import InvalidID, ServerName
from homeserver.core.lru import LRU
from homeserver.core.room_versions import RoomVersion
from homeserver.core.signing import (
    SignatureError,
    XMatrixAuth,
    decode_verify_key,
    parse_x_matrix_header,
    verify_json_signature,
    verify_request,
)
from homeserver.services.clock import now_ms
from homeserver.services.federation.client import FederationClient, FederationError, encode_path
from homeserver.services.locks import KeyedLocks
from homeserver.services.server_keys import ServerKeys
from homeserver.storage.federation import FederationStore, StoredKey

log = logging.getLogger(__name__)

MAX_KEY_VALIDITY_MS = 7 * 24 * 3600 * 1000
UNKNOWN_KEY_RETRY_S = 5.0
REFETCH_INTERVAL_S = 5.0  # at most one fetch per server in this long
MAX_SERVERS = 10_000  # servers (and unknown key ids) remembered in memory


class Unauthorized(Exception):
    """An incoming request whose X-Matrix authorization does not hold."""


class Keyring:
    def __init__(
        self,
        store: FederationStore,
        client: FederationClient,
        own: ServerKeys,
        notaries: Sequence[TrustedKeyServer] = (),
    ) -> None:
        self._store = store
        self._client = client
        self._own = own
        trusted = [n for n in notaries if n.server_name != own.server_name]
        self._notaries = [n.server_name for n in trusted]
        # Notaries' keys pinned in the configuration: key id -> verify key.
        self._pinned: dict[str, dict[str, VerifyKey]] = {
            n.server_name: {kid: decode_verify_key(kid, b64) for kid, b64 in n.verify_keys}
            for n in trusted
        }
        # Keyed by server names and key ids that events and requests name
        # (a hostile server names as many as it likes): bounded, least
        # recently used forgotten. A forgotten server's keys are read from
        # the database again; a forgotten fetch time allows one early fetch.
        self._mem = LRU(MAX_SERVERS)  # server → key id → StoredKey
        self._last_fetch = LRU(MAX_SERVERS)  # server → when last fetched
        self._unknown_asked = LRU(MAX_SERVERS)  # (server, key id) → when asked
        self._locks = KeyedLocks()

    # ------------------------------------------------------------ lookup
    async def _known(self, server: str) -> dict[str, StoredKey]:
        keys: dict[str, StoredKey] | None = self._mem.get_(server)
        if keys is None:
            keys = await self._store.server_keys(server)
            self._mem.put(server, keys)
        return keys

    async def get_key(self, server: str, key_id: str, valid_at: int) -> VerifyKey | None:
        """The verify key ``key_id`` of ``server`` if valid at ``valid_at``
        (fetching fresh keys when unknown or too old), else None."""
        if server == self._own.server_name:
            if key_id == self._own.key_id:
                return get_verify_key(self._own.signing_key)
            old = self._own.old_keys.get(key_id)
            if old is not None and old[1] >= valid_at:
                return decode_verify_key(key_id, old[0])
            return None
        k = (await self._known(server)).get(key_id)
        if k is None or k.valid_until_ts < valid_at:
            # A key id we have never seen (a restarted or re-keyed server) is
            # worth asking for at once; only repeated misses are rate-limited.
            await self.fetch(
                server, force=k is None and self._unknown_ok(server, key_id), key_id=key_id
            )
            k = (await self._known(server)).get(key_id)
        if k is None or k.valid_until_ts < valid_at:
            return None
        try:
            return decode_verify_key(key_id, k.verify_key)
        except Exception:
            return None

    def _unknown_ok(self, server: str, key_id: str) -> bool:
        now = time.monotonic()
        last = self._unknown_asked.get((server, key_id), 0.0)
        if now - last < UNKNOWN_KEY_RETRY_S:
            return False
        self._unknown_asked.put((server, key_id), now)
        return True

    async def fetch(self, server: str, *, force: bool = False, key_id: str | None = None) -> None:
        """Fetch ``server``'s keys: directly, then through the configured
        notaries — except a notary's own keys, which come from it alone (so
        notaries cannot vouch for each other, nor wait on each other)."""
        async with self._locks(server):
            last = self._last_fetch.get(server, 0.0)
            if not force and time.monotonic() - last < REFETCH_INTERVAL_S:
                return
            self._last_fetch.put(server, time.monotonic())
            try:
                resp = await self._client.get_json(server, "/_matrix/key/v2/server", timeout=15)
                await self._accept_response(server, resp)
                return
            except (FederationError, SignatureError, ValueError, KeyError, TypeError) as e:
                log.info("fetching keys of %s directly failed: %s", server, e)
            if server in self._notaries:
                return
            for notary in self._notaries:
                try:
                    # The spec asks for minimum_valid_until_ts, so the notary
                    # refreshes keys that would not be valid long enough.
                    crit = {"minimum_valid_until_ts": now_ms()}
                    body: dict[str, Any] = {"server_keys": {server: {}}}
                    if key_id is not None:
                        body["server_keys"][server][key_id] = crit
                    got = await self._client.post_json(notary, "/_matrix/key/v2/query", body)
                    for resp in got.get("server_keys", []):
                        if isinstance(resp, dict) and resp.get("server_name") == server:
                            await self._accept_from_notary(server, resp, notary)
                            return
                except (FederationError, SignatureError, ValueError, KeyError, TypeError) as e:
                    log.info("fetching keys of %s through %s failed: %s", server, notary, e)

    async def _notary_key(self, notary: str, key_id: str) -> VerifyKey | None:
        """A configured notary's key: pinned, else as the notary serves it."""
        pinned = self._pinned.get(notary, {})
        if pinned:
            return pinned.get(key_id)
        return await self.get_key(notary, key_id, now_ms())

    async def _accept_from_notary(self, server: str, resp: Mapping[str, Any], notary: str) -> None:
        """A notary's copy of ``server``'s keys: used for checking signatures
        once both the server's self-signatures and the notary's hold, but
        not kept as something we could serve as a notary ourselves."""
        sigs = resp.get("signatures", {}).get(notary, {})
        for kid in sigs if isinstance(sigs, Mapping) else ():
            nkey = await self._notary_key(notary, kid)
            if nkey is not None:
                verify_json_signature(resp, notary, kid, nkey)
                await self._accept_response(server, resp, direct=False)
                return
        raise SignatureError(f"no valid signature of notary {notary}")

    async def _accept_response(
        self, server: str, resp: Mapping[str, Any], *, direct: bool = True
    ) -> None:
        """Store ``server``'s keys from a response it signed; the response
        itself is kept for our notary endpoint only when it came from the
        server directly."""
        keys = parse_key_response(server, resp)
        now = now_ms()
        stored = []
        valid_until = min(int(resp["valid_until_ts"]), now + MAX_KEY_VALIDITY_MS)
        for key_id, (b64, until, is_old) in keys.items():
            if not is_old:
                until = valid_until
            stored.append(StoredKey(server, key_id, b64, until, is_old))
        original = None
        if direct:
            signed_by_server = {k: v for k, v in resp.get("signatures", {}).items() if k == server}
            original = dict(resp) | {"signatures": signed_by_server}
        await self._store.store_server_keys(server, stored, original, valid_until, now)
        self._mem.drop(server)

    # ---------------------------------------------------------- verifying
    async def verify_signed_by(self, obj: Mapping[str, Any], server: str, valid_at: int) -> None:
        """At least one signature of ``server`` by a key valid at
        ``valid_at``, and every such signature correct; else SignatureError."""
        sigs = obj.get("signatures")
        server_sigs = sigs.get(server) if isinstance(sigs, Mapping) else None
        if not isinstance(server_sigs, Mapping) or not server_sigs:
            raise SignatureError(f"not signed by {server}")
        verified = 0
        for key_id in server_sigs:
            if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
                continue
            key = await self.get_key(server, key_id, valid_at)
            if key is None:
                continue  # unknown or expired keys are skipped
            verify_json_signature(obj, server, key_id, key)
            verified += 1
        if not verified:
            raise SignatureError(f"no signature of {server} by a key valid at {valid_at}")

    async def verify_event(self, pdu: Mapping[str, Any], rv: RoomVersion) -> None:
        """Signature checks on a received event (Server-Server API "Validating
        hashes and signatures"): the sender's server, and for restricted joins
        the authorising user's server."""
        sender = pdu.get("sender")
        if not isinstance(sender, str) or ":" not in sender:
            raise SignatureError("event has no valid sender")
        servers = {sender.split(":", 1)[1]}
        content = pdu.get("content")
        if (
            pdu.get("type") == "m.room.member"
            and isinstance(content, Mapping)
            and content.get("membership") == "join"
            and isinstance(content.get("join_authorised_via_users_server"), str)
            and ":" in content["join_authorised_via_users_server"]
        ):
            servers.add(content["join_authorised_via_users_server"].split(":", 1)[1])
        ts = pdu.get("origin_server_ts")
        valid_at = ts if isinstance(ts, int) else now_ms()
        redacted = redact(pdu, rv) | {"signatures": pdu.get("signatures", {})}
        for server in servers:
            await self.verify_signed_by(redacted, server, valid_at)

    # -------------------------------------------------- request auth
    async def authenticate_request(
        self,
        method: str,
        uri: str,
        headers: Sequence[str],
        content: Any | None,
    ) -> str:
        """The origin of a request signed with X-Matrix, or Unauthorized."""
        if not headers:
            raise Unauthorized("Missing X-Matrix authorization")
        last_error = "Invalid X-Matrix authorization"
        for header in headers:
            try:
                auth = parse_x_matrix_header(header)
            except SignatureError as e:
                last_error = str(e)
                continue
            try:
                await self._check(auth, method, uri, content)
                return auth.origin
            except (SignatureError, Unauthorized) as e:
                last_error = str(e)
        raise Unauthorized(last_error)

    async def precheck_request(self, headers: Sequence[str]) -> None:
        """What can be checked before the body is read: some X-Matrix header
        names a valid origin, us as destination, and a key of the origin's
        that we hold or can fetch — else Unauthorized. The signature covers
        the body, so ``authenticate_request`` checks it after parsing."""
        last_error = "Missing X-Matrix authorization"
        for header in headers:
            try:
                await self._signing_key(parse_x_matrix_header(header))
                return
            except (SignatureError, Unauthorized) as e:
                last_error = str(e)
        raise Unauthorized(last_error)

    async def _check(self, auth: XMatrixAuth, method: str, uri: str, content: Any) -> None:
        key = await self._signing_key(auth)
        own = self._own.server_name
        verify_request(
            method, uri, auth.origin, auth.destination or own, content, auth.key, auth.sig, key
        )

    async def _signing_key(self, auth: XMatrixAuth) -> VerifyKey:
        """The origin's key the header names, after checking origin and
        destination; Unauthorized when either is wrong or the key unknown."""
        try:
            ServerName.parse(auth.origin)
        except InvalidID as e:
            raise Unauthorized(f"invalid origin {auth.origin!r}") from e
        own = self._own.server_name
        if auth.destination is not None and auth.destination != own:
            raise Unauthorized(f"request is for {auth.destination}, not {own}")
        if auth.origin == own:
            raise Unauthorized("request claims to come from this server")
        key = await self.get_key(auth.origin, auth.key, now_ms())
        if key is None:
            raise Unauthorized(f"no valid key {auth.key} for {auth.origin}")
        return key

    # ------------------------------------------------------------ notary
    async def notary_response(
        self, server: str, minimum_valid_until_ts: int = 0
    ) -> dict[str, Any] | None:
        """A server's key response as we fetched it from the server itself
        (fetched again if too old), countersigned by us — or our own keys.

        Synapse also re-serves keys it got from its own notaries; we do not:
        our signature on a response says "this server gave us these keys",
        which a notary's word does not let us say. A server we cannot reach
        and never reached gets an empty answer."""
        if server == self._own.server_name:
            return self._own.server_keys_response()
        got = await self._store.key_response(server)
        if got is None or got[1] < max(minimum_valid_until_ts, now_ms()):
            await self.fetch(server)
            got = await self._store.key_response(server)
        if got is None:
            return None
        return self._own.sign_json(got[0])


def parse_key_response(server: str, resp: Mapping[str, Any]) -> dict[str, tuple[str, int, bool]]:
    """key_id → (base64 key, valid until / expired ts, is old), after checking
    the response names ``server`` and is signed by each of its verify keys."""
    if not isinstance(resp, Mapping) or resp.get("server_name") != server:
        raise ValueError(f"key response is not for {server}")
    until = resp.get("valid_until_ts")
    if not isinstance(until, int) or isinstance(until, bool):
        raise ValueError("key response has no valid_until_ts")
    verify_keys = resp.get("verify_keys")
    if not isinstance(verify_keys, Mapping) or not verify_keys:
        raise ValueError("key response has no verify_keys")
    out: dict[str, tuple[str, int, bool]] = {}
    for key_id, v in verify_keys.items():
        if not isinstance(v, Mapping) or not isinstance(v.get("key"), str):
            raise ValueError(f"bad verify key {key_id}")
        if not key_id.startswith("ed25519:"):
            continue
        vk = decode_verify_key(key_id, v["key"])
        verify_json_signature(resp, server, key_id, vk)
        out[key_id] = (v["key"], until, False)
    old = resp.get("old_verify_keys") or {}
    if isinstance(old, Mapping):
        for key_id, v in old.items():
            if (
                isinstance(v, Mapping)
                and isinstance(v.get("key"), str)
                and isinstance(v.get("expired_ts"), int)
                and key_id.startswith("ed25519:")
                and key_id not in out
            ):
                out[key_id] = (v["key"], int(v["expired_ts"]), True)
    return out


def path_for_server_keys(server: str) -> str:
    return encode_path("/_matrix/key/v2/query/{}", server)

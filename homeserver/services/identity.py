"""Which server a database belongs to, checked at every start.

Synapse refuses to start when its configured ``server_name`` differs from
the one the database was created with; so do we. The name is stored at the
first start (``storage.identity``); operator commands that were not told a
name take it from there, so ``verify`` recomputes ``local_joined`` and the
like under the right name.
"""

from __future__ import annotations

import logging

from homeserver.services.clock import now_ms
from homeserver.storage.identity import IdentityStore

log = logging.getLogger(__name__)


class IdentityMismatch(RuntimeError):
    """The configured server name is not the database's; the message says so."""


async def establish(
    store: IdentityStore,
    server_name: str,
    signing_key_id: str,
    *,
    name_given: bool = True,
    serving: bool = True,
) -> str:
    """Claim the database at first start, else check it is ours; return the
    server name to run under. ``name_given``: the name was configured on
    purpose (a server, or a command given ``--server-name``), so a different
    stored name is an error rather than the name to use. ``serving``: a
    server process, whose signing key is the one in use (recorded when it
    changed); an operator command's data dir may hold no key at all."""
    stored = await store.get()
    if stored is None:
        stored = await store.claim(server_name, signing_key_id, now_ms())
    if stored.server_name != server_name and name_given:
        raise IdentityMismatch(
            f"this database belongs to server_name {stored.server_name!r}, "
            f"not {server_name!r}; a server's name cannot change once it has data "
            f"(set server_name: {stored.server_name} or use another database)"
        )
    if serving and stored.signing_key_id != signing_key_id:
        log.warning(
            "signing key changed from %s to %s (rotated?): recording the new one",
            stored.signing_key_id,
            signing_key_id,
        )
        await store.set_signing_key_id(signing_key_id)
    return stored.server_name

"""``PUT /_matrix/federation/v1/send/{txnId}``: PDUs and EDUs from a server.

Idempotent per (origin, txn id): a transaction seen before is answered with
the stored result. Every PDU is checked on its own (services/federation/
ingest.py); a bad one gets an error entry, never a failed request.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from homeserver.api.errors import MatrixError, json_response
from homeserver.api.federation.common import FEDERATION, authenticate, require_object
from homeserver.services.clock import now_ms

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

MAX_PDUS = 50
MAX_EDUS = 100


@routes.put("/_matrix/federation/v1/send/{txn_id}")
async def send_transaction(request: web.Request) -> web.Response:
    origin, body = await authenticate(request)
    body = require_object(body)
    txn_id = request.match_info["txn_id"]
    pdus = body.get("pdus", [])
    edus = body.get("edus", [])
    if not isinstance(pdus, list) or not isinstance(edus, list):
        raise MatrixError(400, "M_BAD_JSON", "pdus and edus must be arrays")
    if len(pdus) > MAX_PDUS or len(edus) > MAX_EDUS:
        raise MatrixError(400, "M_BAD_JSON", "Too many PDUs or EDUs in one transaction")
    if body.get("origin", origin) != origin:
        raise MatrixError(400, "M_BAD_JSON", "origin does not match the authenticated server")
    log.info("transaction %s from %s: %d PDUs, %d EDUs", txn_id, origin, len(pdus), len(edus))
    fed = request.app[FEDERATION]
    # One transaction per origin at a time: a retry waits for the first try.
    async with fed.ingest.origin_lock(origin):
        done = await fed.store.received_txn(origin, txn_id)
        if done is not None:
            return json_response(done)
        fed.ingest.transactions_in += 1
        results: dict[str, Any] = {}
        for pdu in pdus:
            eid, err = await fed.ingest.receive_pdu(origin, pdu)
            if eid is not None:
                results[eid] = {"error": err} if err else {}
        for edu in edus:
            await fed.edus.receive(origin, edu)
        response = {"pdus": results}
        await fed.store.store_received_txn(origin, txn_id, response, now_ms())
        return json_response(response)

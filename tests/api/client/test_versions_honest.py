"""/versions tells the truth: every endpoint of every spec version we
advertise is served, or accounted for in ``scripts/api_coverage.py`` (later
modules, or refused on purpose with the spec's error)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.helpers import CS, MatrixClient

ROOT = Path(__file__).resolve().parents[3]
SPEC = ROOT.parent / "shared" / "spec" / "client-server-api.json"


def _coverage_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("api_coverage", ROOT / "scripts/api_coverage.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not SPEC.exists(), reason="the spec's OpenAPI is in ../shared/spec")
def test_every_advertised_endpoint_is_served_or_accounted_for() -> None:
    from homeserver.api.client.versions import SUPPORTED_VERSIONS

    cov = _coverage_module()
    advertised = sorted(int(v.split(".")[1]) for v in SUPPORTED_VERSIONS if v.startswith("v1."))
    result = cov.coverage(SPEC, advertised)
    unaccounted = sorted(
        {f"{m} {p}" for c in result.values() for m, p in c["missing"] if cov.why_not(p) is None}
    )
    assert unaccounted == [], unaccounted
    # Served paths are not also listed as missing (the table stays true).
    for prefix in cov.NOT_YET:
        assert not any(
            cov.served(m, p, cov.our_routes())
            for c in result.values()
            for m, p in c["missing"]
            if p.startswith(prefix)
        )


async def test_refused_endpoints_answer_the_spec_way(client: MatrixClient) -> None:
    alice = await client.register("alice")
    r = await client.call("POST", f"{CS}/refresh", {"refresh_token": "x"}, expect=401)
    assert r["errcode"] == "M_UNKNOWN_TOKEN" and r["soft_logout"] is False
    r = await alice.call("POST", "/_matrix/client/v1/appservice/irc/ping", {}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    r = await alice.call("GET", "/_matrix/client/v1/auth_metadata", expect=404)
    assert r["errcode"] == "M_UNRECOGNIZED"
    r = await client.call("GET", "/.well-known/matrix/support", expect=404)
    assert r["errcode"] == "M_NOT_FOUND"
    # Unstable features advertise nothing we do not serve.
    versions = await client.call("GET", "/_matrix/client/versions")
    assert all(v is False for v in versions["unstable_features"].values())


async def test_mutual_rooms(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    shared = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"{CS}/join/{shared}", {})
    await alice.create_room()
    r = await alice.call("GET", f"/_matrix/client/v1/mutual_rooms?user_id={bob.user_id}")
    assert r == {"joined": [shared]}
    await alice.call("GET", "/_matrix/client/v1/mutual_rooms", expect=400)

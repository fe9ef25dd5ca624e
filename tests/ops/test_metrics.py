"""/metrics: the families an operator graphs, moving when things happen."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from homeserver.api.appkeys import METRICS
from homeserver.api.metrics import metrics_app
from tests.helpers import CS, MatrixClient
from tests.ports import free_port


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the first sample named ``name`` with these labels (0
    when absent)."""
    for family in text_string_to_metric_families(text):
        for smp in family.samples:
            if smp.name == name and all(smp.labels.get(k) == v for k, v in labels.items()):
                return float(smp.value)
    return 0.0


async def scrape(aiohttp_client: Any, app: web.Application) -> str:
    metrics = await aiohttp_client(metrics_app(app[METRICS]))
    r = await metrics.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    return str(await r.text())


async def test_metrics_move_with_the_server(
    client: MatrixClient, app: web.Application, aiohttp_client: Any
) -> None:
    before = await scrape(aiohttp_client, app)
    for family in (
        "homeserver_http_requests",
        "homeserver_http_request_duration_seconds",
        "homeserver_events_persisted",
        "homeserver_state_resolutions",
        "homeserver_state_resolution_seconds",
        "homeserver_state_reset_alarms",
        "homeserver_sync_waiters",
        "homeserver_sync_wakeups",
        "homeserver_federation_transactions",
        "homeserver_federation_queue_items",
        "homeserver_federation_queue_oldest_age_seconds",
        "homeserver_db_pool_connections",
        "homeserver_db_pool_max",
        "homeserver_rate_limited",
        "homeserver_malloc_in_use_bytes",
        "homeserver_malloc_system_bytes",
        "homeserver_python_allocated_blocks",
        "homeserver_cache_entries",
        "homeserver_cache_weight",
        "homeserver_cache_bound",
        "process_resident_memory_bytes",
        "process_open_fds",
    ):
        assert re.search(rf"^# TYPE {family}(_total)? ", before, re.M), family
    alice = await client.register("alice")
    room = await alice.create_room()
    await alice.send(room, "counted")
    await alice.call("GET", f"{CS}/rooms/{room}/messages?dir=b")
    await client.call("GET", f"{CS}/nowhere", expect=404)
    after = await scrape(aiohttp_client, app)
    accepted = {"origin": "local", "outcome": "accepted"}
    grew = sample(after, "homeserver_events_persisted_total", **accepted) - sample(
        before, "homeserver_events_persisted_total", **accepted
    )
    assert grew >= 6  # createRoom's events and the message
    route = "/_matrix/client/{version}/rooms/{room_id}/send/{type}/{txn_id}"
    assert sample(after, "homeserver_http_requests_total", route=route, status="200") == 1
    assert sample(after, "homeserver_http_requests_total", route="unmatched", status="404") == 1
    assert (
        sample(after, "homeserver_http_request_duration_seconds_count", route=route, method="PUT")
        == 1
    )
    assert sample(after, "homeserver_db_pool_max") > 0
    in_use = sample(after, "homeserver_malloc_in_use_bytes")
    assert 0 < in_use <= sample(after, "homeserver_malloc_system_bytes")
    assert sample(after, "homeserver_python_allocated_blocks") > 0
    # Each bounded cache reports how full it is: the events just written
    # and read are in the event cache, under its bound.
    assert (
        0
        < sample(after, "homeserver_cache_entries", cache="events")
        <= sample(after, "homeserver_cache_bound", cache="events")
    )
    assert sample(after, "homeserver_cache_weight", cache="access_tokens") >= 1
    for cache in ("state_groups", "auth_chains", "push_rule_sets", "sync_room_views"):
        assert sample(after, "homeserver_cache_bound", cache=cache) > 0, cache
    # A 429 from a rate limit is counted by route.
    app[METRICS].observe("client", "POST", "/limited", 429, 0.001)
    limited = await scrape(aiohttp_client, app)
    assert sample(limited, "homeserver_rate_limited_total", route="/limited") == 1


async def test_metrics_listener_is_separate() -> None:
    """A real server: nothing on a metrics port unless configured; when
    configured, /metrics there and not on the client port."""
    from tests.faults.procs import Proc, run_cli

    root = Path(tempfile.mkdtemp(prefix="hs-metrics-"))
    root.chmod(0o755)
    port = free_port()
    proc = Proc(root / "a", extra_env={"HOMESERVER_LISTEN_METRICS_PORT": str(port)})
    try:
        await proc.start()
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 200
                assert "homeserver_http_requests_total" in await r.text()
            async with s.get(f"http://127.0.0.1:{port}/health") as r:
                assert r.status == 200
            async with s.get(f"{proc.base}/metrics") as r:
                assert r.status == 404
        # The operator's view of the same (issue 19): alive, ready, queues.
        out = run_cli("status", "--data-dir", str(proc.data), "--client-port", str(proc.port))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "alive: yes" in out.stdout and "ready: yes" in out.stdout, out.stdout
        assert "federation queues: 0 destination(s)" in out.stdout, out.stdout
    finally:
        proc.stop()
    # Stopped: not alive (the database is still reachable through the CLI).
    out = run_cli("status", "--data-dir", str(proc.data), "--client-port", str(proc.port))
    assert out.returncode == 1 and "alive: no" in out.stdout, out.stdout + out.stderr


async def test_caches_global_factor_scales_every_bound_but_the_event_caches(
    db: Any, tmp_path: Path, aiohttp_client: Any
) -> None:
    from homeserver.app import create_app
    from tests.helpers import make_config

    bounds = {}
    for factor in (1.0, 0.25):
        app = create_app(make_config(tmp_path, **{"caches.global_factor": factor}), db)
        text = await scrape(aiohttp_client, app)
        bounds[factor] = {
            smp.labels["cache"]: smp.value
            for family in text_string_to_metric_families(text)
            for smp in family.samples
            if smp.name == "homeserver_cache_bound" and smp.value > 0
        }
    assert bounds[0.25]["events"] == bounds[1.0]["events"] == 10_000  # caches.events
    scaled = set(bounds[1.0]) - {"events"} - {k for k in bounds[1.0] if k.startswith("push_d")}
    assert {"state_groups", "auth_chains", "push_rule_sets", "access_tokens"} <= scaled
    for cache in scaled - {"push_compiled_conditions"}:
        assert bounds[0.25][cache] == int(bounds[1.0][cache] * 0.25), cache


def test_dashboard_graphs_families_we_export() -> None:
    """docs/grafana-dashboard.json only names metric families the server has."""
    import json

    root = Path(__file__).resolve().parents[2]
    dash = json.loads((root / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in re.findall(r"\b(homeserver_\w+|process_\w+)", e)}
    assert names
    known = (root / "homeserver" / "services" / "metrics.py").read_text()
    for n in names:
        base = re.sub(r"_(total|bucket|count|sum)$", "", n)
        assert base in known or n.startswith("process_"), n

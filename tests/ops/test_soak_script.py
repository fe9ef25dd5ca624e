"""scripts/soak itself, briefly: two real servers federating under its load,
sampled every few seconds; each sample carries memory, cache fill and
latencies, and the summary says from which interval the caches stopped
filling (the figures a 30-minute run in docs/benchmarks.md comes from)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_short_soak_samples_memory_caches_and_latency(tmp_path: Path) -> None:
    out = tmp_path / "soak.jsonl"
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "soak.py"),
            "--minutes",
            "0.3",
            "--interval",
            "6",
            "--rate",
            "1",
            "--pollers",
            "2",
            "--senders",
            "1",
            "--churn-pool",
            "2",
            "--rejoiners",
            "1",
            "--cache-factor",
            "0.01",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) >= 2
    for row in rows:
        assert row["errors"] == {}, row
        for srv in ("a", "b"):
            assert row[f"rss_{srv}_mb"] > 0 and row[f"malloc_in_use_{srv}_mb"] > 0
            assert 0 < row[f"caches_{srv}"]["events"] <= 100
    assert rows[-1]["send"]["n"] > 0
    summary = json.loads(r.stdout.strip().splitlines()[-1])["summary"]
    assert summary["exit_codes"] == [0, 0]
    assert 1 <= summary["caches_steady_from_interval"] <= len(rows)

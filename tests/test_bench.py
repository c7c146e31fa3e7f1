"""A smoke run of the benchmark (bench/), so that it cannot rot. It measures nothing here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.servers import ROOT


def test_the_quick_benchmark_runs_both_servers_and_loses_nothing(redis_url: str, tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env["REDIS_URL"] = redis_url
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| metric" in done.stdout and "project / baseline" in done.stdout
    results = json.loads(output.read_text())["results"]
    for name in ("baseline", "project"):
        result = results[name]
        for scenario in ("rate_200", "saturation"):
            run = result[scenario]
            assert run["sent"] > 0
            assert (run["lost"], run["duplicated"], run["misrouted"]) == (0, 0, 0), (name, scenario, run)
        for scenario in ("idle_100", "mass"):
            run = result[scenario]
            assert run["registered"] == run["connections"], (name, scenario, run)
            assert run["closed_by_server"] == {} and run["close_errors"] == 0, (name, scenario, run)
    assert results["project"]["mass"]["stale_group_subscriptions"] == 0

"""A smoke run of the benchmark (bench/), so that it cannot rot. It measures nothing here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.servers import ROOT


def run_bench(redis_url: str, output: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bench --quick ARGS`` on the suite's Redis and an SQLite file of its own."""
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env["REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *args, "--output", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_quick_benchmark_runs_every_server_and_loses_nothing(redis_url: str, tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    done = run_bench(redis_url, output, "--servers", "baseline,daphne-floor,project")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        "| metric" in done.stdout and "project / baseline" in done.stdout and "daphne-floor / baseline" in done.stdout
    )
    results = json.loads(output.read_text())["results"]
    for name in ("baseline", "daphne-floor", "project"):
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


def test_the_benchmark_measures_one_and_two_processes_in_one_run(redis_url: str, tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    done = run_bench(
        redis_url,
        output,
        "--scenarios",
        "relay",
        "--servers",
        "baseline,project",
        *("--processes", "1,2", "--rounds", "2"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 and 2 daphne process(es)" in done.stdout
    assert "the median of 2 rounds, the servers taking turns phase by phase" in done.stdout
    results = json.loads(output.read_text())["results"]
    assert [(name, result["processes"]) for name, result in results.items()] == [
        ("baseline", 1),
        ("project", 1),
        ("project x2", 2),
    ]
    for run in (results["project"]["saturation"], results["project x2"]["saturation"]):
        assert run["sent"] > 0 and (run["lost"], run["duplicated"], run["misrouted"]) == (0, 0, 0), run
    for result in results.values():
        paced = result["rate_200"]
        assert paced["rounds"] == 2 and paced["sent"] == 2 * 200  # the quick run's 200 messages, twice
        assert len(paced["cpu_us_per_msg_by_round"]) == 2


def test_relay_rounds_combine_into_medians_of_rates_and_costs_and_sums_of_counts() -> None:
    from bench.runner import combined

    rounds = [
        {"sent": 100, "lost": 0, "cpu_us_per_msg": 150.0, "latency_p99_ms": 4.0, "by": {"layer_full": 1}},
        {"sent": 100, "lost": 2, "cpu_us_per_msg": 190.0, "latency_p99_ms": 30.0, "by": {}},
        {"sent": 100, "lost": 0, "cpu_us_per_msg": 160.0, "latency_p99_ms": 5.0, "by": {"layer_full": 3}},
    ]
    run = combined(rounds)
    assert (run["sent"], run["lost"], run["by"]) == (300, 2, {"layer_full": 4})  # a loss in any round shows
    assert (run["cpu_us_per_msg"], run["latency_p99_ms"]) == (160.0, 5.0)  # one round that drifted is left out
    assert run["cpu_us_per_msg_by_round"] == [150.0, 190.0, 160.0] and run["rounds"] == 3
    assert combined([*rounds, {"error": "TimeoutError: senders"}]) == {"error": "TimeoutError: senders"}


def test_a_ratio_to_the_baseline_is_the_median_of_the_rounds_ratios() -> None:
    from bench.report import ratio

    results = {
        "baseline": {"rate_2000": {"cpu_us_per_msg": 86.0, "cpu_us_per_msg_by_round": [64.5, 85.5, 93.0]}},
        "project": {"rate_2000": {"cpu_us_per_msg": 169.0, "cpu_us_per_msg_by_round": [194.0, 152.0, 169.0]}},
        "one round": {"rate_2000": {"cpu_us_per_msg": 172.0}},
    }
    # Round by round 3.01x, 1.78x and 1.82x: a round where the baseline ran fast is one ratio of three.
    assert ratio(results, "project", "rate_2000.cpu_us_per_msg") == pytest.approx(169.0 / 93.0)
    assert ratio(results, "one round", "rate_2000.cpu_us_per_msg") == pytest.approx(2.0)
    assert ratio(results, "project", "saturation.cpu_us_per_msg") is None


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["--processes", "1,two"], "--processes '1,two': give process counts of 1 or more"),
        (["--rounds", "0"], "--rounds must be 1 or more, not 0"),
    ],
    ids=["processes", "rounds"],
)
def test_a_count_that_is_no_count_is_one_line(arguments: list[str], error: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert error in done.stderr
    assert "Traceback" not in done.stderr


def test_the_capacity_plan_is_arithmetic_on_the_measured_figures() -> None:
    from bench.scaling import document

    report = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())
    project = report["results"]["project"]
    cpu = project["rate_2000"]["cpu_us_per_msg"]
    rss = project["idle_10000"]["rss_per_connection_kb"]
    text = document(report)
    assert report["when"] in text
    assert f"10,000 × {cpu:g} µs = **{10_000 * cpu / 1e6:.1f} cores**" in text
    assert f"1,000,000 × {rss:g} KB" in text
    assert "**100** daphne processes" in text  # 1,000,000 clients at 10,000 per process


def test_the_capacity_plan_of_a_file_that_is_no_result_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    done = subprocess.run(
        [sys.executable, "-m", "bench.scaling", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("bench.scaling: cannot plan from")


def run_module(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", module], cwd=ROOT, env={**full, **env}, capture_output=True, text=True, timeout=180
    )


def test_the_frame_benchmark_reads_and_writes_through_both_protocols() -> None:
    done = run_module("bench.frames")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| read |", "| written |"))]
    assert len(rows) == 2
    for row in rows:
        library, app, ratio = (cell.strip() for cell in row.strip("|").split("|")[1:])
        assert float(library) > 0 and float(app) > 0 and ratio.endswith("x")


def test_the_layer_benchmark_reports_a_figure_and_an_unreachable_redis_in_one_line(redis_url: str) -> None:
    done = run_module("bench.layer", REDIS_URL=redis_url)
    assert done.returncode == 0, done.stderr
    assert "µs of CPU per notification sent and read" in done.stdout
    down = run_module("bench.layer", REDIS_URL="redis://127.0.0.1:1/0")
    assert down.returncode == 1 and down.stdout == ""
    assert down.stderr.count("\n") == 1 and down.stderr.startswith("bench.layer: Redis at redis://127.0.0.1:1/0")

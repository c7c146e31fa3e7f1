"""The benchmark's table: each figure per server, the ratio to the baseline, the target."""

from __future__ import annotations

import statistics
from typing import Any


def _get(result: dict[str, Any], path: str) -> Any:
    value: Any = result
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
    return str(value)


LOSS = "saturation.lost|saturation.duplicated|saturation.misrouted"


def ratio(results: dict[str, Any], name: str, path: str) -> float | None:
    """``name``'s figure at ``path`` over the baseline's: the median of the rounds' ratios where both have rounds.

    Each round measured both servers within a minute of each other; the
    ratio of each round cancels what the machine's speed did between rounds.
    """
    base, theirs = _get(results["baseline"], path), _get(results[name], path)
    base_rounds, their_rounds = _get(results["baseline"], f"{path}_by_round"), _get(results[name], f"{path}_by_round")
    if isinstance(base_rounds, list) and isinstance(their_rounds, list) and len(base_rounds) == len(their_rounds):
        pairs = [
            t / b
            for b, t in zip(base_rounds, their_rounds, strict=True)
            if isinstance(b, int | float) and b and isinstance(t, int | float)
        ]
        if len(pairs) == len(base_rounds):
            return statistics.median(pairs)
    if isinstance(base, int | float) and isinstance(theirs, int | float) and base:
        return float(theirs / base)
    return None


def rows(report: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(label, JSON path, target) for every line of the table."""
    options = report["options"]
    lines: list[tuple[str, str, str | None]] = []
    scenarios = options.get("scenarios", ["mass", "idle", "relay", "resume"])
    for rate in options["rates"] if "relay" in scenarios else ():
        key = f"rate_{rate}"
        cpu_target = "<= 2x baseline" if rate == 2000 else None
        lines += [
            (f"{rate} msg/s: delivered / lost", f"{key}.delivered|{key}.lost", "0 lost"),
            (f"{rate} msg/s: duplicated / misrouted", f"{key}.duplicated|{key}.misrouted", "0 / 0"),
            (f"{rate} msg/s: latency p50 (ms)", f"{key}.latency_p50_ms", None),
            (f"{rate} msg/s: latency p99 (ms)", f"{key}.latency_p99_ms", "<= max(3x, baseline + 5 ms)"),
            (f"{rate} msg/s: server CPU per msg (µs)", f"{key}.cpu_us_per_msg", cpu_target),
            (f"{rate} msg/s: Redis CPU per msg (µs)", f"{key}.redis_cpu_us_per_msg", None),
        ]
    lines += (
        []
        if "relay" not in scenarios
        else [
            ("saturation: delivered msgs/s", "saturation.delivered_rate", ">= 0.4x baseline, lossless"),
            ("saturation: offered (sent) msgs/s", "saturation.send_rate", None),
            ("saturation: not arrived in the window / duplicated / misrouted", LOSS, "0"),
            ("saturation: dropped, as the server logged", "saturation.server_undeliverable_logged", "0"),
            (
                "saturation: undeliverable / pending (incl. arrived after the window), as the server counted",
                "saturation.server_undeliverable|saturation.server_pending",
                None,
            ),
            ("saturation: undeliverable by reason", "saturation.server_undeliverable_by_reason", None),
            ("saturation: unaccounted (sent, not received, not counted)", "saturation.unaccounted", "0"),
            ("saturation: times a sender's socket was paused", "saturation.server_reads_paused", None),
            ("saturation: server CPU per msg (µs)", "saturation.cpu_us_per_msg", "<= 3x baseline"),
            ("saturation: latency p99 (ms)", "saturation.latency_p99_ms", None),
            ("history in Redis: ids / notifications kept", "history.ids|history.kept", None),
            ("history in Redis: bytes per kept notification", "history.bytes_per_notification", None),
        ]
    )
    if "resume" in scenarios:
        lines += [
            ("resume of 100 missed: recovered / rounds", "resume.recovered|resume.rounds", "all"),
            ("resume of 100 missed: time p50 / p99 (ms)", "resume.resume_ms_p50|resume.resume_ms_p99", None),
            ("resume of 100 missed: server CPU (ms)", "resume.server_cpu_ms_per_resume", None),
        ]
    for count in options["connections"] if "idle" in scenarios else ():
        key = f"idle_{count}"
        lines += [
            (f"{count:,} idle: registered", f"{key}.registered", f"{count:,}"),
            (f"{count:,} idle: RSS per connection (KB)", f"{key}.rss_per_connection_kb", "<= 2x baseline"),
            (f"{count:,} idle: Redis memory per connection (bytes)", f"{key}.redis_bytes_per_connection", None),
        ]
    mass = options["mass"]
    lines += (
        []
        if "mass" not in scenarios
        else [
            (f"{mass:,} at once: registered", "mass.registered", f"{mass:,}"),
            (f"{mass:,} at once: connect+register per s", "mass.connect_register_rate", None),
            (f"{mass:,} at once: closed by server", "mass.closed_by_server", "no 1011"),
            (f"{mass:,} disconnect: close errors / server errors", "mass.close_errors|mass.server_log_errors", "0 / 0"),
            (f"{mass:,} disconnect: stale group subscriptions", "mass.stale_group_subscriptions", "0"),
        ]
    )
    return lines


def _processes(counts: Any) -> str:
    """The process counts of a run (a number in reports written before several counts were allowed)."""
    return " and ".join(str(n) for n in counts) if isinstance(counts, list) else str(counts)


def table(report: dict[str, Any]) -> str:
    results = report["results"]
    names = list(results)
    header = ["metric", *names]
    # Ratios to the baseline: the project's (what the targets are about), and daphne's floor (bench/floor.py).
    compared = [n for n in ("daphne-floor", "project") if n in results and "baseline" in results]
    header.extend(f"{name} / baseline" for name in compared)
    header.append("target")
    out = [header]
    for label, path, target in rows(report):
        cells = [label]
        for name in names:
            parts = [_get(results[name], p) for p in path.split("|")]
            cells.append(" / ".join(_fmt(p) for p in parts))
        for name in compared:
            times = ratio(results, name, path) if "|" not in path else None
            cells.append(f"{times:.2f}x" if times is not None else "-")
        cells.append(target or "")
        out.append(cells)
    for name in names:
        for scenario, result in results[name].items():
            if isinstance(result, dict) and "error" in result:
                out.append([f"{name} failed {scenario}: {result['error']}"[:200], *[""] * (len(header) - 1)])
    machine = report["machine"]
    widths = [max(len(row[i]) for row in out) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |" for row in out]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines.append(
        f"\n{report['when']}; {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB, "
        f"Python {machine['python']}, {machine['system']}; load average at start {machine['load_average_at_start']}; "
        f"{_processes(report['options']['processes'])} daphne process(es), LOG_LEVEL={report['options']['log_level']}; "
        "wire format: uncompressed on both servers (the load generator offers no permessage-deflate)"
        + (
            f"; relay figures: the median of {rounds} rounds, the servers taking turns phase by phase "
            "(counts: the sum; CPU, p99 and throughput ratios: the median of the rounds' ratios)."
            if (rounds := report["options"].get("rounds", 1)) > 1
            else "."
        )
    )
    return "\n".join(lines)

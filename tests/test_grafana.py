"""The Grafana dashboard and the Prometheus scrape snippet in deploy/, held against what /metrics really exposes.

The exposition comes from :func:`notifications.prometheus.exposition` itself
(it reads the registry, hence the database), so a metric or label renamed
there fails here until the dashboard follows, and a metric added there fails
here until a panel shows it.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.servers import ROOT
from notifications.prometheus import exposition

DASHBOARD = ROOT / "deploy" / "grafana" / "notify-dashboard.json"
SCRAPE = ROOT / "deploy" / "prometheus" / "notify-scrape.yml"

METRIC = re.compile(r"\bnotify_[a-z_]+")
# A selector's matchers, e.g. notify_undeliverable_total{reason="queue_full"}.
MATCHERS = re.compile(r"\b(notify_[a-z_]+)\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
# The labels a query groups or matches by: sum by (reason) (...), ... on (process) ...
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
AGGREGATION = re.compile(r"\b(?:sum|avg|min|max|count|topk|bottomk|quantile|histogram_quantile)\b")
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
RANGE = re.compile(r"\b(?:rate|irate|increase)\s*\(\s*([^\[]*)\[([^\]]*)\]")
# Families /metrics exposes that no panel needs to show.
NOT_CHARTED = {
    # A histogram's creation time (prometheus_client's _created gauge): nothing to chart.
    "notify_delivery_latency_seconds_created",
}


@dataclass(frozen=True)
class Exposed:
    """What one scrape of /metrics holds: each sample name with its label names, and each family's sample names."""

    labels: dict[str, set[str]]
    families: dict[str, set[str]]


def exposed() -> Exposed:
    labels: dict[str, set[str]] = defaultdict(set)
    families: dict[str, set[str]] = defaultdict(set)
    for family in text_string_to_metric_families(exposition().decode()):
        for sample in family.samples:
            labels[sample.name] |= set(sample.labels)
            families[family.name].add(sample.name)
    return Exposed(dict(labels), dict(families))


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def queries() -> list[tuple[str, str, str]]:
    """Every query of the dashboard: (panel title, expr, legend)."""
    return [
        (panel["title"], target["expr"], target.get("legendFormat", ""))
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def unknown_metrics(expr: str, found: Exposed) -> set[str]:
    """The ``notify_*`` names in ``expr`` that are no sample name of /metrics."""
    return set(METRIC.findall(expr)) - set(found.labels)


def grouping_labels(expr: str) -> set[str]:
    return {label.strip() for clause in GROUPING.findall(expr) for label in clause.split(",") if label.strip()}


def unknown_labels(expr: str, found: Exposed) -> set[str]:
    """Labels ``expr`` filters on that its metric lacks, or groups by that any metric it names lacks."""
    missing = set()
    for metric, matchers in MATCHERS.findall(expr):
        missing |= set(MATCHER_LABEL.findall(matchers)) - found.labels.get(metric, set())
    for metric in set(METRIC.findall(expr)):
        missing |= grouping_labels(expr) - found.labels.get(metric, set())
    return missing


def labels_of_the_result(expr: str, found: Exposed) -> set[str]:
    """The labels the series ``expr`` returns keep (the ones a legend can show)."""
    if not AGGREGATION.search(expr):
        return set().union(*(found.labels.get(metric, set()) for metric in METRIC.findall(expr)))
    kept = grouping_labels(expr)
    return kept - {"le"} if "histogram_quantile" in expr else kept


# The dashboard as a file Grafana imports.


def test_the_dashboard_is_json_with_titled_panels_that_each_query_prometheus_with_a_unit() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["title"]
    panels = board["panels"]
    assert 10 <= len(panels) <= 16
    for panel in panels:
        assert panel.get("title", "").strip(), panel
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"]), panel["title"]
    titles = [panel["title"] for panel in panels]
    assert len(set(titles)) == len(titles), titles
    assert len({panel["id"] for panel in panels}) == len(panels)


def test_every_panel_and_query_uses_the_datasource_variable_chosen_on_import() -> None:
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    chosen = {"type": "prometheus", "uid": "${datasource}"}
    for panel in board["panels"]:
        assert panel["datasource"] == chosen, panel["title"]
        assert all(target["datasource"] == chosen for target in panel["targets"]), panel["title"]


def test_the_panels_fit_the_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_rates_use_the_rate_interval_and_only_per_process_counters() -> None:
    """A deployment sum drops when a process leaves, which rate() would read as a counter reset."""
    rated = [(title, selector, window) for title, expr, _ in queries() for selector, window in RANGE.findall(expr)]
    assert rated
    for title, selector, window in rated:
        assert window == "$__rate_interval", (title, selector)
        assert "notify_deployment_" not in selector, (title, selector)


# The dashboard against the exposition.


@pytest.mark.django_db
def test_every_query_names_only_samples_that_metrics_exposes() -> None:
    found = exposed()
    unknown = [(title, expr, unknown_metrics(expr, found)) for title, expr, _ in queries()]
    assert [problem for problem in unknown if problem[2]] == []
    assert all(METRIC.search(expr) for _, expr, _ in queries())


@pytest.mark.django_db
def test_every_label_a_query_filters_or_groups_by_is_on_its_metrics() -> None:
    found = exposed()
    unknown = [(title, expr, unknown_labels(expr, found)) for title, expr, _ in queries()]
    assert [problem for problem in unknown if problem[2]] == []


@pytest.mark.django_db
def test_every_legend_shows_labels_its_query_keeps() -> None:
    found = exposed()
    problems = [
        (title, expr, legend)
        for title, expr, legend in queries()
        if set(LEGEND_LABEL.findall(legend)) - labels_of_the_result(expr, found)
    ]
    assert problems == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("expr", "metrics", "labels"),
    [
        ("sum(rate(notify_relayd_total[5m]))", {"notify_relayd_total"}, set()),
        ("sum(rate(notify_relayed[5m]))", {"notify_relayed"}, set()),  # a family, not a sample
        ("notify_delivery_latency_seconds", {"notify_delivery_latency_seconds"}, set()),
        ("sum by (reason) (rate(notify_relayed_total[5m]))", set(), {"reason"}),
        ('notify_limits_hit_total{reason="flood"}', set(), {"reason"}),
        ('notify_deployment_relayed_total{process="a:1"}', set(), {"process"}),
        ("sum by (process) (rate(notify_relayed_total[5m]))", set(), set()),
        ('sum by (le) (rate(notify_delivery_latency_seconds_bucket{process=~".+"}[5m]))', set(), set()),
    ],
)
def test_the_checks_catch_a_sample_metrics_does_not_expose_and_a_label_its_metric_lacks(
    expr: str, metrics: set[str], labels: set[str]
) -> None:
    found = exposed()
    assert unknown_metrics(expr, found) == metrics
    assert unknown_labels(expr, found) == labels


@pytest.mark.django_db
def test_every_per_process_family_metrics_exposes_is_on_a_panel() -> None:
    """A metric added to /metrics fails here until a panel shows it (deployment sums are optional)."""
    found = exposed()
    charted = {name for _, expr, _ in queries() for name in METRIC.findall(expr)}
    per_process = {
        name: samples
        for name, samples in found.families.items()
        if name.startswith("notify_") and not name.startswith("notify_deployment_") and name not in NOT_CHARTED
    }
    assert "notify_relayed" in per_process and "notify_delivery_latency_seconds" in per_process
    assert sorted(name for name, samples in per_process.items() if not samples & charted) == []
    assert NOT_CHARTED.issubset(found.families), "an exclusion that /metrics no longer has: drop it"


# The scrape snippet (checked as text: PyYAML is no dependency).


def scrape_settings() -> dict[str, str]:
    """The snippet's ``key: value`` lines, comments left out (each key appears once in it)."""
    settings = {}
    for line in SCRAPE.read_text().splitlines():
        match = re.match(r"^\s*(?:-\s+)?([a-z_]+):\s*(.*?)\s*(?:#.*)?$", line)
        if match and not line.lstrip().startswith("#"):
            assert match[1] not in settings, f"{match[1]} twice"
            settings[match[1]] = match[2]
    return settings


def test_the_scrape_snippet_scrapes_metrics_over_https_with_the_bearer_key_from_a_file() -> None:
    settings = scrape_settings()
    assert SCRAPE.read_text().splitlines()[0].startswith("#")
    assert re.search(r"^scrape_configs:\s*$", SCRAPE.read_text(), re.MULTILINE)
    assert settings["job_name"] == "notify"
    assert settings["metrics_path"] == "/metrics"
    assert settings["scheme"] == "https"
    assert settings["scrape_interval"] == "15s"
    assert settings["type"] == "Bearer"
    assert settings["credentials_file"] == "/etc/prometheus/notify-metrics-key"
    assert "credentials" not in settings, "the key belongs in the credentials file, not in the snippet"
    assert re.search(r"^\s+- notify\.example\.com:443\b", SCRAPE.read_text(), re.MULTILINE)
    assert "\t" not in SCRAPE.read_text(), "YAML indents with spaces only"


def test_the_scrape_snippet_says_what_the_server_needs_and_that_one_target_is_enough() -> None:
    comments = " ".join(line.lstrip("# ") for line in SCRAPE.read_text().splitlines() if line.lstrip().startswith("#"))
    assert "NOTIFY_METRICS_KEY" in comments and "32+" in comments
    assert "NOTIFY_METRICS_ALLOWED_ADDRESSES" in comments
    assert "404" in comments
    assert "one target" in comments

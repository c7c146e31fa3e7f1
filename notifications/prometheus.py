"""``/metrics``: the whole deployment in one scrape, in Prometheus's text format (``prometheus_client``).

Every server process writes its counters into its registry row with each
registry write (at least every ``NOTIFICATIONS_HEARTBEAT_INTERVAL``), and
those rows cross processes and hosts. So whichever process a scrape reaches
(behind nginx, the balancer picks one) reports every live process, each
labelled ``process="<host>:<pid>"``, and the deployment's sum
(``notify_deployment_*``). The answering process reports its own figures as
they are now rather than as of its last write. A process whose heartbeat
stopped leaves the output once it counts as dead (``STALE_AFTER``).

Only the delivery-latency histogram is the answering process's alone: it is
labelled with that process, so that series from different processes never
mix (scrape each process directly, e.g. ``--port`` per process, for all of
them).

Labels are bounded: a process, a reason or a kind from fixed lists, never an
id. A process started without the registry (``REGISTRY_ENABLED`` off)
reports itself alone.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from notifications import metrics
from notifications.conf import conf
from notifications.models import Registration, ServerProcess

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Family:
    """One metric family: its name (without ``notify_``), kind, help, and the counters it sums.

    ``series`` maps a label value (or "" without a label) to the counters that
    make it up.
    """

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    series: dict[str, tuple[str, ...]]
    label: str | None = None


def _one(counter: str) -> dict[str, tuple[str, ...]]:
    return {"": (counter,)}


FAMILIES: tuple[Family, ...] = (
    Family("connections_open", "gauge", "Open WebSocket connections", _one(metrics.CONNECTIONS_OPEN)),
    Family("relayed", "counter", "Notifications handed to the channel layer", _one(metrics.RELAYED)),
    Family("delivered", "counter", "Notifications written live to a connection", _one(metrics.DELIVERED)),
    Family("pending", "counter", "Notifications no registration received, kept for the id", _one(metrics.PENDING)),
    Family("pending_again", "counter", "Notifications kept again: their connection left", _one(metrics.PENDING_AGAIN)),
    Family("replayed", "counter", "Kept notifications sent to a registration", _one(metrics.REPLAYED)),
    Family("caught_up", "counter", "Notifications sent after a channel-layer gap", _one(metrics.CAUGHT_UP)),
    Family(
        "resumes",
        "counter",
        "v2 registrations with since, by whether every missed notification was replayed",
        {"true": (metrics.RESUMES_RECOVERED,), "false": (metrics.RESUMES_NOT_RECOVERED,)},
        label="recovered",
    ),
    Family(
        "continuity_lost",
        "counter",
        "Registrations closed with 4012: a gap could not be caught up",
        _one(metrics.CONTINUITY_LOST),
    ),
    Family(
        "undeliverable",
        "counter",
        "Notifications not delivered, by reason",
        {reason: (f"undeliverable_{reason}",) for reason in metrics.UNDELIVERABLE_REASONS},
        label="reason",
    ),
    Family(
        "frames_ignored",
        "counter",
        "Client frames not acted on, by reason",
        {
            "invalid": (metrics.REJECTED_FRAMES,),
            "rate_limited": (metrics.FRAMES_LIMITED,),
            "send_refused": (metrics.SENDS_REFUSED,),
            "registration_refused": (metrics.REGISTRATIONS_REFUSED,),
            "unhandled": (metrics.UNHANDLED_FRAMES,),
        },
        label="reason",
    ),
    Family(
        "limits_hit",
        "counter",
        "Limits reached, by kind",
        {
            "frames_per_second": (metrics.FRAMES_LIMITED,),
            "flood": (metrics.FLOODS_CLOSED,),
            "address": (metrics.ADDRESS_LIMITED,),
            "ids_per_connection": (metrics.IDS_LIMITED,),
            "queued_messages": (metrics.NOT_READING,),
        },
        label="kind",
    ),
    Family(
        "layer_errors",
        "counter",
        "Channel-layer operations that failed, by operation",
        {"read": (metrics.LAYER_READ_ERRORS,), "send": (metrics.LAYER_SEND_ERRORS,)},
        label="operation",
    ),
    Family(
        "layer_reconnects",
        "counter",
        "Channel-layer (Redis pub/sub) connections made again, by cause",
        {"read_error": (metrics.LAYER_READ_ERRORS,), "silent": (metrics.REDIS_SILENT,)},
        label="cause",
    ),
    Family(
        "reads_paused", "counter", "Times a client's socket was not read: it sent too fast", _one(metrics.READS_PAUSED)
    ),
    Family("drained", "counter", "WebSockets closed with 4012 as their process stopped", _one(metrics.DRAINED)),
    Family("process_cpu_seconds", "counter", "CPU time of the process", _one(metrics.CPU_SECONDS)),
    Family("process_resident_memory_bytes", "gauge", "Resident memory of the process", _one(metrics.RESIDENT_BYTES)),
)


@dataclass(frozen=True)
class ProcessFigures:
    label: str  # host:pid
    counters: dict[str, Any]
    registered_ids: int


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _processes() -> tuple[list[ProcessFigures], int]:
    """Every live process's figures (this one's as they are now), and the deployment's distinct registered ids."""
    from notifications.registry import registry

    own_counters = metrics.snapshot() | metrics.process_figures()
    if not conf.REGISTRY_ENABLED or not registry.started:
        return [ProcessFigures(this_process(), own_counters, registry.table.registered_ids())], 0
    rows = list(ServerProcess.objects.alive().order_by("host", "pid"))
    alive = Registration.objects.alive()
    ids, total_ids = alive.ids_by_process(), alive.distinct_ids()
    found = []
    for row in rows:
        own = row.pk == registry.process_id
        found.append(
            ProcessFigures(
                f"{row.host}:{row.pid}",
                own_counters if own else dict(row.counters or {}),
                registry.table.registered_ids() if own else ids.get(row.pk, 0),
            )
        )
    if not any(p.label == this_process() for p in found):  # not written yet (it just started)
        found.append(ProcessFigures(this_process(), own_counters, registry.table.registered_ids()))
    return found, total_ids


def _value(counters: dict[str, Any], names: Iterable[str]) -> float:
    total = 0.0
    for name in names:
        value = counters.get(name, 0)
        if isinstance(value, int | float):
            total += value
    return total


class DeploymentCollector(Collector):
    """Collects :data:`FAMILIES` for every live process and their sums, read from the registry at each scrape."""

    def collect(self) -> Iterator[Metric]:
        processes, total_ids = _processes()
        yield _gauge("deployment_processes", "Live server processes (heartbeat within STALE_AFTER)", len(processes))
        registered = GaugeMetricFamily(
            "notify_registered_ids", "Distinct ids registered by connections of the process", labels=["process"]
        )
        for process in processes:
            registered.add_metric([process.label], process.registered_ids)
        yield registered
        yield _gauge(
            "deployment_registered_ids",
            "Distinct ids registered anywhere in the deployment",
            total_ids or sum(p.registered_ids for p in processes),
        )
        for family in FAMILIES:
            yield from _family(family, processes)


def _family(family: Family, processes: list[ProcessFigures]) -> Iterator[Metric]:
    labels = ["process"] + ([family.label] if family.label else [])
    kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
    per_process = kind(f"notify_{family.name}", family.help, labels=labels)
    deployment = kind(
        f"notify_deployment_{family.name}",
        f"{family.help}: the sum over live processes",
        labels=[family.label] if family.label else [],
    )
    for label_value, names in family.series.items():
        tail = [label_value] if family.label else []
        total = 0.0
        for process in processes:
            value = _value(process.counters, names)
            total += value
            per_process.add_metric([process.label, *tail], value)
        deployment.add_metric(tail, total)
    yield per_process
    yield deployment


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"notify_{name}", help_text, value=value)


class LatencyCollector(Collector):
    """This process's delivery-latency histogram, labelled with the process."""

    def collect(self) -> Iterator[Metric]:
        label = this_process()
        for family in metrics.DELIVERY_LATENCY.collect():
            family.samples = [s._replace(labels={**s.labels, "process": label}) for s in family.samples]
            yield family


def exposition() -> bytes:
    """The text a scrape receives (runs database queries: call it in a worker thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DeploymentCollector())
    registry.register(LatencyCollector())
    return generate_latest(registry)

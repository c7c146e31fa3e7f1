"""What operators point at a deployment: /healthz, /readyz and /metrics of real daphne processes.

Two processes on a real Redis (and one behind the project's nginx config):
one scrape of either shows both processes and totals that match what the
test did; Redis stopped turns /readyz to 503 and counts what could not be
sent; a SIGKILLed process leaves the figures within the registry's bound.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from harness.clients import frame, open_client, receive, register_confirmed
from harness.servers import Daphne, Nginx, RedisServer, eventually

KEY = "metrics-key-for-tests-0123456789abcdef"
FAST_REGISTRY = {"NOTIFY_HEARTBEAT_INTERVAL": "1", "NOTIFY_STALE_AFTER": "3", "NOTIFY_REGISTRY_FLUSH_INTERVAL": "0.1"}


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    headers: dict[str, str]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a redirect is an answer to look at, not to follow


_opener = urllib.request.build_opener(_NoRedirects)


def get(url: str, headers: dict[str, str] | None = None) -> Answer:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _opener.open(request, timeout=10) as response:
            return Answer(response.status, response.read().decode(), dict(response.headers))
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.read().decode(), dict(error.headers))


async def aget(url: str, headers: dict[str, str] | None = None) -> Answer:
    return await asyncio.to_thread(get, url, headers)


class Scrape:
    """One /metrics answer, parsed: ``value(name, **labels)`` sums the samples that match."""

    def __init__(self, text: str) -> None:
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        return sum(
            s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def processes(self, name: str = "notify_connections_open") -> set[str]:
        return {s.labels["process"] for s in self.samples if s.name == name}


async def scrape(server: Daphne | Nginx) -> Scrape:
    answer = await aget(f"{server.http_url}/metrics", {"Authorization": f"Bearer {KEY}"})
    assert answer.status == 200, answer
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Scrape(answer.body)


def label_of(server: Daphne) -> str:
    """The ``process`` label of a daphne process: its host and pid."""
    return f"{socket.gethostname()}:{server.process.pid}"


async def test_healthz_stays_200_and_readyz_follows_redis_and_neither_is_logged(
    daphne_factory: Callable[..., Daphne], own_redis: RedisServer
) -> None:
    server = daphne_factory({"REDIS_URL": own_redis.url, "REDIS_PREFIX": "ready"}, ("--access-log", "-"))
    # A load balancer calls by address: any Host header is answered.
    for host in ("10.1.2.3:8765", "not-an-allowed-host.example"):
        assert (await aget(f"{server.http_url}/healthz", {"Host": host})).status == 200
        ready = await aget(f"{server.http_url}/readyz", {"Host": host})
        assert (ready.status, json.loads(ready.body)) == (200, {"status": "ready"})

    own_redis.stop()
    loop = asyncio.get_running_loop()
    stopped_at = loop.time()

    async def unready() -> bool:
        return (await aget(f"{server.http_url}/readyz")).status == 503

    await eventually(unready, seconds=10, interval=0.2)
    assert loop.time() - stopped_at < 5
    answer = await aget(f"{server.http_url}/readyz")
    reason = json.loads(answer.body)
    assert reason["status"] == "unavailable"
    assert f":{own_redis.port}" in reason["reason"] and "does not answer" in reason["reason"]
    assert "\n" not in answer.body.strip()
    assert (await aget(f"{server.http_url}/healthz")).status == 200

    own_redis.start_again()

    async def ready_again() -> bool:
        return (await aget(f"{server.http_url}/readyz")).status == 200

    await eventually(ready_again, seconds=15, interval=0.2)
    log = server.log()
    assert "/healthz" not in log and "/readyz" not in log  # not in the access log, not in the server's log
    assert log.count("Not ready:") == 1 and "Ready again" in log  # one line per change, never one per call
    assert "Traceback" not in log


async def test_one_scrape_of_either_process_shows_both_with_totals_that_match_what_happened(
    daphne_factory: Callable[..., Daphne], own_redis: RedisServer
) -> None:
    env = {"REDIS_URL": own_redis.url, "REDIS_PREFIX": "metrics", "NOTIFY_METRICS_KEY": KEY, **FAST_REGISTRY}
    first, second = daphne_factory(env), daphne_factory(env)
    on_first = [await open_client(first.url) for _ in range(3)]
    on_second = [await open_client(second.url) for _ in range(2)]
    for i, ws in enumerate(on_first + on_second):
        await register_confirmed(ws, f"operator-{i}")

    async def shows_every_connection() -> bool:
        both = [await scrape(first), await scrape(second)]
        return all(
            s.value("notify_connections_open", process=label_of(first)) == 3
            and s.value("notify_connections_open", process=label_of(second)) == 2
            and s.value("notify_deployment_connections_open") == 5
            and s.value("notify_deployment_registered_ids") == 5
            for s in both
        )

    await eventually(shows_every_connection, seconds=10, interval=0.2)
    before = await scrape(second)

    # Ten notifications from a client on the first process to the ids on the second, and back.
    sender = on_first[0]
    for n in range(10):
        await sender.send(frame(f"operator-{3 + n % 2}", f"to the second {n}"))
    for ws in on_second:
        for _ in range(5):
            await receive(ws)
    for n in range(6):
        await on_second[0].send(frame(f"operator-{n % 3}", f"to the first {n}"))
    for ws in on_first:
        for _ in range(2):
            await receive(ws)

    async def counted() -> bool:
        now = await scrape(second)
        return (
            now.value("notify_deployment_relayed_total") - before.value("notify_deployment_relayed_total") == 16
            and now.value("notify_deployment_delivered_total") - before.value("notify_deployment_delivered_total") == 16
        )

    await eventually(counted, seconds=10, interval=0.2)
    after = await scrape(second)
    assert (
        after.value("notify_relayed_total", process=label_of(first))
        - before.value("notify_relayed_total", process=label_of(first))
        == 10
    )
    assert (
        after.value("notify_delivered_total", process=label_of(second))
        - before.value("notify_delivered_total", process=label_of(second))
        == 10
    )
    # The latency histogram is the answering process's own: it wrote ten of these.
    assert after.processes("notify_delivery_latency_seconds_count") == {label_of(second)}
    assert after.value("notify_delivery_latency_seconds_count") >= 10
    assert after.value("notify_delivery_latency_seconds_bucket", le="+Inf") == after.value(
        "notify_delivery_latency_seconds_count"
    )

    # Redis stopped: a send from a client cannot be handed over, and is counted with its reason.
    own_redis.stop()
    await on_first[1].send(frame("operator-4", "while Redis is down"))

    async def undeliverable_counted() -> bool:
        now = await scrape(first)
        return now.value("notify_undeliverable_total", process=label_of(first), reason="layer_refused") == 1

    await eventually(undeliverable_counted, seconds=20, interval=0.3)
    own_redis.start_again()
    await eventually(
        lambda: _undeliverable_seen_by(second, label_of(first)), seconds=20, interval=0.3
    )  # written to the registry: the other process reports it too
    assert (await scrape(second)).value("notify_layer_errors_total", process=label_of(first), operation="send") == 1

    # A SIGKILLed process leaves the figures within STALE_AFTER + HEARTBEAT_INTERVAL (4 s here).
    second.stop(signal.SIGKILL)
    killed_at = asyncio.get_running_loop().time()

    async def gone() -> bool:
        now = await scrape(first)
        return now.processes() == {label_of(first)} and now.value("notify_deployment_processes") == 1

    await eventually(gone, seconds=15, interval=0.3)
    assert asyncio.get_running_loop().time() - killed_at < 4 + 3  # the bound, and a scrape's slack
    final = await scrape(first)
    assert final.value("notify_deployment_connections_open") == 3
    for ws in on_first + on_second:
        await ws.close()
    assert "Traceback" not in first.log()


async def _undeliverable_seen_by(server: Daphne, process: str) -> bool:
    return (await scrape(server)).value("notify_undeliverable_total", process=process, reason="layer_refused") == 1


async def test_behind_nginx_the_probes_answer_any_host_and_the_metrics_keep_to_their_addresses(
    daphne_factory: Callable[..., Daphne], nginx_factory: Callable[[Daphne], Nginx], redis_url: str, redis_prefix: str
) -> None:
    env = {
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": redis_prefix,
        "NOTIFY_BEHIND_PROXY": "1",
        "NOTIFY_METRICS_KEY": KEY,
        "NOTIFY_METRICS_ALLOWED_ADDRESSES": "127.0.0.1/32,::1",
        "DJANGO_HTTPS": "1",  # behind the proxy, plain-http requests are redirected to https...
        **FAST_REGISTRY,
    }
    server = daphne_factory(env)
    proxy = nginx_factory(server)
    # ...except the probes, which a balancer calls over plain HTTP by address.
    assert (await aget(f"{proxy.http_url}/healthz", {"Host": "10.0.0.9"})).status == 200
    assert (await aget(f"{proxy.http_url}/readyz", {"Host": "10.0.0.9"})).status == 200
    assert (await aget(f"{proxy.http_url}/admin/", {"Host": "localhost"})).status in (301, 302)
    client = await open_client(proxy.url)
    await register_confirmed(client, "behind-nginx")

    async def shows_the_client() -> bool:
        return (await scrape(proxy)).value("notify_deployment_connections_open") == 1

    await eventually(shows_the_client, seconds=10, interval=0.2)
    # A forged X-Real-IP is overwritten by nginx: the address daphne sees is the one nginx saw.
    forged = await aget(
        f"{proxy.http_url}/metrics",
        {"Authorization": f"Bearer {KEY}", "X-Real-IP": "10.9.9.9", "X-Forwarded-For": "10.9.9.9"},
    )
    assert forged.status == 200
    assert (await aget(f"{proxy.http_url}/metrics")).status == 401
    await client.close()


async def test_from_an_address_not_allowed_the_metrics_are_refused_behind_nginx(
    daphne_factory: Callable[..., Daphne], nginx_factory: Callable[[Daphne], Nginx]
) -> None:
    server = daphne_factory(
        {"NOTIFY_BEHIND_PROXY": "1", "NOTIFY_METRICS_KEY": KEY, "NOTIFY_METRICS_ALLOWED_ADDRESSES": "10.0.0.0/8"}
    )
    proxy = nginx_factory(server)
    # The client claims 10.1.2.3; nginx says what it saw (127.0.0.1), and that is not allowed.
    claimed = {"Authorization": f"Bearer {KEY}", "X-Real-IP": "10.1.2.3", "X-Forwarded-For": "10.1.2.3"}
    assert (await aget(f"{proxy.http_url}/metrics", claimed)).status == 403


async def test_with_log_format_json_every_line_the_server_writes_under_load_is_one_json_object(
    daphne_factory: Callable[..., Daphne], tmp_path: Path
) -> None:
    # daphne's access log, apart as in deploy/ (stdout), stays as it is; the server's own log is all JSON.
    access_log = tmp_path / "access.log"
    server = daphne_factory(
        {"LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "NOTIFY_MAX_IDS_PER_CONNECTION": "2"},
        ("--access-log", str(access_log)),
    )
    clients = [await open_client(server.url) for _ in range(20)]
    for i, ws in enumerate(clients):
        await register_confirmed(ws, f"json-{i}")
    await clients[0].send("not json at all")  # an ignored frame: a WARNING with its reason
    for extra in ("second", "third"):  # over the per-connection limit: refused, logged
        await clients[1].send(frame(extra, "connected"))
    for n in range(200):
        await clients[n % 20].send(frame(f"json-{(n + 1) % 20}", f'load {n}\nwith a newline and "quotes"'))
    for ws in clients:
        for _ in range(10):
            await receive(ws)
    for ws in clients[:10]:
        await ws.close()
    assert server.stop() == 0  # SIGTERM: the drain logs too

    lines = [line for line in server.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # raises on the first line that is not JSON
    assert len(records) > 250
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    # Records of a connection carry its id; a disconnect its close code; an ignored frame its connection.
    assert len({r["connection"] for r in records if "connection" in r}) >= 20
    assert any(r.get("code") == 1000 and "disconnected" in r["message"] for r in records)
    assert any(r["level"] == "WARNING" and "ignored" in r["message"] and "connection" in r for r in records)
    assert '"WSCONNECT /"' in access_log.read_text()


async def test_without_its_database_a_process_answers_metrics_with_503_and_one_line(
    daphne_factory: Callable[..., Daphne],
) -> None:
    from harness.servers import free_port

    server = daphne_factory(
        {"DATABASE_URL": f"postgres://postgres@127.0.0.1:{free_port()}/gone", "NOTIFY_METRICS_KEY": KEY}
    )
    answer = await aget(f"{server.http_url}/metrics", {"Authorization": f"Bearer {KEY}"})
    assert answer.status == 503
    assert json.loads(answer.body)["error"].startswith("the registry's database does not answer: OperationalError")
    assert (await aget(f"{server.http_url}/readyz")).status == 503
    assert (await aget(f"{server.http_url}/healthz")).status == 200
    assert "Traceback" not in server.log()

"""The admin's dashboard in a real browser (headless Chromium), on two daphne processes sharing a real Redis.

The data comes from a real run: clients connected to both processes,
notifications delivered, some pending for an id nobody registered, one
undeliverable while Redis was stopped. The ids are chosen to be HTML: the
page must show them as text.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from playwright.async_api import Browser, Page, expect

from harness.clients import frame, open_client, receive, register_confirmed
from harness.servers import ROOT, Daphne, RedisServer, eventually

FAST_REGISTRY = {"NOTIFY_HEARTBEAT_INTERVAL": "1", "NOTIFY_STALE_AFTER": "3", "NOTIFY_REGISTRY_FLUSH_INTERVAL": "0.1"}
HOSTILE_ID = '<img src=x onerror="window.__hacked = 1">'
CHART_FILE = ROOT / "notifications" / "static" / "notifications" / "vendor" / "chart.js" / "chart.umd.min.js"
CHART_SHA256 = "3f288f4f26882c26b58931fb586a9b4f30370b5de38d69dc005b0bd05b08e113"


def test_the_chart_library_is_the_published_file_it_says_it_is() -> None:
    source = (CHART_FILE.parent / "SOURCE.txt").read_text()
    assert CHART_SHA256 in source
    assert hashlib.sha256(CHART_FILE.read_bytes()).hexdigest() == CHART_SHA256


async def log_in(browser: Browser, server: Daphne) -> Page:
    await sync_to_async(User.objects.create_superuser)("operator", password="a-long-operator-password")
    page = await browser.new_page(viewport={"width": 1200, "height": 1250})
    await page.goto(f"{server.http_url}/admin/login/?next=/admin/")
    await page.fill("#id_username", "operator")
    await page.fill("#id_password", "a-long-operator-password")
    await page.click("input[type=submit]")
    await expect(page.locator("#site-name")).to_be_visible()
    return page


async def chart_total(page: Page, dataset: str) -> float:
    """The sum of one of the chart's series, as Chart.js holds it (None: no chart was drawn)."""
    return float(
        await page.evaluate(
            """(label) => {
                const chart = Chart.getChart(document.getElementById("activity-chart"));
                const series = chart.data.datasets.find((d) => d.label === label);
                return series.data.reduce((a, b) => a + b, 0);
            }""",
            dataset,
        )
    )


async def test_the_dashboard_shows_a_real_run_updates_itself_and_shows_client_text_as_text(
    browser: Browser,
    artifacts: Path,
    daphne_factory: Callable[..., Daphne],
    own_redis: RedisServer,
    async_db: None,
) -> None:
    env = {"REDIS_URL": own_redis.url, "REDIS_PREFIX": "dashboard", **FAST_REGISTRY}
    first, second = daphne_factory(env), daphne_factory(env)
    clients = [await open_client(first.url), await open_client(second.url), await open_client(second.url)]
    for i, ws in enumerate(clients):
        await register_confirmed(ws, f"dashboard-{i}")
    for n in range(12):
        await clients[0].send(frame(f"dashboard-{n % 3}", f"notification {n}"))
    for ws in clients:
        for _ in range(4):
            await receive(ws)
    own_redis.stop()
    await clients[0].send(frame(HOSTILE_ID, "while Redis is down"))  # undeliverable: the layer refused it
    await eventually(lambda: _logged(first, "Undeliverable notification for"), seconds=20)
    own_redis.start_again()
    for server in (first, second):
        await eventually(lambda server=server: _ready(server), seconds=20, interval=0.2)
    for n in range(3):  # nobody registered this id: pending
        await clients[1].send(frame(HOSTILE_ID, f"kept {n}"))

    page = await log_in(browser, first)
    await page.click("a[href='/admin/notifications/dashboard/']")  # linked from the admin's index
    await expect(page.locator("h1")).to_have_text("Notification center dashboard")
    processes = page.locator("#processes tbody tr")
    await expect(processes).to_have_count(2)
    await expect(page.locator("#total-connections")).to_have_text("3")
    await expect(page.locator("#total-processes")).to_have_text("2")

    # The chart, drawn by the library served from the app's static files, holds what happened.
    async def chart_shows_the_run() -> bool:
        return await chart_total(page, "delivered live") >= 12 and await chart_total(page, "pending") >= 3

    await eventually(chart_shows_the_run, seconds=20, interval=0.5)
    assert await page.evaluate("document.getElementById('activity-chart').width") > 300

    # The hostile id: in the tables as text, never as an element.
    pending_row = page.locator("#most-pending tbody tr").first
    await expect(pending_row.locator("td").nth(0)).to_have_text(HOSTILE_ID)
    await expect(pending_row.locator("td").nth(1)).to_have_text("3")
    undeliverable = page.locator("#recent-undeliverable tbody tr").first
    await expect(undeliverable).to_contain_text(HOSTILE_ID)
    await expect(undeliverable).to_contain_text("the channel layer refused it")
    assert await page.locator("#notify-dashboard img").count() == 0
    assert await page.evaluate("window.__hacked") is None

    # It updates itself: a client connects, and the figure follows without a reload.
    late = await open_client(second.url)
    await expect(page.locator("#total-connections")).to_have_text("4", timeout=20_000)
    await page.screenshot(path=artifacts / "dashboard.png", full_page=True)

    for ws in [*clients, late]:
        await ws.close()
    await expect(page.locator("#total-connections")).to_have_text("0", timeout=20_000)
    assert "Traceback" not in first.log() + second.log()


async def _logged(server: Daphne, text: str) -> bool:
    return text in server.log()


async def _ready(server: Daphne) -> bool:
    def status() -> int:
        try:
            with urllib.request.urlopen(f"{server.http_url}/readyz", timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    return await asyncio.to_thread(status) == 200


@pytest.mark.django_db
def test_the_minutes_of_the_chart_add_up_per_process_across_a_restart() -> None:
    """Each minute's figure is the increase since the process's row before; a new process counts from zero."""
    from datetime import UTC, datetime, timedelta

    from notifications.dashboard import chart_series
    from notifications.models import ActivitySample

    now = datetime(2026, 12, 6, 12, 30, 20, tzinfo=UTC)
    minute = now.replace(second=0)
    old_start = minute - timedelta(hours=3)

    def sample(key: str, started: datetime, ago: int, delivered: int, connections: int) -> None:
        ActivitySample.objects.create(
            process_key=key,
            process=f"host:{key}",
            started_at=started,
            minute=minute - timedelta(minutes=ago),
            counters={"delivered": delivered, "connections_open": connections},
        )

    sample("a", old_start, 61, 10, 1)  # too old to show, but the base of the next one
    sample("a", old_start, 59, 25, 2)
    sample("a", old_start, 2, 40, 2)  # nothing written in between: all 15 in this minute
    sample("b", minute - timedelta(minutes=1, seconds=-5), 1, 7, 5)  # started within that minute: counts whole
    sample("c", old_start, 0, 1000, 3)  # its first row in the window, no row before: its increase is unknown
    series = chart_series(now)
    assert len(series["minutes"]) == 60 and series["minutes"][-1] == minute.isoformat()
    assert series["live"][0] == 15
    assert series["live"][-3] == 15
    assert series["live"][-2] == 7
    assert series["live"][-1] == 0
    assert series["connections"][-1] == 3 and series["connections"][-2] == 5
    assert sum(series["live"]) == 37
    assert json.loads(json.dumps(series)) == series  # the page receives it as JSON

"""The example page and notify-client.js in a real browser (headless Chromium driven by Playwright).

Against real daphne processes; notifications come from ``manage.py notify`` run
as an operator runs it, from Python clients of the field, and from other pages.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from harness.clients import open_client, receive, register_confirmed, send_once
from harness.servers import ROOT, Daphne, Nginx, Python, free_port
from notifications.protocol import GREETING
from tests.programs import require_program

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXAMPLE_FILE = ROOT / "notifications" / "templates" / "notifications" / "example.html"
CLIENT_FILE = ROOT / "notifications" / "static" / "notifications" / "notify-client.js"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    chromium = require_program("chromium", install_hint="install Debian's chromium package (apt install chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """Where screenshots go: NOTIFY_ARTIFACTS when set (CI keeps them), else the test's temporary directory."""
    configured = os.environ.get("NOTIFY_ARTIFACTS", "").strip()
    if not configured:
        return tmp_path
    path = Path(configured)
    path.mkdir(parents=True, exist_ok=True)
    return path


async def open_example(browser: Browser, url: str, *, state: str = "connected") -> Page:
    page = await browser.new_page(viewport={"width": 820, "height": 560})
    await page.goto(url)
    await expect(page.locator("#state")).to_have_text(state)
    return page


def notifications(page: Page) -> tuple:
    """The texts shown (newest first) and the total received."""
    return page.locator("#notifications li .text"), page.locator("#total")


PROBES = itertools.count(1)


async def confirm_receiving(page: Page, recipient: str, *, attempts: int = 10) -> None:
    """Prove the page's registration through the page's own form: it sends itself a probe until one shows.

    The protocol answers nothing to a registration; probes on the same connection follow it.
    """
    texts, _ = notifications(page)
    for _ in range(attempts):
        # Numbered across the whole run: a probe shown earlier (before a restart, say) never passes for this one.
        probe = f"probe {next(PROBES)} from this page"
        await page.fill("#to", recipient)
        await page.fill("#message", probe)
        await page.click("#send-form button")
        try:
            await expect(texts.first).to_have_text(probe, timeout=1000)
            return
        except AssertionError:
            continue
    raise AssertionError(f"the page never received what it sent to {recipient!r}")


async def notify(manage: Python, daphne: Daphne, recipient: str, message: str) -> None:
    """``python manage.py notify`` in a second terminal beside the server: no debug, no key, the server's address."""
    env = {"NOTIFY_SERVER_URL": daphne.url, "REDIS_URL": None, "DJANGO_DEBUG": None, "DJANGO_SECRET_KEY": None}
    done = await asyncio.to_thread(manage, "notify", recipient, message, env=env)
    assert done.returncode == 0, done.stderr


async def test_a_notification_sent_with_manage_py_notify_appears_with_its_time(
    browser: Browser, daphne: Daphne, artifacts: Path, manage: Python
) -> None:
    recipient = "3f1c2a9e-4b7d-4e8a-9c61-2d5f0b7e8a14"
    page = await open_example(browser, f"{daphne.http_url}/example/#{recipient}")
    await expect(page.locator("#my-id")).to_have_text(recipient)
    await expect(page.locator("#try-command")).to_have_text(f"python manage.py notify {recipient} hello")
    await confirm_receiving(page, recipient)
    texts, total = notifications(page)
    await expect(total).to_have_text("1")  # the probe; the server's greeting is no notification

    await notify(manage, daphne, recipient, "hello")
    await expect(texts.first).to_have_text("hello")
    await expect(page.locator("#notifications li time").first).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"))
    await expect(total).to_have_text("2")

    await send_once(daphne.url, recipient, '{"status": 200, "url": "https://example.com/result.mp4"}')
    await send_once(daphne.url, recipient, "<b>not bold</b>: shown as sent")
    await expect(texts.first).to_have_text("<b>not bold</b>: shown as sent")
    await expect(total).to_have_text("4")
    await page.screenshot(path=artifacts / "example-page.png", full_page=True)


async def test_a_script_in_a_notification_is_shown_as_text(browser: Browser, daphne: Daphne) -> None:
    page = await open_example(browser, f"{daphne.http_url}/example/#escape-me")
    await confirm_receiving(page, "escape-me")
    hostile = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    await send_once(daphne.url, "escape-me", hostile)
    texts, _ = notifications(page)
    await expect(texts.first).to_have_text(hostile)
    assert await page.locator("#notifications script, #notifications img").count() == 0
    assert await page.evaluate("window.pwned") is None


async def test_a_message_sent_from_the_pages_form_reaches_a_second_page(browser: Browser, daphne: Daphne) -> None:
    receiver = await open_example(browser, f"{daphne.http_url}/example/#bob")
    await confirm_receiving(receiver, "bob")
    sender = await open_example(browser, f"{daphne.http_url}/example/#alice")
    await sender.fill("#to", "bob")
    await sender.fill("#message", "hello bob, from alice's tab")
    await sender.click("#send-form button")
    await expect(sender.locator("#send-result")).to_have_text("sent to bob")
    texts, total = notifications(receiver)
    await expect(texts.first).to_have_text("hello bob, from alice's tab")
    await expect(total).to_have_text("2")


async def test_the_page_reaches_python_clients_and_refuses_to_send_the_registration_text(
    browser: Browser, daphne: Daphne
) -> None:
    listener = await open_client(daphne.url)
    await register_confirmed(listener, "python-side")
    page = await open_example(browser, f"{daphne.http_url}/example/#browser-side")
    await page.fill("#to", "python-side")
    await page.fill("#message", "connected")
    await page.click("#send-form button")
    await expect(page.locator("#send-result")).to_have_text(re.compile("^not sent: .*registration"))
    await page.fill("#message", "from the browser")
    await page.click("#send-form button")
    assert await receive(listener) == "from the browser"
    await listener.close()


async def test_after_a_server_restart_the_page_reconnects_and_receives_without_a_reload(
    browser: Browser, daphne_factory: Callable[..., Daphne]
) -> None:
    first = daphne_factory()
    page = await open_example(browser, f"{first.http_url}/example/#survivor")
    await confirm_receiving(page, "survivor")
    await page.evaluate("window.sameDocument = true")
    state = page.locator("#state")

    await asyncio.to_thread(first.stop)
    await expect(state).to_have_text("reconnecting")
    await expect(page.locator("#send-form button")).to_be_disabled()
    second = daphne_factory(port=first.port)
    await expect(state).to_have_text("connected", timeout=20_000)

    await confirm_receiving(page, "survivor")  # registered again without any help
    texts, total = notifications(page)
    before = int(await total.inner_text())
    await send_once(second.url, "survivor", "after the restart")
    await expect(texts.first).to_have_text("after the restart")
    await expect(total).to_have_text(str(before + 1))
    assert await page.evaluate("window.sameDocument") is True


async def test_the_client_backs_off_exponentially_with_jitter(browser: Browser) -> None:
    page = await browser.new_page()
    await page.add_script_tag(path=CLIENT_FILE)
    nobody = f"ws://127.0.0.1:{free_port()}/"
    delays = await page.evaluate(
        """(url) => new Promise((resolve) => {
            const delays = [];
            const client = new NotifyClient(url, { minDelay: 40, maxDelay: 300, onState: (state, detail) => {
                if (state !== "reconnecting" || detail.delay === undefined) return;
                delays.push(detail.delay);
                if (delays.length === 6) { client.close(); resolve(delays); }
            }});
        })""",
        nobody,
    )
    ceilings = [40, 80, 160, 300, 300, 300]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay < ceiling


async def test_the_client_tries_at_once_when_the_browser_comes_back_online(
    browser: Browser, daphne_factory: Callable[..., Daphne]
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.add_script_tag(path=CLIENT_FILE)
    port = free_port()
    await page.evaluate(
        """(url) => {
            window.delays = [];
            window.client = new NotifyClient(url, { minDelay: 120000, maxDelay: 120000, onState: (state, detail) => {
                if (state === "reconnecting" && detail.delay !== undefined) window.delays.push(detail.delay);
            }});
        }""",
        f"ws://127.0.0.1:{port}/",
    )
    await page.wait_for_function("window.delays.length === 1")  # nobody listens: the next try is a minute away
    daphne_factory(port=port)
    await context.set_offline(True)
    await context.set_offline(False)  # the browser's "online" event
    await page.wait_for_function("window.client.state === 'connected'", timeout=10_000)
    assert await page.evaluate("window.delays.length") == 1  # it did not wait out the delay
    await context.close()


async def test_the_client_receives_for_every_id_it_registered_and_never_the_greeting(
    browser: Browser, daphne: Daphne
) -> None:
    page = await browser.new_page()
    await page.add_script_tag(path=CLIENT_FILE)
    await page.evaluate(
        """(url) => {
            window.received = [];
            window.client = new NotifyClient(url, { ids: ["first"], onMessage: (text) => window.received.push(text) });
        }""",
        daphne.url,
    )
    await page.wait_for_function("window.client.state === 'connected'")
    await page.evaluate("window.client.register('second')")
    for recipient in ("first", "second"):
        for attempt in range(10):
            probe = f"probe {attempt} to {recipient}"
            assert await page.evaluate("([to, text]) => window.client.send(to, text)", [recipient, probe])
            try:
                await page.wait_for_function("(probe) => window.received.includes(probe)", arg=probe, timeout=1000)
                break
            except PlaywrightTimeoutError:
                continue
        else:
            raise AssertionError(f"the client never received what it sent to {recipient!r}")
    await send_once(daphne.url, "second", "for the second id")
    await page.wait_for_function("window.received.includes('for the second id')")
    received = await page.evaluate("window.received")
    assert GREETING not in received
    assert received[0].startswith("probe ")


async def test_opened_from_disk_it_connects_to_the_server_given_by_the_query(browser: Browser, daphne: Daphne) -> None:
    page = await open_example(browser, f"{EXAMPLE_FILE.as_uri()}?server={quote(daphne.url, safe='')}#from-disk")
    await expect(page.locator("#server")).to_have_text(daphne.url)
    await confirm_receiving(page, "from-disk")
    await send_once(daphne.url, "from-disk", "to a page opened from disk")
    texts, _ = notifications(page)
    await expect(texts.first).to_have_text("to a page opened from disk")


async def test_opened_from_disk_without_a_server_it_tries_the_default_port(browser: Browser) -> None:
    page = await browser.new_page()
    await page.goto(EXAMPLE_FILE.as_uri())
    await expect(page.locator("#server")).to_have_text("ws://localhost:8765/")
    await expect(page.locator("#my-id")).to_have_text(UUID)


async def test_a_server_that_is_no_websocket_address_is_one_clear_line(browser: Browser) -> None:
    page = await browser.new_page()
    await page.goto(f"{EXAMPLE_FILE.as_uri()}?server=http://localhost:8765/")
    await expect(page.locator("#state")).to_have_text("failed")
    await expect(page.locator("#state-detail")).to_have_text(re.compile("^not a WebSocket address"))


async def test_the_root_leads_to_the_example_page_which_makes_up_an_id(browser: Browser, daphne: Daphne) -> None:
    page = await open_example(browser, f"{daphne.http_url}/")
    assert re.fullmatch(rf"{re.escape(daphne.http_url)}/example/#{UUID.pattern}", page.url)
    recipient = page.url.partition("#")[2]
    await expect(page.locator("#my-id")).to_have_text(recipient)
    await confirm_receiving(page, recipient)


async def test_the_page_is_served_as_the_file_it_is_and_the_client_as_a_static_file(
    browser: Browser, daphne: Daphne
) -> None:
    page = await browser.new_page()
    served = await page.request.get(f"{daphne.http_url}/example/")
    assert served.status == 200
    assert await served.body() == EXAMPLE_FILE.read_bytes()
    client = await page.request.get(f"{daphne.http_url}/static/notifications/notify-client.js")
    assert client.status == 200
    assert "javascript" in client.headers["content-type"]
    assert await client.body() == CLIENT_FILE.read_bytes()
    admin_css = await page.request.get(f"{daphne.http_url}/static/admin/css/base.css")
    assert admin_css.status == 200


async def test_behind_nginx_the_page_and_its_client_come_through_and_connect(
    browser: Browser, daphne: Daphne, nginx_factory: Callable[[Daphne], Nginx]
) -> None:
    nginx = nginx_factory(daphne)
    page = await open_example(browser, f"{nginx.http_url}/example/#via-nginx")
    await expect(page.locator("#server")).to_have_text(nginx.url)
    await confirm_receiving(page, "via-nginx")

"""The example page and notify-client.js in a real browser (headless Chromium driven by Playwright).

Against real daphne processes; notifications come from ``manage.py notify`` run
as an operator runs it, from Python clients of the field, and from other pages.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.async_api import Browser, Page, expect
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeoutError
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from harness.clients import open_client, receive, register_confirmed, send_once
from harness.servers import ROOT, Daphne, Nginx, Python, RedisServer, free_port, wait_until
from notifications.protocol import GREETING

EXAMPLE_FILE = ROOT / "notifications" / "templates" / "notifications" / "example.html"
CLIENT_FILE = ROOT / "notifications" / "static" / "notifications" / "notify-client.js"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


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
    # The restarted in-memory server kept no history: the page's resume could not be recovered, and it says so.
    await expect(page.locator("#notifications li.gap")).to_have_text(re.compile("for survivor could not be recovered"))
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


# Protocol v2 in the browser: resume with positions, gaps, refusals, reconnect delays by close code.

# What the client stores per server and id in sessionStorage (documented in notify-client.js and the README).
STORAGE_KEY = "([url, id]) => 'notify-client ' + JSON.stringify([new URL(url).href, id])"

# Runs in every document of a context before the page's scripts: each item the page adds to its list is
# written down, in arrival order, in the tab's sessionStorage, in the same task that showed it, so the
# record survives reloads and holds exactly what the page showed.
RECORD_SHOWN = """(() => {
    new MutationObserver((mutations) => {
        const record = JSON.parse(sessionStorage.getItem("shown") || "[]");
        const before = record.length;
        for (const mutation of mutations) {
            for (const node of mutation.addedNodes) {
                if (node.nodeName !== "LI" || node.parentElement?.id !== "notifications") continue;
                const text = node.querySelector(".text");
                if (text === null) continue;  // a notice (a gap, a refusal), not a notification
                record.push({ text: text.textContent, replayed: node.classList.contains("replayed") });
            }
        }
        if (record.length > before) sessionStorage.setItem("shown", JSON.stringify(record));
    }).observe(document, { childList: true, subtree: true });
})();"""

# A client whose callbacks write down what they get, in window.events: ["message", text, info],
# ["gap", id], ["refused", id, code], ["state", state, detail, Date.now()].
CAPTURING_CLIENT = """([url, ids]) => {
    window.events = [];
    const at = () => Date.now();
    window.client = new NotifyClient(url, {
        ids,
        onMessage: (text, info) => window.events.push(["message", text, info]),
        onGap: (id) => window.events.push(["gap", id]),
        onRefused: (id, code) => window.events.push(["refused", id, code]),
        onState: (state, detail) => window.events.push(["state", state, detail, at()]),
    });
}"""

# The [state, detail, time] of each announced reconnect (a "reconnecting" state with a delay), oldest first.
WAITING = "() => window.events.filter((e) => e[0] === 'state' && e[2].delay !== undefined).map((e) => e.slice(1))"


async def page_with_storage(browser: Browser, stand_in: StandIn) -> Page:
    """An empty page from the stand-in's own http origin (about:blank may not use sessionStorage).

    A loopback origin, like the server's: Chromium lets no page of a public origin reach a loopback server.
    """
    page = await browser.new_page()
    await page.goto(stand_in.http_url)
    return page


async def stored_position(page: Page, url: str, recipient: str) -> str | None:
    return await page.evaluate(f"(args) => sessionStorage.getItem(({STORAGE_KEY})(args))", [url, recipient])


async def capturing_client(page: Page, url: str, ids: list[str]) -> None:
    """Load notify-client.js into ``page`` and start a client whose callbacks fill ``window.events``."""
    await page.add_script_tag(path=CLIENT_FILE)
    await page.evaluate(CAPTURING_CLIENT, [url, ids])


async def events(page: Page, kind: str) -> list:
    return await page.evaluate("(kind) => window.events.filter((event) => event[0] === kind)", kind)


async def wait_for_events(page: Page, kind: str, count: int) -> list:
    """The events of ``kind`` once there are at least ``count`` of them."""
    await page.wait_for_function(
        "([kind, count]) => window.events.filter((event) => event[0] === kind).length >= count", arg=[kind, count]
    )
    return await events(page, kind)


class StandIn:
    """A stand-in WebSocket server for the client's own tests: it greets like the real one, then the test plays it.

    The real server cannot be made to close with 4008 or 4012 on demand, nor to send each v2 frame when a
    test wants it; the client's handling of those is checked here, the real server's in the other tests.
    """

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[ServerConnection] = asyncio.Queue()
        self.url = self.http_url = ""

    def blank_page(self, connection: ServerConnection, request: Request) -> Response | None:
        """Plain HTTP requests get an empty page: a document of this server's origin."""
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        response = connection.respond(HTTPStatus.OK, "<!DOCTYPE html><title>stand-in</title>\n")
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "text/html; charset=utf-8"
        return response

    async def handler(self, ws: ServerConnection) -> None:
        await ws.send(GREETING)
        await self.accepted.put(ws)
        await ws.wait_closed()

    async def accept(self, seconds: float = 10) -> ServerConnection:
        """The next connection a client opened."""
        return await asyncio.wait_for(self.accepted.get(), seconds)


async def next_frame(ws: ServerConnection, seconds: float = 10) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), seconds))


async def play(ws: ServerConnection, *frames: dict) -> None:
    for frame in frames:
        await ws.send(json.dumps(frame))


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    server = StandIn()
    async with serve(server.handler, "127.0.0.1", 0, process_request=server.blank_page) as listening:
        port = listening.sockets[0].getsockname()[1]
        server.url, server.http_url = f"ws://127.0.0.1:{port}/", f"http://127.0.0.1:{port}/"
        yield server


def registered(recipient: str, position: str | None, recovered: bool | None) -> dict:
    return {"type": "registered", "recipient_uuid": recipient, "position": position, "recovered": recovered}


def message(recipient: str | None, text: str, position: str | None, *, replayed: bool = False) -> dict:
    frame = {"type": "message", "recipient_uuid": recipient, "message": text, "position": position}
    return {**frame, "replayed": True} if replayed else frame


@pytest.mark.parametrize("storage", [True, False], ids=["session-storage", "about-blank-without-storage"])
async def test_the_client_registers_with_v2_frames_and_resumes_with_since_after_a_reconnect(
    browser: Browser, stand_in: StandIn, storage: bool
) -> None:
    """Positions live in memory, and in sessionStorage where the page may use it (about:blank may not)."""
    page = await page_with_storage(browser, stand_in) if storage else await browser.new_page()
    await capturing_client(page, stand_in.url, ["alpha", "beta"])
    first = await stand_in.accept()
    assert await next_frame(first) == {"recipient_uuid": "alpha", "message": "connected", "v": 2}
    assert await next_frame(first) == {"recipient_uuid": "beta", "message": "connected", "v": 2}
    await play(
        first,
        registered("alpha", "e1:4", None),
        registered("beta", None, None),
        message("alpha", "pending one", "e1:4", replayed=True),
        message("beta", "live one", "e1:9"),
    )
    received = await wait_for_events(page, "message", 2)
    assert [event[1:] for event in received] == [
        ["pending one", {"id": "alpha", "position": "e1:4", "replayed": True}],
        ["live one", {"id": "beta", "position": "e1:9", "replayed": False}],
    ]
    await first.close(code=4012, reason="server restarting")

    second = await stand_in.accept()
    assert await next_frame(second) == {"recipient_uuid": "alpha", "message": "connected", "v": 2, "since": "e1:4"}
    assert await next_frame(second) == {"recipient_uuid": "beta", "message": "connected", "v": 2, "since": "e1:9"}
    await page.evaluate("window.client.register('gamma')")
    assert await next_frame(second) == {"recipient_uuid": "gamma", "message": "connected", "v": 2}
    await play(
        second,
        registered("alpha", "e1:5", True),
        message("alpha", "missed", "e1:5", replayed=True),
        registered("beta", "e1:9", True),
        registered("gamma", "e1:2", None),
    )
    received = await wait_for_events(page, "message", 3)
    assert received[2][1:] == ["missed", {"id": "alpha", "position": "e1:5", "replayed": True}]
    assert await events(page, "gap") == []
    if storage:
        # recovered: null sets the position to the newest; true keeps what the replay brought.
        stored = {
            recipient: await stored_position(page, stand_in.url, recipient) for recipient in ("alpha", "beta", "gamma")
        }
        assert stored == {"alpha": "e1:5", "beta": "e1:9", "gamma": "e1:2"}
    else:
        with pytest.raises(PlaywrightError, match="sessionStorage"):
            await page.evaluate("sessionStorage.length")
    await second.close(code=4012)
    third = await stand_in.accept()
    assert [await next_frame(third) for _ in range(3)] == [
        {"recipient_uuid": "alpha", "message": "connected", "v": 2, "since": "e1:5"},
        {"recipient_uuid": "beta", "message": "connected", "v": 2, "since": "e1:9"},
        {"recipient_uuid": "gamma", "message": "connected", "v": 2, "since": "e1:2"},
    ]
    await page.evaluate("window.client.close()")


async def test_the_client_reports_gaps_and_refusals_and_passes_broadcasts_and_other_frames_as_text(
    browser: Browser, stand_in: StandIn
) -> None:
    page = await page_with_storage(browser, stand_in)
    await capturing_client(page, stand_in.url, ["one", "two", "three"])
    ws = await stand_in.accept()
    for _ in range(3):
        await next_frame(ws)
    unknown = {"type": "something-new", "recipient_uuid": "one"}
    await play(
        ws,
        message(None, "to everyone", None),  # a broadcast may come before the replies (joined with the first id)
        registered("one", "e2:7", False),
        registered("two", None, False),
        {"type": "refused", "recipient_uuid": "three", "code": "limit", "reason": "already 2 ids registered"},
        {"type": "sent", "recipient_uuid": "one", "outcome": "live", "code": None},
        unknown,
    )
    await ws.send("raw text")
    received = await wait_for_events(page, "message", 3)
    assert [event[1:] for event in received] == [
        ["to everyone", {"id": None, "position": None, "replayed": False}],
        [json.dumps(unknown), {"id": None, "position": None, "replayed": False}],
        ["raw text", {"id": None, "position": None, "replayed": False}],
    ]
    assert await events(page, "gap") == [["gap", "one"], ["gap", "two"]]
    assert await events(page, "refused") == [["refused", "three", "limit"]]
    # After a gap the position is the server's newest (null: none is kept).
    assert [await stored_position(page, stand_in.url, recipient) for recipient in ("one", "two")] == ["e2:7", None]
    await page.evaluate("window.client.close()")


@pytest.mark.parametrize(
    ("code", "first", "second"),
    [
        pytest.param(4012, (0, 1000), (0, 1000), id="4012-restarting-soon"),
        pytest.param(4013, (3000, 6000), (6000, 12000), id="4013-try-later-seconds"),
        pytest.param(4008, (3000, 6000), (6000, 12000), id="4008-limit-seconds"),
    ],
)
async def test_the_reconnect_delay_follows_the_close_code(
    browser: Browser, stand_in: StandIn, code: int, first: tuple[int, int], second: tuple[int, int]
) -> None:
    """4012: within a second, again and again; 4008 and 4013: seconds, doubling. Other codes: the backoff above."""
    page = await browser.new_page()
    await capturing_client(page, stand_in.url, ["timed"])
    announced = []  # [time, delay] of each "reconnecting" with a delay
    for expected in (first, second):
        ws = await stand_in.accept(seconds=expected[1] / 1000 + 10)
        await next_frame(ws)  # the registration
        await ws.close(code=code)
        await page.wait_for_function(
            "(count) => window.events.filter((e) => e[0] === 'state' && e[2].delay !== undefined).length > count",
            arg=len(announced),
        )
        state, detail, at = (await page.evaluate(WAITING))[-1]
        assert (state, detail["code"]) == ("reconnecting", code)
        assert expected[0] <= detail["delay"] < expected[1], detail
        announced.append((at, detail["delay"]))
    again = await stand_in.accept(seconds=second[1] / 1000 + 10)
    await next_frame(again)  # registered when the page saw it open (the same task sets "connected")
    connected = [at for _, state, _, at in await events(page, "state") if state == "connected"]
    assert len(connected) == 3
    for (at, delay), reconnected in zip(announced, connected[1:], strict=True):
        assert reconnected - at >= delay - 50  # no sooner than announced
    await page.evaluate("window.client.close()")
    await again.close()


async def test_against_a_v1_only_server_the_client_passes_every_frame_as_text(
    browser: Browser, old_server: str
) -> None:
    """No reply to its v2 registrations: raw text, even a notification that looks like a v2 frame."""
    page = await browser.new_page()
    await capturing_client(page, old_server, ["field-id"])
    await page.wait_for_function("window.client.state === 'connected'")
    lookalike = json.dumps(message("field-id", "not a v2 frame", "e9:9"))
    for attempt in itertools.count(1):  # the old server answers nothing: probes prove the registration
        await send_once(old_server, "field-id", f"probe {attempt}")
        try:
            await page.wait_for_function(
                "(probe) => window.events.some((e) => e[0] === 'message' && e[1] === probe)",
                arg=f"probe {attempt}",
                timeout=1000,
            )
            break
        except PlaywrightTimeoutError:
            assert attempt < 10, "the client never received what was sent to it"
    await send_once(old_server, "field-id", lookalike)
    await send_once(old_server, "field-id", json.dumps(registered("field-id", "e9:9", False)))
    received = await wait_for_events(page, "message", attempt + 2)
    assert [event[1:] for event in received[-2:]] == [
        [lookalike, {"id": None, "position": None, "replayed": False}],
        [json.dumps(registered("field-id", "e9:9", False)), {"id": None, "position": None, "replayed": False}],
    ]
    assert await events(page, "gap") == []
    await page.evaluate("window.client.close()")


async def test_what_was_sent_while_the_page_was_away_is_shown_marked_replayed(browser: Browser, daphne: Daphne) -> None:
    """Away (another page in the tab), then back: the positions in sessionStorage resume; live ones carry no badge."""
    page = await open_example(browser, f"{daphne.http_url}/example/#away-and-back")
    await confirm_receiving(page, "away-and-back")
    await send_once(daphne.url, "away-and-back", "before leaving")
    texts, _ = notifications(page)
    await expect(texts.first).to_have_text("before leaving")
    await page.goto(f"{daphne.http_url}/static/notifications/notify-client.js")  # same origin, same tab
    for text in ("while away 1", "while away 2"):
        await send_once(daphne.url, "away-and-back", text)
    await page.goto(f"{daphne.http_url}/example/#away-and-back")
    await expect(texts).to_have_text(["while away 2", "while away 1"])  # newest first
    items = page.locator("#notifications li")
    await expect(items).to_have_class(["replayed", "replayed"])
    await expect(page.locator("#notifications li .badge")).to_have_text(["replayed", "replayed"])
    await send_once(daphne.url, "away-and-back", "live again")
    await expect(texts.first).to_have_text("live again")
    await expect(items.first).not_to_have_class(re.compile("replayed"))
    await expect(items.first.locator(".badge")).to_have_count(0)
    await expect(page.locator("#notifications li.gap")).to_have_count(0)


async def test_a_position_the_server_cannot_resume_from_shows_a_gap_line_and_the_page_keeps_receiving(
    browser: Browser, daphne: Daphne
) -> None:
    """A reload that holds a position of another epoch (a server that lost its history): recovered false."""
    context = await browser.new_context()
    # Before the page's scripts, once per tab: a stored position that this server never made.
    await context.add_init_script(
        f"""if (!sessionStorage.getItem("seeded")) {{
            sessionStorage.setItem("seeded", "1");
            sessionStorage.setItem(({STORAGE_KEY})([{json.dumps(daphne.url)}, "gap-id"]), "another-epoch:41");
        }}"""
    )
    page = await context.new_page()
    await page.goto(f"{daphne.http_url}/example/#gap-id")
    gap = page.locator("#notifications li.gap")
    await expect(gap).to_have_text(re.compile("Some notifications for gap-id could not be recovered; reload the data$"))
    assert await stored_position(page, daphne.url, "gap-id") != "another-epoch:41"
    await confirm_receiving(page, "gap-id")
    await expect(gap).to_have_count(1)
    await page.reload()  # resumes from a position the server made: no gap
    await expect(page.locator("#state")).to_have_text("connected")
    await confirm_receiving(page, "gap-id")
    await expect(gap).to_have_count(0)
    await context.close()


async def test_registrations_over_the_servers_limit_are_refused_with_the_code_limit(
    browser: Browser, daphne_factory: Callable[..., Daphne]
) -> None:
    daphne = daphne_factory({"NOTIFY_MAX_IDS_PER_CONNECTION": "2"})
    page = await browser.new_page()
    await capturing_client(page, daphne.url, ["kept-1", "kept-2", "one-too-many"])
    assert await wait_for_events(page, "refused", 1) == [["refused", "one-too-many", "limit"]]
    for recipient in ("kept-1", "kept-2"):
        await send_once(daphne.url, recipient, f"to {recipient}")
    received = await wait_for_events(page, "message", 2)
    assert sorted((event[1], event[2]["id"]) for event in received) == [
        ("to kept-1", "kept-1"),
        ("to kept-2", "kept-2"),
    ]
    await page.evaluate("window.client.close()")


async def test_a_registration_while_redis_is_unreachable_makes_the_client_back_off_for_seconds(
    browser: Browser, daphne_factory: Callable[..., Daphne], own_redis: RedisServer
) -> None:
    """The server closes with 4013 (cannot register now): the next try comes seconds later, not at once."""
    daphne = daphne_factory({"REDIS_URL": own_redis.url})
    page = await browser.new_page()
    await capturing_client(page, daphne.url, [])
    await page.wait_for_function("window.client.state === 'connected'")
    own_redis.stop()
    await page.evaluate("window.client.register('waiting')")
    await page.wait_for_function(
        "window.events.some((e) => e[0] === 'state' && e[2].delay !== undefined)", timeout=30_000
    )
    state, detail, _ = (await page.evaluate(WAITING))[0]
    assert (state, detail["code"]) == ("reconnecting", 4013)
    assert detail["delay"] >= 3000
    await page.evaluate("window.client.close()")


NUMBERED = re.compile(r"n(\d+)")


class NumberedSender:
    """Sends ``n1``, ``n2``, ... to one id at a steady pace, through the server the test points it at.

    Each is a v2 send frame, so the server's ``sent`` reply says it was taken (live or pending) before the
    next one: :attr:`count` is the number of the last one taken.
    """

    def __init__(self, recipient: str, server: Daphne, *, interval: float = 0.05) -> None:
        self.recipient = recipient
        self.server = server
        self.interval = interval
        self.count = 0
        self.lock = asyncio.Lock()
        self.ws: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopping = False

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        while not self.stopping:
            async with self.lock:
                if self.ws is None:
                    self.ws = await open_client(self.server.url)
                number = self.count + 1
                frame = {"recipient_uuid": self.recipient, "message": f"n{number}", "v": 2}
                await self.ws.send(json.dumps(frame))
                reply = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
                assert reply.get("type") == "sent" and reply.get("outcome") in ("live", "pending"), reply
                self.count = number
            await asyncio.sleep(self.interval)  # the stream's pace, not a wait for anything

    def taken(self, count: int) -> bool:
        assert self.task is not None
        if self.task.done():
            self.task.result()  # its failure, if it failed
            raise AssertionError("the sender stopped")
        return self.count >= count

    async def wait_for(self, count: int, seconds: float = 20) -> None:
        await wait_until(lambda: self.taken(count), seconds=seconds)

    async def point_at(self, server: Daphne) -> None:
        """From the next notification on, send through ``server`` (once the one in flight is taken)."""
        async with self.lock:
            if self.ws is not None:
                await self.ws.close()
            self.ws, self.server = None, server

    async def stop(self) -> int:
        self.stopping = True
        assert self.task is not None
        await asyncio.wait_for(self.task, 20)
        if self.ws is not None:
            await self.ws.close()
        return self.count


SHOWN = "() => JSON.parse(sessionStorage.getItem('shown') || '[]')"


async def wait_until_shown(page: Page, text: str) -> None:
    await page.wait_for_function(f"(text) => ({SHOWN})().some((item) => item.text === text)", arg=text, timeout=20_000)


async def test_on_redis_the_page_misses_nothing_while_the_servers_restart_one_after_the_other_and_it_reloads(
    browser: Browser, daphne_factory: Callable[..., Daphne], redis_url: str, redis_prefix: str
) -> None:
    """Two processes on one Redis, one tab on each, a steady stream to the tabs' id; each process is restarted
    in turn (the sender going through the other) and both tabs reload after each restart. Every tab shows
    every notification once, in order; what was sent while its process was down is marked replayed."""
    env = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix, "NOTIFY_HISTORY_SIZE": "1000"}
    servers = {"a": daphne_factory(env), "b": daphne_factory(env)}
    recipient = "through-restarts"
    context = await browser.new_context()
    await context.add_init_script(RECORD_SHOWN)
    tabs = {}
    for name, server in servers.items():
        tab = await context.new_page()
        await tab.goto(f"{server.http_url}/example/#{recipient}")
        await expect(tab.locator("#state")).to_have_text("connected")
        tabs[name] = tab
    for tab in tabs.values():
        await confirm_receiving(tab, recipient)

    sender = NumberedSender(recipient, servers["b"])
    sender.start()
    await sender.wait_for(10)
    live_until = sender.count
    for tab in tabs.values():
        await wait_until_shown(tab, f"n{live_until}")

    down: dict[str, range] = {}
    for name, other in (("a", "b"), ("b", "a")):
        await sender.point_at(servers[other])
        stopped = servers[name]
        await asyncio.to_thread(stopped.stop)
        tab = tabs[name]
        await expect(tab.locator("#state")).to_have_text("reconnecting")
        first_missed = sender.count + 2  # the one in flight as the process stopped may have reached the tab
        await sender.wait_for(first_missed + 5)
        down[name] = range(first_missed, sender.count + 1)  # sent while the tab had no server
        servers[name] = daphne_factory(env, port=stopped.port)
        await expect(tab.locator("#state")).to_have_text("connected", timeout=30_000)
        await wait_until_shown(tab, f"n{down[name][-1]}")
        # Shown in the document that was open all along, with the badge.
        for number in (down[name][0], down[name][-1]):
            item = tab.locator("#notifications li").filter(has=tab.get_by_text(f"n{number}", exact=True))
            await expect(item).to_have_class(re.compile(r"\breplayed\b"))
            await expect(item.locator(".badge")).to_have_text("replayed")
        await sender.wait_for(sender.count + 5)
        for each in tabs.values():
            await each.reload()
            await expect(each.locator("#state")).to_have_text("connected", timeout=30_000)
    await sender.wait_for(sender.count + 10)
    last = await sender.stop()

    for name, tab in tabs.items():
        await wait_until_shown(tab, f"n{last}")
        shown = [
            (int(m[1]), item["replayed"])
            for item in await tab.evaluate(SHOWN)
            if (m := NUMBERED.fullmatch(item["text"]))
        ]
        numbers = [number for number, _ in shown]
        assert numbers == list(range(1, last + 1)), (
            f"the tab on {name}: missing {sorted(set(range(1, last + 1)) - set(numbers))}, "
            f"twice {sorted({n for n in numbers if numbers.count(n) > 1})}, order {numbers}"
        )
        replayed = {number for number, was_replayed in shown if was_replayed}
        assert set(down[name]) <= replayed, f"the tab on {name}: not marked {sorted(set(down[name]) - replayed)}"
        assert not replayed & set(range(1, live_until + 1)), "live ones marked replayed"
    await context.close()

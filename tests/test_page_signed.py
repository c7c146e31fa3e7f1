"""The example page and notify-client.js with signed registrations, in a real browser against real daphne processes.

In signed mode (``NOTIFY_REGISTRATION=signed``) the page receives as the id the
server gave its browser session, with the token that came with the page, and
asks ``/example/token/`` for a fresh one before every later registration.
Notifications come from ``manage.py notify`` as an operator runs it (with the
servers' ``DJANGO_SECRET_KEY``, which every sender mode honours) and from
Python clients of the field. The test process shares the servers' key
(tests/settings.py), so it checks their tokens and makes expired ones.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.core import signing
from django.test import Client
from playwright.async_api import Browser, Page, Request, Response, WebSocket, expect

from harness.clients import open_client, send_once, send_v2
from harness.servers import Daphne, Python, free_port, wait_until
from notifications.tokens import SALT, TOKEN_EXPIRED, check_registration_token, registration_token
from notifications.views import EXAMPLE_SETTINGS
from tests.test_page import CLIENT_FILE, EXAMPLE_FILE, UUID

SIGNED = {"NOTIFY_REGISTRATION": "signed"}
TOKEN_PATH = "/example/token/"
SETTINGS_ELEMENT = re.compile(
    rf'<script id="{EXAMPLE_SETTINGS}" type="application/json">(.*?)</script>\n</head>'.encode(), re.S
)


class Watched:
    """A page and what its browser did: every WebSocket with its frames, the token requests, the console.

    Recorded by the browser (Playwright's events), not by the page's code: the
    registrations the client really sent, and the tokens the view really gave.
    """

    def __init__(self, page: Page) -> None:
        self.page = page
        self.sockets: list[list[tuple[str, str]]] = []  # per WebSocket, in order: ("sent" | "received", frame)
        self.token_requests: list[Request] = []
        self.token_responses: list[Response] = []
        self.console: list[str] = []
        page.on("websocket", self.opened)
        page.on("request", lambda request: self.token_requests.append(request) if is_token(request.url) else None)
        page.on("response", lambda response: self.token_responses.append(response) if is_token(response.url) else None)
        page.on("console", lambda message: self.console.append(message.text))

    def opened(self, ws: WebSocket) -> None:
        frames: list[tuple[str, str]] = []
        self.sockets.append(frames)
        ws.on("framesent", lambda payload: frames.append(("sent", str(payload))))
        ws.on("framereceived", lambda payload: frames.append(("received", str(payload))))

    def registrations(self, socket: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The registration frames the client sent on ``socket``."""
        return [f for f in objects(socket, "sent") if f.get("message") == "connected"]

    def replies(self, socket: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The server's answers to registrations on ``socket``."""
        return [f for f in objects(socket, "received") if f.get("type") in ("registered", "refused")]

    def registered(self) -> list[list[tuple[str, str]]]:
        """The sockets on which an id was registered, oldest first."""
        return [s for s in self.sockets if any(r["type"] == "registered" for r in self.replies(s))]

    async def wait_registered(self, count: int, seconds: float = 30) -> list[tuple[str, str]]:
        """The ``count``-th socket on which an id was registered, once there is one."""
        await wait_until(lambda: len(self.registered()) >= count, seconds=seconds)
        return self.registered()[count - 1]

    async def tokens_given(self) -> list[str]:
        """The tokens /example/token/ gave this page, in order."""
        return [(await response.json())["token"] for response in self.token_responses]


def is_token(url: str) -> bool:
    return TOKEN_PATH in url


def objects(socket: list[tuple[str, str]], direction: str) -> list[dict[str, Any]]:
    parsed = []
    for way, data in socket:
        try:
            value = json.loads(data)
        except ValueError:
            continue
        if way == direction and isinstance(value, dict):
            parsed.append(value)
    return parsed


async def open_watched(browser: Browser, url: str) -> Watched:
    """``url`` in a new browser context (cookies of its own: a session of its own), once it is connected."""
    context = await browser.new_context(viewport={"width": 820, "height": 560})
    page = await context.new_page()
    watched = Watched(page)
    await page.goto(url)
    await expect(page.locator("#state")).to_have_text("connected", timeout=20_000)
    return watched


async def page_id(page: Page) -> str:
    """The id the page receives as (shown on it)."""
    await expect(page.locator("#my-id")).to_have_text(UUID)
    return await page.locator("#my-id").inner_text()


async def notify(manage: Python, server: Daphne, database_url: str, recipient: str, message: str) -> None:
    """``python manage.py notify`` beside the server, with the server's key (what its sender modes honour)."""
    env = {
        "NOTIFY_SERVER_URL": server.url,
        "REDIS_URL": None,
        "DATABASE_URL": database_url,
        "DJANGO_DEBUG": None,
        "DJANGO_SECRET_KEY": server.env["DJANGO_SECRET_KEY"],
    }
    done = await asyncio.to_thread(manage, "notify", recipient, message, env=env)
    assert done.returncode == 0, done.stderr


def texts(page: Page) -> Any:
    return page.locator("#notifications li .text")


def expired(recipient: str, token: str) -> bool:
    """Whether ``token`` no longer registers ``recipient`` because it expired (and for no other reason)."""
    refused = check_registration_token(recipient, token)
    assert refused is None or refused[0] == TOKEN_EXPIRED, refused
    return refused is not None


def expired_token(recipient: str) -> str:
    """A token the servers made for ``recipient`` that expired a minute ago."""
    return signing.dumps(int(time.time()) - 60, salt=f"{SALT}:{recipient}")


async def assert_never_leaked(watched: Watched, server: Daphne, tokens: list[str]) -> None:
    """None of ``tokens`` is on the page (text or markup), in its sessionStorage, its console or the server's log."""
    page = watched.page
    assert tokens
    shown = await page.evaluate("document.documentElement.outerHTML")
    stored = await page.evaluate(
        "() => Object.keys(sessionStorage).map((key) => key + '=' + sessionStorage.getItem(key)).join('\\n')"
    )
    assert stored  # positions are kept there: the check looks at something
    log = server.log()
    for token in tokens:
        assert token not in shown
        assert token not in stored
        assert not any(token in line for line in watched.console)
        assert token not in log


async def test_in_signed_mode_the_page_receives_as_its_sessions_id_never_one_from_the_address(
    browser: Browser, daphne_factory: Callable[..., Daphne], manage: Python, database_url: str
) -> None:
    server = daphne_factory(SIGNED)
    watched = await open_watched(browser, f"{server.http_url}/example/#chosen-by-the-address")
    page = watched.page
    recipient = await page_id(page)
    assert page.url == f"{server.http_url}/example/#{recipient}"
    await expect(page.locator("#id-note")).to_have_text(re.compile("given by this server to your browser session"))
    await expect(page.locator("#try-command")).to_have_text(f"python manage.py notify {recipient} hello")
    socket = await watched.wait_registered(1)
    [registration] = watched.registrations(socket)
    assert registration["recipient_uuid"] == recipient
    assert check_registration_token(recipient, registration["token"]) is None  # the token that came with the page
    assert watched.token_requests == []  # the first registration needed no request for one
    # Nobody registered the address's id: a notification to it waits for a registration.
    sender = await open_client(server.url)
    assert (await send_v2(sender, "chosen-by-the-address", "to the address"))["outcome"] == "pending"
    await sender.close()

    await notify(manage, server, database_url, recipient, "hello")
    await expect(texts(page).first).to_have_text("hello")
    await expect(page.locator("#total")).to_have_text("1")

    # The same session keeps its id across reloads and in another tab; another browser gets another one.
    await page.reload()
    await expect(page.locator("#my-id")).to_have_text(recipient)
    other_tab = await page.context.new_page()
    await other_tab.goto(f"{server.http_url}/example/")
    await expect(other_tab.locator("#my-id")).to_have_text(recipient)
    other = await open_watched(browser, f"{server.http_url}/example/")
    assert await page_id(other.page) != recipient
    await assert_never_leaked(watched, server, [registration["token"]])


async def test_after_a_restart_the_page_registers_again_with_a_fresh_token_from_the_view(
    browser: Browser, daphne_factory: Callable[..., Daphne], manage: Python, database_url: str
) -> None:
    first = daphne_factory(SIGNED)
    watched = await open_watched(browser, f"{first.http_url}/example/")
    page = watched.page
    recipient = await page_id(page)
    before = await watched.wait_registered(1)
    assert watched.token_requests == []
    await page.evaluate("window.sameDocument = true")

    await asyncio.to_thread(first.stop)
    await expect(page.locator("#state")).to_have_text("reconnecting")
    second = daphne_factory(SIGNED, port=first.port)
    after = await watched.wait_registered(2)
    await expect(page.locator("#state")).to_have_text("connected")

    # getToken asked the view, for this id only (once per connection: one may have opened while the
    # first server was draining), and the new registration carried the last token it gave.
    assert watched.token_requests
    assert {request.url for request in watched.token_requests} == {f"{second.http_url}{TOKEN_PATH}?id={recipient}"}
    fresh = (await watched.tokens_given())[-1]
    [registration] = watched.registrations(after)
    assert (registration["recipient_uuid"], registration["token"]) == (recipient, fresh)
    assert "since" in registration  # and it resumed
    assert [reply["type"] for reply in watched.replies(after)] == ["registered"]
    await notify(manage, second, database_url, recipient, "after the restart")
    await expect(texts(page).first).to_have_text("after the restart")
    assert await page.evaluate("window.sameDocument") is True
    await expect(page.locator("#notifications li.refused")).to_have_count(0)
    await assert_never_leaked(watched, second, [watched.registrations(before)[0]["token"], fresh])


async def test_an_expired_token_keeps_receiving_and_the_reconnect_takes_a_fresh_one(
    browser: Browser, daphne_factory: Callable[..., Daphne], manage: Python, database_url: str
) -> None:
    """Tokens good for 2 s: a registration outlives its token; the next one asks getToken, never the stale one."""
    short = {**SIGNED, "NOTIFY_TOKEN_MAX_AGE": "2"}
    first = daphne_factory(short)
    watched = await open_watched(browser, f"{first.http_url}/example/")
    page = watched.page
    recipient = await page_id(page)
    embedded = watched.registrations(await watched.wait_registered(1))[0]["token"]
    await wait_until(lambda: expired(recipient, embedded), seconds=10)

    await notify(manage, first, database_url, recipient, "after the token expired")  # still registered
    await expect(texts(page).first).to_have_text("after the token expired")

    await asyncio.to_thread(first.stop)
    await expect(page.locator("#state")).to_have_text("reconnecting")
    second = daphne_factory(short, port=first.port)
    after = await watched.wait_registered(2)
    [registration] = watched.registrations(after)
    assert registration["token"] != embedded
    assert registration["token"] in await watched.tokens_given()
    assert [reply["type"] for reply in watched.replies(after)] == ["registered"]
    await notify(manage, second, database_url, recipient, "after the reconnect")
    await expect(texts(page).first).to_have_text("after the reconnect")
    await expect(page.locator("#notifications li.refused")).to_have_count(0)


async def test_a_token_that_expired_before_the_first_registration_is_renewed_once_through_get_token(
    browser: Browser, daphne_factory: Callable[..., Daphne], manage: Python, database_url: str
) -> None:
    """The page loaded while its notification server was down: the token that came with it expired unused.

    The server refuses it with token-expired; the client asks getToken and registers again, and the page
    shows no refusal.
    """
    short = {**SIGNED, "NOTIFY_TOKEN_MAX_AGE": "2"}
    pages = daphne_factory(short)  # serves the page and its tokens
    port = free_port()  # the notification server, not started yet
    page = await browser.new_page()
    watched = Watched(page)
    served = await page.goto(f"{pages.http_url}/example/?server=ws://127.0.0.1:{port}/")
    assert served is not None
    embedded = page_settings(await served.body())["token"]  # the token that came with the page
    await expect(page.locator("#state")).to_have_text("reconnecting")
    recipient = await page_id(page)
    await wait_until(lambda: expired(recipient, embedded), seconds=10)

    notifications = daphne_factory(short, port=port)
    socket = await watched.wait_registered(1)
    await expect(page.locator("#state")).to_have_text("connected")
    first, second = watched.registrations(socket)
    assert first["token"] == embedded
    assert [(r["type"], r.get("code")) for r in watched.replies(socket)] == [
        ("refused", TOKEN_EXPIRED),
        ("registered", None),
    ]
    assert [await watched.tokens_given()] == [[second["token"]]]  # asked once, and used what it gave
    await notify(manage, notifications, database_url, recipient, "registered after all")
    await expect(texts(page).first).to_have_text("registered after all")
    await expect(page.locator("#notifications li.refused")).to_have_count(0)


# notify-client.js alone, against a signed server: the application's getToken is the test's.

CLIENT_WITH_TOKENS = """([url, id, given, answers, minDelay]) => {
    window.events = [];
    window.asked = [];
    window.client = new NotifyClient(url, {
        ids: given === null ? [id] : [{ id, token: given }],
        minDelay,
        getToken: (asked) => {
            window.asked.push(asked);
            const answer = answers[Math.min(window.asked.length, answers.length) - 1];
            return answer === null ? Promise.reject(new Error("the token view failed")) : Promise.resolve(answer);
        },
        onMessage: (text, info) => window.events.push(["message", text, info.id]),
        onRefused: (refused, code) => window.events.push(["refused", refused, code]),
    });
}"""


async def client_with_tokens(
    page: Page, url: str, recipient: str, given: str | None, answers: list[str | None], *, min_delay: int = 500
) -> None:
    await page.add_script_tag(path=CLIENT_FILE)
    await page.evaluate(CLIENT_WITH_TOKENS, [url, recipient, given, answers, min_delay])


async def test_the_client_asks_get_token_once_after_token_expired_then_gives_up_with_on_refused(
    browser: Browser, daphne_factory: Callable[..., Daphne]
) -> None:
    server = daphne_factory(SIGNED)
    page = await browser.new_page()
    watched = Watched(page)
    await client_with_tokens(page, server.url, "stale", expired_token("stale"), [expired_token("stale")])
    await page.wait_for_function("window.events.length > 0")
    assert await page.evaluate("window.events") == [["refused", "stale", TOKEN_EXPIRED]]
    # The connection still registers other ids: the next one's reply comes after anything more for "stale".
    await page.evaluate("(token) => window.client.register('fresh', token)", registration_token("fresh"))
    await wait_until(lambda: any(r["type"] == "registered" for r in watched.replies(watched.sockets[0])), seconds=10)
    assert await page.evaluate("window.asked") == ["stale"]
    assert [r["recipient_uuid"] for r in watched.registrations(watched.sockets[0])] == ["stale", "stale", "fresh"]
    sender = await open_client(server.url)
    assert (await send_v2(sender, "stale", "for nobody yet"))["outcome"] == "pending"
    await sender.close()
    await page.evaluate("window.client.close()")


async def test_when_get_token_fails_the_client_says_so_and_asks_again_while_connected(
    browser: Browser, daphne_factory: Callable[..., Daphne]
) -> None:
    server = daphne_factory(SIGNED)
    page = await browser.new_page()
    watched = Watched(page)
    answers = [None, None, registration_token("patient")]  # None: getToken rejects
    await client_with_tokens(page, server.url, "patient", None, answers, min_delay=100)
    socket = await watched.wait_registered(1)
    assert await page.evaluate("window.asked") == ["patient"] * 3
    [registration] = watched.registrations(socket)  # nothing sent for the failed ones
    assert registration["token"] == answers[2]
    sender = await open_client(server.url)
    assert (await send_v2(sender, "patient", "after two failures"))["outcome"] == "live"
    await page.wait_for_function("window.events.some((e) => e[0] === 'message')")
    assert await page.evaluate("window.events") == [
        ["refused", "patient", "token-unavailable"],  # said once, not at every retry
        ["message", "after two failures", "patient"],
    ]
    await sender.close()
    await page.evaluate("window.client.close()")


async def test_in_signed_mode_a_script_in_a_notification_or_the_address_is_shown_as_text(
    browser: Browser, daphne_factory: Callable[..., Daphne]
) -> None:
    server = daphne_factory(SIGNED)
    hostile = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    watched = await open_watched(browser, f"{server.http_url}/example/#{hostile}")
    page = watched.page
    recipient = await page_id(page)
    socket = await watched.wait_registered(1)
    await send_once(server.url, recipient, hostile)
    await expect(texts(page).first).to_have_text(hostile)
    await send_once(server.url, recipient, '"}</script><script>window.pwned = 3</script>')
    await expect(page.locator("#total")).to_have_text("2")
    assert await page.locator("img, #notifications script, dd script").count() == 0
    assert await page.evaluate("window.pwned") is None
    assert page.url.endswith(f"#{recipient}")
    await assert_never_leaked(watched, server, [watched.registrations(socket)[0]["token"]])


@pytest.mark.parametrize(
    ("registration", "senders"),
    [("signed", "key"), ("signed", "none"), ("open", "none")],
)
async def test_when_the_page_may_not_send_it_says_so_and_still_receives(
    browser: Browser,
    daphne_factory: Callable[..., Daphne],
    manage: Python,
    database_url: str,
    registration: str,
    senders: str,
) -> None:
    server = daphne_factory({"NOTIFY_REGISTRATION": registration, "NOTIFY_WS_SENDERS": senders})
    watched = await open_watched(browser, f"{server.http_url}/example/#from-the-address")
    page = watched.page
    note = page.locator("#send-off")
    await expect(note).to_be_visible()
    await expect(note).to_have_text(re.compile(rf"^This page cannot send: .*\(NOTIFY_WS_SENDERS={senders}\)"))
    await expect(page.locator("#send-form button")).to_be_disabled()  # connected, yet no sending
    if registration == "signed":
        recipient = await page_id(page)
    else:
        recipient = "from-the-address"  # open mode: the page is as it always was
        await expect(page.locator("#my-id")).to_have_text(recipient)
        await expect(page.locator("#id-note")).to_have_text("")
    await watched.wait_registered(1)
    await notify(manage, server, database_url, recipient, f"sent with {senders}")
    await expect(texts(page).first).to_have_text(f"sent with {senders}")


async def test_in_open_mode_with_anyone_sending_the_page_is_the_file_and_needs_no_token(
    browser: Browser, daphne: Daphne
) -> None:
    page = await browser.new_page()
    served = await page.request.get(f"{daphne.http_url}/example/")
    assert await served.body() == EXAMPLE_FILE.read_bytes()
    refused = await page.request.get(f"{daphne.http_url}{TOKEN_PATH}")
    assert refused.status == 404
    assert list(await refused.json()) == ["error"]
    watched = await open_watched(browser, f"{daphne.http_url}/example/#open-as-ever")
    await expect(watched.page.locator("#send-off")).to_be_hidden()
    [registration] = watched.registrations(await watched.wait_registered(1))
    assert registration == {"recipient_uuid": "open-as-ever", "message": "connected", "v": 2}
    assert watched.token_requests == []


# The token view itself, in this process: Django's test client, real sessions in the test database.


def page_settings(body: bytes) -> dict[str, Any]:
    found = SETTINGS_ELEMENT.search(body)
    assert found is not None, "no settings element before </head>"
    settings: dict[str, Any] = json.loads(found[1])
    return settings


def one_line_error(response: Any, status: int) -> str:
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"]
    return str(body["error"])


@pytest.mark.django_db
def test_the_token_view_gives_a_token_for_the_sessions_own_id_only(settings: Any) -> None:
    settings.NOTIFICATIONS_REGISTRATION = "signed"
    browser, other = Client(), Client()
    assert "open /example/ first" in one_line_error(browser.get(TOKEN_PATH), 403)  # no session, no id

    served = browser.get("/example/")
    assert served.status_code == 200 and "no-store" in served["Cache-Control"]
    given = page_settings(served.content)
    recipient = given["id"]
    assert UUID.fullmatch(recipient)
    assert given == {
        "registration": "signed",
        "senders": "anyone",
        "id": recipient,
        "token": given["token"],
        "tokenUrl": TOKEN_PATH,
    }
    assert check_registration_token(recipient, given["token"]) is None
    assert page_settings(browser.get("/example/").content)["id"] == recipient  # the session keeps its id

    for query in ("", f"?id={recipient}"):
        response = browser.get(TOKEN_PATH + query)
        assert response.status_code == 200 and "no-store" in response["Cache-Control"]
        body = response.json()
        assert body["recipient_uuid"] == recipient and set(body) == {"recipient_uuid", "token"}
        assert check_registration_token(recipient, body["token"]) is None
        assert check_registration_token("someone-else", body["token"]) is not None

    one_line_error(browser.get(f"{TOKEN_PATH}?id=someone-else"), 403)
    assert "open /example/ first" in one_line_error(other.get(f"{TOKEN_PATH}?id={recipient}"), 403)
    their = page_settings(other.get("/example/").content)["id"]
    assert their != recipient
    one_line_error(other.get(f"{TOKEN_PATH}?id={recipient}"), 403)
    assert other.get(TOKEN_PATH).json()["recipient_uuid"] == their
    assert browser.post(TOKEN_PATH).status_code == 405


@pytest.mark.django_db
def test_outside_signed_mode_the_token_view_refuses_and_the_page_holds_no_token(settings: Any) -> None:
    browser = Client()
    browser.get("/example/")
    assert "registrations are open" in one_line_error(browser.get(TOKEN_PATH), 404)
    assert browser.get("/example/").content == EXAMPLE_FILE.read_bytes()

    settings.NOTIFICATIONS_WS_SENDERS = "key"
    assert page_settings(browser.get("/example/").content) == {"registration": "open", "senders": "key"}
    one_line_error(browser.get(TOKEN_PATH), 404)
    assert "notifications.example_id" not in browser.session

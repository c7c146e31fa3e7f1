"""WebSocket clients that behave exactly as the clients in the field do."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from notifications.presence import aconnection_count
from notifications.protocol import GREETING
from tests.servers import eventually

TIMEOUT = 10.0


async def open_client(url: str, **kwargs: object) -> ClientConnection:
    """Connect and read the greeting, as every client does first."""
    ws = await connect(url, open_timeout=TIMEOUT, **kwargs)
    greeting = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert greeting == GREETING
    return ws


def frame(recipient: object, message: object) -> str:
    return json.dumps({"recipient_uuid": recipient, "message": message})


async def register(ws: ClientConnection, recipient: str) -> None:
    await ws.send(frame(recipient, "connected"))


async def send_once(url: str, recipient: str, message: object) -> None:
    """The short-lived sender of the field: connect, greet, send one frame, close."""
    ws = await open_client(url)
    await ws.send(frame(recipient, message))
    await ws.close()


PROBE_PREFIX = "probe:"


async def register_confirmed(ws: ClientConnection, recipient: str, seconds: float = TIMEOUT) -> None:
    """Register and wait until notifications for ``recipient`` really reach ``ws``.

    The protocol sends nothing back on registration, so the client proves it
    by sending itself probes until one arrives (each attempt bounded in time).
    """
    await register(ws, recipient)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    attempt = 0
    while loop.time() < deadline:
        attempt += 1
        token = f"{PROBE_PREFIX}{id(ws)}:{attempt}"
        await ws.send(frame(recipient, token))
        try:
            while True:
                data = await asyncio.wait_for(ws.recv(), 0.5)
                if data == token:
                    return
        except TimeoutError:
            continue
    raise TimeoutError(f"registration of {recipient!r} not effective after {seconds} s")


async def receive(ws: ClientConnection, seconds: float = TIMEOUT) -> str:
    """The next notification, skipping registration probes."""
    while True:
        data = await asyncio.wait_for(ws.recv(), seconds)
        if not (isinstance(data, str) and data.startswith(PROBE_PREFIX)):
            return data


async def receives_nothing(ws: ClientConnection, within: float = 0.5) -> bool:
    """True if no frame arrives within ``within`` seconds (the connection stays open)."""
    try:
        data = await receive(ws, within)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected frame: {data!r}")


async def registry_counts(recipient: str, count: int) -> None:
    """Wait until the registry holds ``count`` live connections for ``recipient`` (it writes in batches)."""

    async def counted() -> bool:
        return await aconnection_count(recipient) == count

    await eventually(counted, seconds=10)


def post_json(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST ``body`` to ``url``; the status and the decoded JSON answer (None if it is not JSON)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            status, data = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, data = exc.code, exc.read()
    try:
        return status, json.loads(data)
    except ValueError:
        return status, None


class AdminSession:
    """A browser's session with a real server's pages (the admin, the send view): cookies, CSRF, login form."""

    def __init__(self, base_url: str) -> None:
        import http.cookiejar
        import urllib.request

        self.base_url = base_url.rstrip("/")
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def _csrf_token(self) -> str:
        return next(cookie.value for cookie in self.cookies if cookie.name == "csrftoken")

    def get(self, path: str) -> tuple[int, str]:
        import urllib.error

        try:
            with self.opener.open(self.base_url + path, timeout=TIMEOUT) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def post(self, path: str, data: list[tuple[str, str]]) -> tuple[int, str]:
        import urllib.error
        import urllib.parse
        import urllib.request

        body = urllib.parse.urlencode([*data, ("csrfmiddlewaretoken", self._csrf_token())]).encode()
        request = urllib.request.Request(self.base_url + path, data=body, method="POST")
        try:
            with self.opener.open(request, timeout=TIMEOUT) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def log_in(
        self,
        username: str,
        password: str,
        *,
        login: str = "/admin/login/",
        then: str = "/admin/",
        shows: str = "Log out",
    ) -> None:
        """Log in through the form at ``login``; the page ``then`` that follows must show ``shows``."""
        self.get(login)  # sets the CSRF cookie
        status, page = self.post(
            f"{login}?next={then}", [("username", username), ("password", password), ("next", then)]
        )
        assert status == 200 and shows in page, f"login failed ({status})"

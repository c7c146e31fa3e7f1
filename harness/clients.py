"""WebSocket clients that behave exactly as the clients in the field do (the tests' and the benchmark's)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from notifications.protocol import GREETING, REGISTER_MESSAGE

TIMEOUT = 10.0
PROBE_PREFIX = "probe:"


async def open_client(url: str, *, seconds: float = TIMEOUT, **kwargs: Any) -> ClientConnection:
    """Connect and read the greeting, as every client does first (``kwargs`` go to ``connect``)."""
    ws = await connect(url, open_timeout=seconds, **kwargs)
    greeting = await asyncio.wait_for(ws.recv(), seconds)
    if greeting != GREETING:
        await ws.close()
        raise AssertionError(f"unexpected greeting {greeting!r}")
    return ws


def frame(recipient: object, message: object) -> str:
    """A client's text frame: ``message`` for ``recipient`` (``"connected"`` registers it)."""
    return json.dumps({"recipient_uuid": recipient, "message": message})


def is_probe(data: object) -> bool:
    """Whether a received frame is a registration probe of :func:`register_confirmed`, not a notification."""
    return isinstance(data, str) and data.startswith(PROBE_PREFIX)


async def register(ws: ClientConnection, recipient: str) -> None:
    await ws.send(frame(recipient, REGISTER_MESSAGE))


async def send_once(url: str, recipient: str, message: object) -> None:
    """The short-lived sender of the field: connect, greet, send one frame, close."""
    ws = await open_client(url)
    await ws.send(frame(recipient, message))
    await ws.close()


async def register_confirmed(
    ws: ClientConnection, recipient: str, seconds: float = TIMEOUT, *, attempt_seconds: float = 0.5
) -> None:
    """Register and wait until notifications for ``recipient`` really reach ``ws``.

    The protocol sends nothing back on registration, so the client proves it
    by sending itself probes until one arrives (each attempt bounded by ``attempt_seconds``).
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
                data = await asyncio.wait_for(ws.recv(), attempt_seconds)
                if data == token:
                    return
        except TimeoutError:
            continue
    raise TimeoutError(f"registration of {recipient!r} not effective after {seconds} s")


async def open_registered(
    url: str, recipient: str, *, seconds: float = TIMEOUT, attempt_seconds: float = 0.5, **kwargs: Any
) -> ClientConnection:
    """Connect, read the greeting, register ``recipient`` and prove it with a probe to itself."""
    ws = await open_client(url, seconds=seconds, **kwargs)
    try:
        await register_confirmed(ws, recipient, seconds, attempt_seconds=attempt_seconds)
    except Exception:
        await ws.close()
        raise
    return ws


async def receive(ws: ClientConnection, seconds: float = TIMEOUT) -> str:
    """The next notification, skipping registration probes."""
    while True:
        data = await asyncio.wait_for(ws.recv(), seconds)
        if not is_probe(data):
            return data


async def assert_receives_nothing(ws: ClientConnection, within: float = 0.5) -> None:
    """Fail if a notification arrives within ``within`` seconds (probes are skipped; the connection stays open)."""
    try:
        data = await receive(ws, within)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frame: {data!r}")


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

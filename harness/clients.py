"""WebSocket clients that behave exactly as the clients in the field do (the tests' and the benchmark's)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

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


# Protocol v2: registrations that are answered, notifications with positions, resume with ``since``.

NO_SINCE: Any = object()  # a v2 registration frame without "since" (None sends JSON null)


def register_v2_frame(recipient: str, since: object = NO_SINCE, token: str | None = None) -> str:
    """A v2 registration frame for ``recipient``, resuming from ``since`` unless it is :data:`NO_SINCE`."""
    body: dict[str, object] = {"recipient_uuid": recipient, "message": REGISTER_MESSAGE, "v": 2}
    if since is not NO_SINCE:
        body["since"] = since
    if token is not None:
        body["token"] = token
    return json.dumps(body)


async def receive_json(ws: ClientConnection, seconds: float = TIMEOUT) -> dict[str, Any]:
    """The next frame, which must be a JSON object (v2 frames are)."""
    data = await asyncio.wait_for(ws.recv(), seconds)
    parsed = json.loads(data)
    if not isinstance(parsed, dict):
        raise AssertionError(f"not a v2 frame: {data!r}")
    return parsed


async def register_v2(
    ws: ClientConnection,
    recipient: str,
    since: object = NO_SINCE,
    seconds: float = TIMEOUT,
    *,
    token: str | None = None,
) -> dict[str, Any]:
    """Send a v2 registration (with ``token`` in signed mode) and return its reply, which must be the next frame."""
    await ws.send(register_v2_frame(recipient, since, token))
    reply = await receive_json(ws, seconds)
    if reply.get("type") != "registered" or reply.get("recipient_uuid") != recipient:
        raise AssertionError(f"expected the registered reply for {recipient!r}, got {reply!r}")
    return reply


async def send_v2(ws: ClientConnection, recipient: str, message: object, seconds: float = TIMEOUT) -> dict[str, Any]:
    """Send a v2 send frame and return its ``sent`` reply, which must be the next frame."""
    await ws.send(json.dumps({"recipient_uuid": recipient, "message": message, "v": 2}))
    reply = await receive_json(ws, seconds)
    if reply.get("type") != "sent":
        raise AssertionError(f"expected a sent reply, got {reply!r}")
    return reply


@dataclass(frozen=True)
class Notified:
    """A v2 notification frame as a :class:`ResumingClient` received it."""

    recipient: str
    text: str
    position: str | None
    replayed: bool
    connection: int  # which of the client's connections, counted from 1


@dataclass(frozen=True)
class Registered:
    """A ``registered`` reply; ``since`` is what the registration sent (:data:`NO_SINCE` when it sent none)."""

    recipient: str
    since: object
    position: str | None
    recovered: bool | None
    connection: int

    @property
    def resumed(self) -> bool:
        return self.since is not NO_SINCE


@dataclass(frozen=True)
class Closed:
    """The end of one of a :class:`ResumingClient`'s connections."""

    connection: int
    code: int | None  # the server's close code; None when no close frame came (a killed process, a cut)
    by_client: bool  # the client cut it (:meth:`ResumingClient.cut`)


Event = Notified | Registered | Closed


class ResumingClient:
    """A v2 client that keeps its ids' last positions and resumes with ``since`` after every reconnect.

    It behaves as the protocol asks a v2 client to: it registers every id on
    each connection (with ``since`` once it knows a position), remembers the
    position of each notification it receives (or, when a registration is not
    recovered, the position of the ``registered`` reply), and reconnects after
    a short random delay whenever the connection ends. ``urls`` gives the
    servers to try, in order, on each connect (a callable is asked each time).
    Everything it sees is in :attr:`events`; what breaks the protocol's promises
    to a single connection (a notification before its ``registered`` reply, a
    position twice, an unknown frame) is in :attr:`problems`.
    """

    def __init__(
        self,
        urls: Sequence[str] | Callable[[], Sequence[str]],
        recipients: Sequence[str],
        *,
        delay: tuple[float, float] = (0.0, 0.2),
        seconds: float = TIMEOUT,
    ) -> None:
        self._urls = urls
        self.recipients = list(recipients)
        self.delay = delay
        self.seconds = seconds
        self.positions: dict[str, str | None] = dict.fromkeys(self.recipients)
        self.events: list[Event] = []
        self.problems: list[str] = []
        self.connections = 0
        self.failed_connects = 0
        self.registered = asyncio.Event()  # every id answered on the current connection
        self._ws: ClientConnection | None = None
        self._cut: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # What it saw.

    def notifications(self, recipient: str) -> list[Notified]:
        return [e for e in self.events if isinstance(e, Notified) and e.recipient == recipient]

    def texts(self, recipient: str) -> list[str]:
        return [n.text for n in self.notifications(recipient)]

    def registrations(self, recipient: str | None = None) -> list[Registered]:
        return [e for e in self.events if isinstance(e, Registered) and (recipient is None or e.recipient == recipient)]

    def resumes(self, recipient: str | None = None) -> list[Registered]:
        """The registrations that sent ``since``."""
        return [r for r in self.registrations(recipient) if r.resumed]

    def closes(self) -> list[Closed]:
        return [e for e in self.events if isinstance(e, Closed)]

    # Driving it.

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def cut(self, *, abort: bool = False) -> bool:
        """End the current connection from the client's side (``abort``: drop the TCP connection, no close frame).

        False when it had no open connection.
        """
        ws = self._ws
        if ws is None:
            return False
        self._cut = ws
        if abort:
            ws.transport.abort()
        else:
            await ws.close()
        return True

    async def stop(self) -> None:
        self._stopping = True
        ws = self._ws
        if ws is not None:
            self._cut = ws
            await ws.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, self.seconds)
            except TimeoutError:
                self._task.cancel()
            except Exception as exc:
                self.problems.append(f"the client's loop failed: {type(exc).__name__}: {exc}")

    def stopping(self) -> bool:
        return self._stopping

    def _candidates(self) -> Sequence[str]:
        return self._urls() if callable(self._urls) else self._urls

    async def _connect(self) -> ClientConnection | None:
        for url in self._candidates():
            try:
                return await open_client(url, seconds=self.seconds)
            except Exception:
                self.failed_connects += 1
        return None

    async def _run(self) -> None:
        while not self._stopping:
            ws = await self._connect()
            if ws is None:
                await asyncio.sleep(max(self.delay[1], 0.05))  # pacing the next attempt: nobody to await
                continue
            if self.stopping():  # stop() came while connecting
                await ws.close()
                break
            self.connections += 1
            number = self.connections
            self._ws = ws
            awaiting: dict[str, object] = {}
            seen: dict[str, set[str]] = {}
            try:
                for recipient in self.recipients:
                    position = self.positions[recipient]
                    since = NO_SINCE if position is None else position
                    awaiting[recipient] = since
                    await ws.send(register_v2_frame(recipient, since))
                async for data in ws:
                    self._handle(data, number, awaiting, seen)
            except ConnectionClosed:
                pass
            finally:
                self._ws = None
                self.registered.clear()
            received = ws.protocol.close_rcvd  # after a cut by the client, the server's answer to it
            self.events.append(
                Closed(number, received.code if received is not None else None, by_client=self._cut is ws)
            )
            if not self._stopping:
                await asyncio.sleep(random.uniform(*self.delay))  # the protocol's "short random delay"

    def _handle(self, data: str | bytes, number: int, awaiting: dict[str, object], seen: dict[str, set[str]]) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            self.problems.append(f"connection {number}: not JSON: {data!r:.200}")
            return
        kind = frame.get("type") if isinstance(frame, dict) else None
        recipient = frame.get("recipient_uuid") if isinstance(frame, dict) else None
        if kind == "registered" and recipient in awaiting:
            since = awaiting.pop(recipient)
            recovered, position = frame.get("recovered"), frame.get("position")
            self.events.append(Registered(recipient, since, position, recovered, number))
            if since is NO_SINCE and recovered is not None:
                self.problems.append(f"connection {number}: recovered {recovered!r} without since: {frame}")
            if since is not NO_SINCE and not isinstance(recovered, bool):
                self.problems.append(f"connection {number}: recovered {recovered!r} with since: {frame}")
            if recovered is not True:
                self.positions[recipient] = position
            if not awaiting:
                self.registered.set()
        elif kind == "message" and recipient in self.positions:
            position = frame.get("position")
            if recipient in awaiting:
                self.problems.append(f"connection {number}: a notification before the registered reply: {frame}")
            if position in seen.setdefault(recipient, set()):
                self.problems.append(f"connection {number}: position {position!r} twice: {frame}")
            seen[recipient].add(position)
            self.events.append(
                Notified(recipient, frame.get("message"), position, frame.get("replayed") is True, number)
            )
            if position is not None:
                self.positions[recipient] = position
        else:
            self.problems.append(f"connection {number}: unexpected frame {data!r:.300}")


async def close_code(ws: ClientConnection, seconds: float = TIMEOUT) -> int | None:
    """The close code the server sent, reading (and dropping) whatever comes before it."""
    try:
        async with asyncio.timeout(seconds):
            async for _ in ws:
                pass
    except ConnectionClosed:
        pass
    return ws.close_code

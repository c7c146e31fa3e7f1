"""HTTP views: the example page, the example of a view that notifies, and the HTTP push endpoint."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.html import json_script
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_safe

from notifications.conf import conf
from notifications.exceptions import DeliveryFailed, InvalidNotification
from notifications.senders import bearer, is_api_key
from notifications.sending import SendResult, asend_many, send
from notifications.tokens import registration_token

EXAMPLE_PAGE = Path(__file__).resolve().parent / "templates" / "notifications" / "example.html"
# The session key of the id that the example page receives as in signed mode.
EXAMPLE_ID = "notifications.example_id"
# The element the page reads its server's settings from (absent: open mode, anyone sends, or opened from disk).
EXAMPLE_SETTINGS = "notify-page-settings"


@require_safe
def example(request: HttpRequest) -> HttpResponse:
    """The example page: receive as the id after ``#``, send, watch what arrives.

    Sent as the file it is, never rendered as a template, so that the same file
    also works opened from disk. Only when the project is locked down does the
    page get a JSON element before ``</head>`` that says so: in signed mode the
    id of this browser session (made up on its first visit; the page may not
    choose one) and a token for it; in the ``key`` and ``none`` sender modes,
    that the page cannot send.
    """
    page = EXAMPLE_PAGE.read_bytes()
    signed = conf.REGISTRATION == "signed"
    if not signed and conf.WS_SENDERS == "anyone":
        return HttpResponse(page, content_type="text/html; charset=utf-8")
    values: dict[str, str] = {"registration": conf.REGISTRATION, "senders": conf.WS_SENDERS}
    if signed:
        recipient = request.session.get(EXAMPLE_ID)
        if not isinstance(recipient, str):
            recipient = request.session[EXAMPLE_ID] = str(uuid.uuid4())
        values.update(
            id=recipient, token=registration_token(recipient), tokenUrl=reverse("notifications:example-token")
        )
    head_end = page.index(b"</head>")
    element = json_script(values, EXAMPLE_SETTINGS).encode()  # escapes <, > and &: no way out of the element
    response = HttpResponse(
        page[:head_end] + element + b"\n" + page[head_end:], content_type="text/html; charset=utf-8"
    )
    response["Cache-Control"] = "private, no-store"  # it holds a token, and this session's id
    return response


@require_safe
def example_token(request: HttpRequest) -> HttpResponse:
    """``GET /example/token/``: a fresh token for this session's example id, the example page's ``getToken``.

    ``{"recipient_uuid": id, "token": token}``; ``?id=`` may say which id the
    page asks for, and any other than the session's is refused (403). 404 when
    registrations are open, 403 for a session that has no id (that never
    opened /example/). Never a token for an id the request chose.
    """
    if conf.REGISTRATION != "signed":
        return _error(404, "registrations are open (NOTIFICATIONS_REGISTRATION): the example page needs no token")
    recipient = request.session.get(EXAMPLE_ID)
    if not isinstance(recipient, str):
        return _error(403, "this session has no example id: open /example/ first")
    asked = request.GET.get("id")
    if asked is not None and asked != recipient:
        return _error(403, "a token is only for this session's own example id")
    response = JsonResponse({"recipient_uuid": recipient, "token": registration_token(recipient)})
    response["Cache-Control"] = "private, no-store"
    return response


# The pattern to copy: a Django view that pushes a notification from a request handler.


class SendForm(forms.Form):
    recipient_uuid = forms.CharField(label="Recipient id", max_length=conf.MAX_RECIPIENT_LENGTH, strip=False)
    message = forms.CharField(label="Message", widget=forms.Textarea(attrs={"rows": 3}), strip=False)


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def send_view(request: HttpRequest) -> HttpResponse:
    """Send a notification from a form: login required, CSRF-protected POST."""
    form = SendForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        recipient = form.cleaned_data["recipient_uuid"]
        try:
            result = send(recipient, form.cleaned_data["message"])
        except InvalidNotification as exc:
            form.add_error(None, f"Cannot send: {exc}.")
        except DeliveryFailed as exc:
            messages.error(request, f"Not sent: {exc}.")
        else:
            if result.outcome == "pending":
                messages.success(request, f"Nobody is registered as {recipient!r} yet: kept for its next registration.")
            elif result.live_connections:
                messages.success(request, f"Sent to {recipient!r}: {result.live_connections} live connection(s).")
            else:
                messages.warning(request, f"Sent to {recipient!r}, but no live connection is registered right now.")
            return redirect("notifications:send")
    return render(request, "notifications/send.html", {"form": form})


# The HTTP push endpoint for services that are not Django.


def _error(status: int, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


def _authorized(request: HttpRequest) -> bool:
    return is_api_key(bearer(request.headers.get("Authorization", "")))


def _notifications(payload: Any) -> list[tuple[str, Any]]:
    """The (recipient, message) pairs of a request body, or ValueError with a one-line reason."""
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise ValueError("the list holds no notification")
    if len(items) > conf.API_MAX_BATCH:
        raise ValueError(f"{len(items)} notifications in one request; at most {conf.API_MAX_BATCH}")
    pairs = []
    for index, item in enumerate(items):
        where = f"item {index}: " if isinstance(payload, list) else ""
        if not isinstance(item, dict):
            raise ValueError(f'{where}expected an object {{"recipient_uuid": ..., "message": ...}}')
        for field in ("recipient_uuid", "message"):
            if field not in item:
                raise ValueError(f"{where}no {field}")
        pairs.append((item["recipient_uuid"], item["message"]))
    return pairs  # asend_many() checks the ids and messages


@csrf_exempt  # authenticated by API key, not by a browser session
async def api_notify(request: HttpRequest) -> HttpResponse:
    """``POST /api/notify/``: ``{"recipient_uuid": ..., "message": ...}`` or a list of them.

    Answers ``{"results": [{"recipient_uuid": ..., "live_connections": N, "outcome": "live" | "pending" |
    "dropped", "position": ..., "pending_until": ISO time or null}, ...]}``.
    """
    if not conf.API_KEYS:
        raise Http404("The HTTP push endpoint is off (NOTIFICATIONS_API_KEYS is empty).")
    if request.method != "POST":
        return _error(405, "use POST", Allow="POST")
    if not _authorized(request):
        return _error(401, "missing or wrong API key (Authorization: Bearer <key>)", **{"WWW-Authenticate": "Bearer"})
    # Django itself refuses bodies over DATA_UPLOAD_MAX_MEMORY_SIZE (RequestDataTooBig).
    limit = min(conf.API_MAX_BODY, settings.DATA_UPLOAD_MAX_MEMORY_SIZE or conf.API_MAX_BODY)
    try:
        too_big = int(request.headers.get("Content-Length") or 0) > limit or len(request.body) > limit
    except (ValueError, RequestDataTooBig):
        too_big = True
    if too_big:
        return _error(413, f"the body is over {limit} bytes")
    try:
        payload = json.loads(request.body)
    except (ValueError, RecursionError) as exc:
        return _error(400, f"the body is not JSON: {exc}")
    try:
        results = await asend_many(_notifications(payload))
    except ValueError as exc:  # InvalidNotification is one too
        return _error(400, str(exc))
    except DeliveryFailed as exc:
        return JsonResponse({"error": str(exc), "results": _results(exc.sent)}, status=503)
    return JsonResponse({"results": _results(results)})


def _results(results: list[SendResult]) -> list[dict[str, Any]]:
    return [
        {
            "recipient_uuid": r.recipient,
            "live_connections": r.live_connections,
            "outcome": r.outcome,
            "position": r.position,
            "pending_until": r.pending_until.isoformat() if r.pending_until is not None else None,
        }
        for r in results
    ]

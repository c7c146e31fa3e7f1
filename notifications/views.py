from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe


@require_safe
def demo(request: HttpRequest) -> HttpResponse:
    """A page to try the server from a browser: register an id, send, watch what arrives."""
    return render(request, "notifications/demo.html")

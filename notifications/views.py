from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe


@require_safe
def example(request: HttpRequest) -> HttpResponse:
    """The example page: receive as the id after ``#``, send, watch what arrives.

    Sent as the file it is, never rendered as a template, so that the same file
    also works opened from disk.
    """
    page = settings.BASE_DIR / "templates" / "notifications" / "example.html"
    return HttpResponse(page.read_bytes(), content_type="text/html; charset=utf-8")

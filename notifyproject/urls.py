from __future__ import annotations

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from notifications.views import example

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="example", query_string=True)),
    path("example/", example, name="example"),
    path("admin/", admin.site.urls),
]

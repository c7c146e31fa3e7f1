from __future__ import annotations

from django.contrib import admin
from django.urls import path

from notifications.views import demo

urlpatterns = [
    path("", demo, name="demo"),
    path("admin/", admin.site.urls),
]

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path
from django.views.generic import RedirectView

from notifications.views import api_notify, example, send_view

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="example", query_string=True)),
    path("example/", example, name="example"),
    path("send/", send_view, name="send"),
    path("api/notify/", api_notify, name="api-notify"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]

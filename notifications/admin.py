"""The Django admin: live connections and server processes, read-only, staff only.

Rows are written by the server processes (:mod:`notifications.registry`);
nobody adds, edits or deletes them here. The one action sends a message to
the selected connections through :mod:`notifications.sending`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.timesince import timesince

from notifications import dashboard
from notifications.exceptions import DeliveryFailed, InvalidNotification
from notifications.models import Connection, Dashboard, ServerProcess, ServerProcessQuerySet
from notifications.protocol import message_text, validate_recipient
from notifications.sending import send_to_connections
from notifications.sending.delivery import take_pending

# Seconds between the dashboard's updates of itself.
REFRESH_SECONDS = 5

if TYPE_CHECKING:
    ModelAdmin = admin.ModelAdmin[Any]
else:  # django-stubs makes ModelAdmin generic; Django's own class is not subscriptable
    ModelAdmin = admin.ModelAdmin


class ReadOnlyAdmin(ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RegisteredFilter(admin.SimpleListFilter):
    title = "registered"
    parameter_name = "registered"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [("yes", "Registered"), ("no", "Not registered")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Connection]) -> QuerySet[Connection]:
        if self.value() == "yes":
            return queryset.filter(registered_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(registered_at__isnull=True)
        return queryset


class SendMessageForm(forms.Form):
    message = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        max_length=65536,
        strip=False,
        help_text="Delivered as one text frame, exactly as typed.",
    )

    def clean_message(self) -> str:
        message = self.cleaned_data["message"]
        try:
            return message_text(message)
        except InvalidNotification as exc:
            raise forms.ValidationError(str(exc)) from exc


def _pending_line(recipient: str) -> str:
    """How many notifications wait for the id ``recipient``'s next registration, in a sentence."""
    try:
        validate_recipient(recipient)
    except InvalidNotification:
        return ""  # a search for something that cannot be an id: nothing to say
    try:
        pending = async_to_sync(take_pending)(recipient, peek=True)
    except Exception as exc:  # Redis down: the page still shows the connections
        return f"Pending notifications of the id {recipient!r}: unknown ({type(exc).__name__}: {exc})."
    if pending is None:
        return ""  # a channel layer that keeps nothing
    count = len(pending)
    waiting = f"{count} notification{'s' if count != 1 else ''}"
    return f"Pending for the id {recipient!r}: {waiting} waiting for its next registration."


@admin.register(Connection)
class ConnectionAdmin(ReadOnlyAdmin):
    list_display = [
        "temp_id",
        "registered_ids",
        "client_address",
        "process",
        "connected_at",
        "connected_for",
        "registered_at",
        "last_activity_at",
        "user_agent",
        "origin",
        "channel_name",
    ]
    list_select_related = ["process"]
    list_filter = [RegisteredFilter, "process"]
    search_fields = ["temp_id", "registrations__recipient", "client_address"]
    search_help_text = "Search by temporary id, registered id or client address."
    ordering = ["-connected_at", "temp_id"]
    list_per_page = 100
    actions = ["send_message"]
    fields = [
        "temp_id",
        "all_registered_ids",
        "process",
        "channel_name",
        "connected_at",
        "connected_for",
        "registered_at",
        "last_activity_at",
        "client_address",
        "user_agent",
        "origin",
    ]
    readonly_fields = ["all_registered_ids", "connected_for"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Connection]:
        # One query for the ids of the whole page, not one per row.
        return super().get_queryset(request).prefetch_related("registrations")

    @admin.display(description="registered ids")
    def registered_ids(self, obj: Connection) -> str:
        # Whole, so that an operator can read and search a prefixed UUID. Client-chosen
        # text: returned as a plain string, which the admin escapes.
        return ", ".join(r.recipient for r in obj.registrations.all()) or "—"

    @admin.display(description="registered ids")
    def all_registered_ids(self, obj: Connection) -> str:
        return "\n".join(r.recipient for r in obj.registrations.all()) or "—"

    @admin.display(description="connected for")
    def connected_for(self, obj: Connection) -> str:
        return timesince(obj.connected_at)

    def has_send_notification_permission(self, request: HttpRequest) -> bool:
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.send_notification")

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # Live processes only: the rows of a dead one are about to be purged.
        totals = Connection.objects.alive().aggregate(connections=Count("pk"), registered=Count("registered_at"))
        processes = ServerProcess.objects.alive().count()
        extra_context = {**(extra_context or {}), "totals": totals, "processes": processes}
        searched = request.GET.get("q", "").strip()
        if searched:
            extra_context["pending_line"] = _pending_line(searched)
        return super().changelist_view(request, extra_context)

    @admin.action(description="Send a message to the selected connections", permissions=["send_notification"])
    def send_message(self, request: HttpRequest, queryset: QuerySet[Connection]) -> HttpResponse | None:
        form = SendMessageForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            channel_names = list(queryset.values_list("channel_name", flat=True))
            try:
                reached = send_to_connections(channel_names, form.cleaned_data["message"])
            except DeliveryFailed as exc:
                self.message_user(request, f"Nothing was sent: {exc}", messages.ERROR)
                return None
            level = messages.SUCCESS if reached == len(channel_names) else messages.WARNING
            self.message_user(request, f"Sent to {reached} of {len(channel_names)} selected connections.", level)
            return None
        select_across = request.POST.get("select_across") == "1"
        context = {
            **self.admin_site.each_context(request),
            "title": "Send a message to the selected connections",
            "opts": self.opts,
            "form": form,
            "count": queryset.count(),
            "select_across": select_across,
            # Django acts only on a POST that names selected rows, even when all are selected.
            "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/notifications/connection/send_message.html", context)


@admin.register(ServerProcess)
class ServerProcessAdmin(ReadOnlyAdmin):
    list_display = [
        "host",
        "pid",
        "id",
        "started_at",
        "heartbeat_at",
        "status",
        "connections",
        "relayed",
        "undeliverable",
        "rejected_frames",
    ]
    list_filter = ["host"]
    search_fields = ["host", "id"]
    ordering = ["host", "pid", "started_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ServerProcess]:
        # The database's now, by which clock the processes write their heartbeats:
        # this host's clock may differ from theirs.
        processes = cast(ServerProcessQuerySet, super().get_queryset(request))
        return processes.with_liveness().annotate(connection_count=Count("connections"))

    @admin.display(description="connections", ordering="connection_count")
    def connections(self, obj: ServerProcess) -> str:
        annotated: Any = obj  # connection_count: annotated by get_queryset()
        url = reverse("admin:notifications_connection_changelist")
        return format_html('<a href="{}?process__id__exact={}">{}</a>', url, obj.pk, annotated.connection_count)

    @admin.display(description="status")
    def status(self, obj: ServerProcess) -> str:
        annotated: Any = obj  # is_alive and database_now: annotated by with_liveness(), by the database's clock
        if annotated.is_alive:
            return "alive"
        since = timesince(obj.heartbeat_at, annotated.database_now)
        return f"no heartbeat for {since}: purged at the next heartbeat of any process"


@admin.register(Dashboard)
class DashboardAdmin(ReadOnlyAdmin):
    """The dashboard: the deployment now and over the last hour, updating itself (no table of its own)."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        user = request.user
        return bool(
            user.is_active
            and user.is_staff
            and (user.has_perm("notifications.view_dashboard") or user.has_perm("notifications.view_serverprocess"))
        )

    def get_urls(self) -> list[URLPattern]:
        data = path("data/", self.admin_site.admin_view(self.data_view), name="notifications_dashboard_data")
        return [data, *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": "Notification center dashboard",
            "opts": self.opts,
            "data_url": reverse("admin:notifications_dashboard_data"),
            "refresh_seconds": REFRESH_SECONDS,
            "snapshot": dashboard.snapshot(),
        }
        return TemplateResponse(request, "admin/notifications/dashboard.html", context)

    def data_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return JsonResponse(dashboard.snapshot(), headers={"Cache-Control": "no-store"})

"""The Django admin of live connections and server processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from harness.clients import AdminSession, open_client, receive, register
from harness.servers import Daphne, eventually
from notifications.models import Connection, ServerProcess
from tests.programs import skewed_clock

CONNECTIONS = reverse("admin:notifications_connection_changelist")
PROCESSES = reverse("admin:notifications_serverprocess_changelist")


def staff_user(*permissions: str) -> User:
    user = User.objects.create_user("operator", password="operator-password", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=permissions))
    return user


@pytest.fixture
def staff_client(client: Client, db: None) -> Client:
    """A staff member who may view connections and processes, and nothing more."""
    client.force_login(staff_user("view_connection", "view_serverprocess"))
    return client


class TestAccess:
    def test_anonymous_users_are_sent_to_the_login_page(self, client: Client, db: None) -> None:
        response = client.get(CONNECTIONS)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))

    def test_users_who_are_not_staff_are_sent_to_the_login_page(self, client: Client, db: None) -> None:
        client.force_login(User.objects.create_user("customer", password="customer-password"))
        for url in (CONNECTIONS, PROCESSES):
            response = client.get(url)
            assert response.status_code == 302
            assert response["Location"].startswith(reverse("admin:login"))

    def test_staff_without_the_view_permission_is_refused(self, client: Client, db: None) -> None:
        client.force_login(staff_user())
        assert client.get(CONNECTIONS).status_code == 403


class TestConnectionList:
    def test_staff_sees_every_live_connection_and_the_totals_at_the_top(
        self, staff_client: Client, live_connections: Callable[..., list[Connection]]
    ) -> None:
        registered = live_connections(2, ids=("user-1", "user-2"), client_address="198.51.100.7")
        unregistered = live_connections(1)
        page = staff_client.get(CONNECTIONS).content.decode()
        for c in [*registered, *unregistered]:
            assert c.temp_id in page
        assert "198.51.100.7" in page
        assert "user-1, user-2" in page
        assert "3 live connections in total, 2 registered, on 2 server processes." in page
        assert page.index("3 live connections in total") < page.index(registered[0].temp_id)

    def test_the_totals_leave_out_the_rows_of_dead_processes(
        self, staff_client: Client, live_connections: Callable[..., list[Connection]]
    ) -> None:
        live_connections(2, ids=("user-1",))
        live_connections(5, ids=("user-2",), heartbeat_age=3600)  # no heartbeat for an hour: about to be purged
        page = staff_client.get(CONNECTIONS).content.decode()
        assert "2 live connections in total, 2 registered, on 1 server process." in page

    def test_newest_first(self, staff_client: Client, live_connections: Callable[..., list[Connection]]) -> None:
        newest, older, oldest = live_connections(3)  # connected 1, 2 and 3 minutes ago
        page = staff_client.get(CONNECTIONS).content.decode()
        assert page.index(newest.temp_id) < page.index(older.temp_id) < page.index(oldest.temp_id)

    def test_nothing_can_be_added_changed_or_deleted(
        self, staff_client: Client, live_connections: Callable[..., list[Connection]]
    ) -> None:
        [c] = live_connections(1)
        assert staff_client.get(reverse("admin:notifications_connection_add")).status_code == 403
        change_url = reverse("admin:notifications_connection_change", args=[c.pk])
        detail = staff_client.get(change_url)
        assert detail.status_code == 200
        assert 'name="_save"' not in detail.content.decode()
        assert staff_client.post(change_url, {"client_address": "203.0.113.1"}).status_code == 403
        assert staff_client.post(reverse("admin:notifications_connection_delete", args=[c.pk])).status_code == 403
        assert "delete_selected" not in staff_client.get(CONNECTIONS).content.decode()
        assert Connection.objects.get(pk=c.pk).client_address == c.client_address

    def test_search_by_temporary_id_registered_id_and_client_address(
        self, staff_client: Client, live_connections: Callable[..., list[Connection]]
    ) -> None:
        [alice] = live_connections(1, ids=("alice-uuid",), client_address="198.51.100.1")
        [bob] = live_connections(1, ids=("bob-uuid", "bob-2"), client_address="203.0.113.9")

        def found(query: str) -> set[str]:
            page = staff_client.get(CONNECTIONS, {"q": query}).content.decode()
            return {c.temp_id for c in (alice, bob) if c.temp_id in page}

        assert found("alice-uuid") == {alice.temp_id}
        assert found("bob") == {bob.temp_id}
        assert found("203.0.113.9") == {bob.temp_id}
        assert found(alice.temp_id) == {alice.temp_id}
        assert found("nobody") == set()

    def test_registered_ids_are_shown_whole_so_that_a_prefixed_uuid_can_be_read(
        self, staff_client: Client, live_connections: Callable[..., list[Connection]]
    ) -> None:
        long_id = "tenant-eu-west-1:task:" + "0f8fad5b-d9cb-469f-a165-70867728950e"
        live_connections(1, ids=(long_id,))
        assert long_id in staff_client.get(CONNECTIONS).content.decode()

    def test_a_search_for_an_id_says_how_many_notifications_wait_for_it(
        self, staff_client: Client, in_memory_layer: None
    ) -> None:
        from asgiref.sync import async_to_sync

        from notifications.sending import asend

        for n in range(3):
            async_to_sync(asend)("late-page", f"step {n}")  # nobody registered: pending
        page = staff_client.get(CONNECTIONS, {"q": "late-page"}).content.decode()
        assert "Pending for the id &#x27;late-page&#x27;: 3 notifications waiting for its next registration." in page
        page = staff_client.get(CONNECTIONS, {"q": "<b>nobody</b>"}).content.decode()
        assert "Pending for the id &#x27;&lt;b&gt;nobody&lt;/b&gt;&#x27;: 0 notifications" in page

    def test_filters_by_server_process_and_by_registered(
        self, staff_client: Client, live_connections: Callable[..., list[Connection]]
    ) -> None:
        [registered] = live_connections(1, ids=("someone",))
        [waiting] = live_connections(1)

        def shown(params: dict[str, str]) -> set[str]:
            page = staff_client.get(CONNECTIONS, params).content.decode()
            return {c.temp_id for c in (registered, waiting) if c.temp_id in page}

        assert shown({"registered": "yes"}) == {registered.temp_id}
        assert shown({"registered": "no"}) == {waiting.temp_id}
        assert shown({"process__id__exact": waiting.process_id}) == {waiting.temp_id}

    def test_client_supplied_text_is_escaped(
        self, staff_client: Client, live_connections: Callable[..., list[Connection]]
    ) -> None:
        [c] = live_connections(
            1,
            ids=("<script>alert('id')</script>",),
            user_agent="<img src=x onerror=alert(1)>",
            origin='"><b>origin</b>',
        )
        for url in (CONNECTIONS, reverse("admin:notifications_connection_change", args=[c.pk])):
            page = staff_client.get(url).content.decode()
            assert "<script>alert" not in page
            assert "<img src=x" not in page
            assert "<b>origin</b>" not in page
            assert "&lt;script&gt;alert(&#x27;id&#x27;)&lt;/script&gt;" in page
            assert "&lt;img src=x onerror=alert(1)&gt;" in page

    def test_the_number_of_queries_does_not_grow_with_the_number_of_rows(
        self, staff_client: Client, live_connections: Callable[..., list[Connection]]
    ) -> None:
        def queries() -> int:
            with CaptureQueriesContext(connection) as captured:
                assert staff_client.get(CONNECTIONS).status_code == 200
            return len(captured)

        live_connections(10, ids=("a", "b"))
        with_ten = queries()
        live_connections(1500, ids=("c", "d"))
        live_connections(500)
        assert queries() == with_ten
        page = staff_client.get(CONNECTIONS).content.decode()
        assert "2010 live connections in total, 1510 registered" in page
        assert page.count('class="action-checkbox"') <= 100  # paginated


class TestServerProcesses:
    def test_each_process_is_listed_with_its_connection_count_and_heartbeat(
        self, staff_client: Client, live_connections: Callable[..., list[Connection]]
    ) -> None:
        busy = live_connections(3)[0].process
        stale = live_connections(1, heartbeat_age=3600)[0].process
        page = staff_client.get(PROCESSES).content.decode()
        assert f'{CONNECTIONS}?process__id__exact={busy.pk}">3</a>' in page
        assert f'{CONNECTIONS}?process__id__exact={stale.pk}">1</a>' in page
        assert busy.host in page and str(busy.pid) in page
        assert "alive" in page
        assert "no heartbeat for 1" in page  # hour

    def test_each_process_shows_what_it_relayed_and_failed_to_deliver(
        self, staff_client: Client, live_connections: Callable[..., list[Connection]]
    ) -> None:
        process = live_connections(1)[0].process
        ServerProcess.objects.filter(pk=process.pk).update(relayed=123456, undeliverable=789, rejected_frames=42)
        page = staff_client.get(PROCESSES).content.decode()
        for header in ("Relayed", "Undeliverable", "Ignored frames"):
            assert header in page
        for figure in ('<td class="field-relayed">123456</td>', '<td class="field-undeliverable">789</td>'):
            assert figure in page

    def test_the_list_does_not_query_per_process(
        self, staff_client: Client, live_connections: Callable[..., list[Connection]]
    ) -> None:
        def queries() -> int:
            with CaptureQueriesContext(connection) as captured:
                assert staff_client.get(PROCESSES).status_code == 200
            return len(captured)

        live_connections(2)
        with_one = queries()
        for _ in range(20):
            live_connections(2)
        assert queries() == with_one


class TestSendAction:
    def test_staff_without_the_send_permission_is_not_offered_the_action(
        self, staff_client: Client, live_connections: Callable[..., list[Connection]]
    ) -> None:
        live_connections(1)
        assert "send_message" not in staff_client.get(CONNECTIONS).content.decode()

    def test_the_action_asks_for_the_message_first(
        self, admin_client: Client, live_connections: Callable[..., list[Connection]]
    ) -> None:
        connections = live_connections(2)
        response = admin_client.post(
            CONNECTIONS, {"action": "send_message", "_selected_action": [c.pk for c in connections]}
        )
        page = response.content.decode()
        assert response.status_code == 200
        assert "The message goes to 2 selected connections" in page
        assert 'name="message"' in page

    @pytest.mark.usefixtures("in_memory_layer")
    def test_selecting_all_sends_to_every_connection_the_filter_selects(
        self, admin_client: Client, live_connections: Callable[..., list[Connection]]
    ) -> None:
        on_first_page = live_connections(3, ids=("registered",))[:1]
        live_connections(2)
        url = f"{CONNECTIONS}?registered=yes"
        # What the admin's "Select all 3" sends: the page's checked rows, and select_across.
        selection = {
            "action": "send_message",
            "select_across": "1",
            "index": "0",
            "_selected_action": [c.pk for c in on_first_page],
        }
        form = admin_client.post(url, selection).content.decode()
        assert "The message goes to 3 selected connections" in form
        assert 'name="select_across" value="1"' in form
        response = admin_client.post(url, {**selection, "apply": "1", "message": "to all registered"}, follow=True)
        assert "Sent to 3 of 3 selected connections." in response.content.decode()

    def test_a_message_that_cannot_be_delivered_is_refused_with_the_reason(
        self, admin_client: Client, live_connections: Callable[..., list[Connection]]
    ) -> None:
        [c] = live_connections(1)
        response = admin_client.post(
            CONNECTIONS, {"action": "send_message", "_selected_action": [c.pk], "apply": "1", "message": "a\x00b"}
        )
        page = response.content.decode()
        assert response.status_code == 200
        assert "Null characters are not allowed." in page
        assert "Sent to" not in page


@sync_to_async
def create_superuser() -> None:
    User.objects.create_superuser("root", password="root-password")


@sync_to_async
def temp_ids(server: Daphne, recipient: str) -> list[str]:
    return list(
        Connection.objects.filter(process__pid=server.process.pid, registrations__recipient=recipient).values_list(
            "pk", flat=True
        )
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("async_db")
async def test_the_send_action_reaches_real_clients_on_another_process(
    redis_daphne_pair: tuple[Daphne, Daphne],
) -> None:
    admin_side, client_side = redis_daphne_pair
    await create_superuser()
    chosen, other = await open_client(client_side.url), await open_client(client_side.url)
    await register(chosen, "chosen")
    await register(other, "not-chosen")

    async def both_listed() -> bool:
        return bool(await temp_ids(client_side, "chosen")) and bool(await temp_ids(client_side, "not-chosen"))

    await eventually(both_listed, seconds=5)
    [chosen_id] = await temp_ids(client_side, "chosen")

    session = AdminSession(admin_side.http_url)
    await asyncio.to_thread(session.log_in, "root", "root-password")
    data: list[tuple[str, Any]] = [("action", "send_message"), ("_selected_action", chosen_id)]
    status, form = await asyncio.to_thread(session.post, CONNECTIONS, data)
    assert status == 200 and "The message goes to 1 selected connection," in form
    status, page = await asyncio.to_thread(
        session.post, CONNECTIONS, [*data, ("apply", "1"), ("message", "maintenance at 18:00")]
    )
    assert status == 200
    assert "Sent to 1 of 1 selected connections." in page
    assert await receive(chosen) == "maintenance at 18:00"
    with pytest.raises(TimeoutError):
        await receive(other, 0.5)
    await chosen.close()
    await other.close()


@sync_to_async
def process_count() -> int:
    return ServerProcess.objects.count()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("async_db")
async def test_a_server_whose_clock_is_ahead_shows_the_other_processes_alive(
    daphne_factory: Callable[..., Daphne],
) -> None:
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has no clock of its own: processes sharing one SQLite file share one host and clock")
    fast = {"NOTIFY_HEARTBEAT_INTERVAL": "0.3", "NOTIFY_STALE_AFTER": "1.5"}
    steady = daphne_factory(fast)
    # Three times the bound ahead: by its own clock, every other heartbeat looks stale.
    ahead = daphne_factory({**fast, **skewed_clock(5)})
    await create_superuser()

    async def both_announced() -> bool:
        return await process_count() == 2

    await eventually(both_announced, seconds=5)
    session = AdminSession(ahead.http_url)
    await asyncio.to_thread(session.log_in, "root", "root-password")
    status, page = await asyncio.to_thread(session.get, PROCESSES)
    assert status == 200
    assert page.count('<td class="field-status">alive</td>') == 2
    assert "no heartbeat" not in page
    del steady

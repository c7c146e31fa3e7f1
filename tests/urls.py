"""Views as a project would write them, pushing notifications from request handlers."""

import threading

from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from notifications.sending import asend, send
from notifyproject.urls import urlpatterns as project_urlpatterns


@csrf_exempt
def finish_task(request: HttpRequest) -> HttpResponse:
    send(request.POST["owner"], {"status": 200, "task": request.POST["task"]})
    return HttpResponse("queued")


@csrf_exempt
async def finish_task_async(request: HttpRequest) -> HttpResponse:
    await asend(request.POST["owner"], "image2video")
    return HttpResponse("queued")


# Set by a test once it has looked at the database; a view asked to "hold" waits for it before committing.
looked = threading.Event()


@csrf_exempt
def create_user(request: HttpRequest) -> HttpResponse:
    """Create a user and tell its owner, in one transaction; ``on_commit``, ``hold`` and ``rollback`` as posted."""
    name, owner, on_commit = request.POST["name"], request.POST["owner"], request.POST.get("on_commit") == "1"
    with transaction.atomic():
        User.objects.create(username=name)
        if request.POST.get("api") == "async":
            async_to_sync(asend)(owner, f"created {name}", on_commit=on_commit)
        else:
            send(owner, f"created {name}", on_commit=on_commit)
        if request.POST.get("hold") == "1" and not looked.wait(10):
            return HttpResponse("nobody looked", status=500)
        if request.POST.get("rollback") == "1":
            transaction.set_rollback(True)
    return HttpResponse("done")


urlpatterns = [
    path("users/create/", create_user),
    path("tasks/finish/", finish_task),
    path("tasks/finish-async/", finish_task_async),
    *project_urlpatterns,
]

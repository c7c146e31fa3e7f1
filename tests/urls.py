"""Views as a project would write them, pushing notifications from request handlers."""

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


urlpatterns = [
    path("tasks/finish/", finish_task),
    path("tasks/finish-async/", finish_task_async),
    *project_urlpatterns,
]

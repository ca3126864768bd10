"""Django: a view sending with one blocking ``Client`` per process, built from the settings.

Run (from this folder, with ``web_common.py`` beside it)::

    pip install proactive-async django
    export PROACTIVE_BASE_URL=https://api.example.com PROACTIVE_TOKEN=...
    export PROACTIVE_CHANNEL_ID=1 PROACTIVE_BOT_ID=2 PROACTIVE_TEMPLATE_ID=3
    python django_app.py runserver    # or: gunicorn -w 4 --threads 8 django_app:application

    curl -X POST localhost:8000/notifications -H 'content-type: application/json' \\
         -d '{"recipient": "+5511999990000", "variables": {"name": "Ana"}}'

One file for the recipe's sake: in a project, the client goes in a module of your app
(``notifications/proactive.py``), the view in its ``views.py`` and the route in ``urls.py``;
the Django settings below are your project's. The client is built once per process from the
SDK's settings (``PROACTIVE_*``: base URL, token, CA file, proxy, timeouts) and shared by
every thread of it: one connection pool on one background event loop. A gunicorn worker
forked after the import makes its own pool at its first call; the client is closed at
interpreter exit. A view is synchronous here: from an ``async def`` view use ``AsyncClient``.
"""

from __future__ import annotations

import json
import sys

from django.conf import settings as django_settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from web_common import answer_for, template_from_env

from proactive_async import ProactiveError
from proactive_async.settings import Settings, build_sync_client

if not django_settings.configured:  # a project's settings.py holds these
    django_settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        SECRET_KEY="only-for-this-recipe",  # Django signs nothing in this app
        MIDDLEWARE=[],
    )

client = build_sync_client(Settings.from_env())
TEMPLATE = template_from_env()


@csrf_exempt  # an API called by services with JSON, not a form in a browser
@require_POST
def notify(request: HttpRequest) -> HttpResponse:
    try:
        payload = json.loads(request.body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("recipient"), str):
        return JsonResponse(
            {"detail": "a JSON object with a 'recipient' string is required"}, status=400
        )
    try:
        conversations = client.create_proactive_conversation(
            TEMPLATE,
            recipient=[payload["recipient"]],
            content_variables=payload.get("variables") or {},
        )
    except ProactiveError as exc:
        answer = answer_for(exc)
        return JsonResponse(answer.body, status=answer.status, headers=answer.headers)
    return JsonResponse({"conversation_ids": [c.id for c in conversations]}, status=201)


urlpatterns = [path("notifications", notify)]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
else:
    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()

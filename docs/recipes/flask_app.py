"""Flask: one blocking ``Client`` per process, used by a view (Django: ``django_app.py``).

Run (from this folder, with ``web_common.py`` beside it)::

    pip install proactive-async flask
    export PROACTIVE_BASE_URL=https://api.example.com PROACTIVE_TOKEN=...
    export PROACTIVE_CHANNEL_ID=1 PROACTIVE_BOT_ID=2 PROACTIVE_TEMPLATE_ID=3
    flask --app flask_app run        # or: gunicorn --workers 4 --threads 8 flask_app:app

    curl -X POST localhost:5000/notifications -H 'content-type: application/json' \\
         -d '{"recipient": "+5511999990000", "variables": {"name": "Ana"}}'

The module-level ``Client`` is built once per process (PROACTIVE_BASE_URL and
PROACTIVE_TOKEN are its defaults) and shared by every thread of it: one connection pool on
one background event loop. A gunicorn worker forked from a parent that imported this module
makes its own pool at its first call; the client is closed at interpreter exit.
"""

from __future__ import annotations

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from web_common import answer_for, template_from_env

from proactive_async import Client, ProactiveError

client = Client()
TEMPLATE = template_from_env()

app = Flask(__name__)


@app.post("/notifications")
def notify() -> ResponseReturnValue:
    payload = request.get_json(force=True)
    if not isinstance(payload, dict) or not isinstance(payload.get("recipient"), str):
        return jsonify(detail="a JSON object with a 'recipient' string is required"), 400
    conversations = client.create_proactive_conversation(
        TEMPLATE,
        recipient=[payload["recipient"]],
        content_variables=payload.get("variables") or {},
    )
    return jsonify(conversation_ids=[conversation.id for conversation in conversations]), 201


@app.errorhandler(ProactiveError)
def proactive_error(exc: ProactiveError) -> ResponseReturnValue:
    answer = answer_for(exc)
    return jsonify(answer.body), answer.status, answer.headers

"""The HTTP API: a Flask app that validates requests, records and enqueues jobs, and reads their state.

It never loads TensorFlow or runs a model; the Celery workers do that.
"""

from __future__ import annotations

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException


def create_app(api_keys: tuple[str, ...] | None = None) -> Flask:
    """Build the app. API keys come from FACEREC_API_KEYS unless given here."""
    from api.auth import require_api_key
    from api.routes import v1
    from workers import runtime

    app = Flask(__name__)
    app.config["API_KEYS"] = tuple(api_keys if api_keys is not None else runtime.settings().api_keys)
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024  # job requests are small JSON documents
    v1.before_request(require_api_key)
    app.register_blueprint(v1)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        return jsonify(error=err.description or err.name), err.code

    return app

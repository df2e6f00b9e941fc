"""The HTTP API: a Flask app that validates requests, records and enqueues jobs, and reads their state.

It never loads TensorFlow or runs a model; the Celery workers do that.
"""

from __future__ import annotations

import errno
import json
import uuid
from collections.abc import Iterable
from typing import Any

from botocore.exceptions import BotoCoreError
from flask import Flask, jsonify, request
from flask.json.provider import DefaultJSONProvider
from redis.exceptions import RedisError
from werkzeug.exceptions import BadRequest, HTTPException

from api.endpoints import endpoint
from config import Settings, load_settings
from pipeline.storage import InvalidKey, StorageError, StorageFull

# Job requests are a few levels deep; a bound far below Python's recursion limit keeps a hostile body
# (100,000 '[') from reaching json's recursion limit, and keeps deep values out of job records.
MAX_JSON_DEPTH = 32
TOO_DEEP = f"the JSON body is nested too deeply: at most {MAX_JSON_DEPTH} levels of arrays and objects"


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, refusing request bodies nested deeper than MAX_JSON_DEPTH with a 400.

    It raises BadRequest rather than ValueError so that routes reading the body with
    get_json(silent=True) still answer with this message instead of a vaguer one.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            value = json.loads(s, **kwargs)
        except RecursionError:
            raise BadRequest(TOO_DEEP) from None
        if _depth(value) > MAX_JSON_DEPTH:
            raise BadRequest(TOO_DEEP)
        return value


def _depth(value: Any) -> int:
    """How many arrays and objects deep value goes, walked without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH:  # deeper than the bound is enough to know
            stack.extend((child, depth + 1) for child in children)
    return deepest


def create_app(settings: Settings | None = None, api_keys: Iterable[str] | None = None) -> Flask:
    """Build the app for the given settings (default: read from the environment now). API-key entries
    (name:scope:sha256hex, see api.keys) come from the settings unless given here; a malformed entry,
    such as a plain key, stops the app from starting."""
    from api.auth import authenticate
    from api.clusters import clusters
    from api.erasures import erasures
    from api.health import health
    from api.jobs import jobs
    from api.keys import parse_entries
    from api.models import models
    from api.openapi import openapi_document
    from api.photos import photos
    from api.schedules import schedules
    from api.search import search
    from api.sessions import configure_sessions
    from api.uploads import uploads
    from api.web import web
    from workers.runtime import Runtime

    settings = settings or load_settings()
    app = Flask(__name__)
    app.json = BoundedJSONProvider(app)
    runtime = app.extensions["facerec"] = Runtime(settings)  # api.context.runtime()
    entries = list(api_keys if api_keys is not None else settings.api_keys)
    app.config["API_KEYS"] = parse_entries(entries)
    # Job requests are small JSON documents; the upload routes raise the bound for their own requests.
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    configure_sessions(app, runtime, entries)
    # On the app, not on a module-level blueprint: a blueprint takes no hooks once registered, so
    # create_app could run only once per process.
    app.before_request(authenticate)
    for blueprint in (health, jobs, models, schedules, photos, uploads, web, search, clusters, erasures):
        app.register_blueprint(blueprint)

    @app.get("/v1/openapi.json", endpoint="openapi")
    @endpoint(None)
    def openapi():
        """The OpenAPI 3.1 document of this API (no key needed)."""
        if "openapi" not in app.extensions:
            app.extensions["openapi"] = openapi_document(app)
        return jsonify(app.extensions["openapi"])
    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        return jsonify(error=err.description or err.name), err.code

    @app.errorhandler(InvalidKey)
    def invalid_key(err: InvalidKey):
        # A key no object can have, or whose folder is an object: the request's fault, never worth a retry.
        return jsonify(error=str(err)), 400

    @app.errorhandler(StorageFull)
    def storage_full(err: Exception):
        app.logger.error("%s on %s %s: %s", type(err).__name__, request.method, request.path, err)
        return jsonify(error="the server's storage is full, so nothing of this request was recorded: try again "
                             "once space has been freed (tell its administrator)"), 507

    @app.errorhandler(OSError)
    def file_system_error(err: OSError):
        # What storage did not name already: a full disk is 507, a name too long 400, the rest the store failing.
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            return storage_full(err)
        if err.errno == errno.ENAMETOOLONG:
            return jsonify(error="a name in the request is longer than the file system allows"), 400
        return store_unavailable(err)

    @app.errorhandler(StorageError)
    @app.errorhandler(BotoCoreError)
    @app.errorhandler(RedisError)
    def store_unavailable(err: Exception):
        # Storage or Redis down for a while: nothing is lost, and the same request will work again.
        app.logger.warning("%s on %s %s: %s", type(err).__name__, request.method, request.path, err)
        response = jsonify(error="storage or broker unavailable for the moment: try again shortly")
        response.headers["Retry-After"] = "5"
        return response, 503

    @app.errorhandler(Exception)
    def unexpected_error(err: Exception):
        # The message and traceback can hold server paths, hostnames or data: they go to the log only,
        # and the client gets an id to quote that finds them there.
        error_id = uuid.uuid4().hex[:16]
        app.logger.error("error %s on %s %s", error_id, request.method, request.path, exc_info=err)
        return jsonify(error=f"internal error (id {error_id}); the server's log has the details"), 500

    return app

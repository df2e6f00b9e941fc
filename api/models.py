"""/v1/models: model versions (immutable), which one is current, their reports; promote and roll back."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import BadRequest, Conflict, NotFound

from api.context import runtime
from api.endpoints import ADMIN, HTML, READ, endpoint
from api.validation import PAGE_QUERY, page_args
from pipeline import registry

models = Blueprint("models", __name__, url_prefix="/v1")

PROMOTE_BODY = {"type": "object", "required": ["version"],
                "properties": {"version": {"type": "string", "description": "the version to make current"}}}


@models.get("/models")
@endpoint(READ, query=PAGE_QUERY)
def list_models():
    """Models by name, with their current versions; paginated with limit and offset."""
    storage = runtime().storage
    limit, offset = page_args()
    names = registry.list_models(storage)
    return jsonify(models=[
        {"name": name, "current_version": registry.current_version(storage, name)}
        for name in names[offset:offset + limit]
    ], total=len(names), limit=limit, offset=offset)


@models.get("/models/<name>")
@endpoint(READ)
def get_model(name: str):
    """A model's versions and its current one."""
    storage = runtime().storage
    try:
        versions = registry.list_versions(storage, name)
    except ValueError as err:
        raise BadRequest(str(err)) from None
    if not versions:
        raise NotFound(f"no model named {name}")
    return jsonify(name=name, current_version=registry.current_version(storage, name), versions=versions)


@models.get("/models/<name>/versions/<version>/report")
@endpoint(READ, answers=HTML)
def get_report(name: str, version: str):
    """The version's self-contained HTML report (report.json beside it holds the same figures)."""
    storage = runtime().storage
    try:
        record = registry.get_version(storage, name, version)
    except LookupError as err:  # no such version, or one an erasure retired: the message says which
        raise NotFound(str(err)) from None
    except ValueError:  # a name that could not be a model's
        raise NotFound(f"no report for model {name} version {version}") from None
    try:
        html = storage.get(record["report_html_key"])
    except (LookupError, ValueError, KeyError):
        raise NotFound(f"no report for model {name} version {version}") from None
    return Response(html, mimetype=HTML)


@models.post("/models/<name>/promote")
@endpoint(ADMIN, body=PROMOTE_BODY, example={"version": "20240131T120000Z-a1b2c3"})
def promote_version(name: str):
    """Make a version current."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("version"), str):
        raise BadRequest('send {"version": "<version to make current>"}')
    try:
        pointer = registry.set_current(runtime().storage, name, body["version"])
    except registry.PointerMoved as err:
        raise Conflict(str(err)) from None
    except ValueError as err:
        raise BadRequest(str(err)) from None
    except LookupError as err:
        raise NotFound(str(err)) from None
    return jsonify(name=name, current_version=pointer["version"], history=pointer["history"])


@models.post("/models/<name>/rollback")
@endpoint(ADMIN)
def roll_back_version(name: str):
    """Make the previous current version current again."""
    try:
        pointer = registry.roll_back(runtime().storage, name)
    except registry.PointerMoved as err:
        raise Conflict(str(err)) from None
    except ValueError as err:
        raise BadRequest(str(err)) from None
    except LookupError as err:
        raise Conflict(str(err)) from None
    return jsonify(name=name, current_version=pointer["version"], history=pointer["history"])

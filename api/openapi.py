"""The OpenAPI 3.1 document of the API, generated from the app itself.

Paths and methods come from app.url_map, so every route appears; request bodies are the JSON schemas of
the pydantic models that validate them (workers.submit), so the document cannot drift from validation.
What the url_map does not say (query parameters, success codes, which routes take an Idempotency-Key)
is in the tables below, keyed by (method, rule) as the url_map spells them.
"""

from __future__ import annotations

import re

from flask import Flask
from pydantic import BaseModel

from api.auth import HEADER, required_scope
from api.routes import MAX_PAGE
from workers.jobs import STATES, TYPES
from workers.submit import EnrollRequest, PhotoRequest, RecognitionRequest, ScheduleRequest, TrainingRequest

VERSION = "1"
REF = "#/components/schemas/{model}"
ERROR = {"$ref": "#/components/schemas/Error"}

REQUEST_BODIES: dict[tuple[str, str], type[BaseModel] | dict] = {
    ("POST", "/v1/jobs/training"): TrainingRequest,
    ("POST", "/v1/jobs/recognition"): RecognitionRequest,
    ("POST", "/v1/jobs/enroll"): EnrollRequest,
    ("POST", "/v1/schedules"): ScheduleRequest,
    ("POST", "/v1/models/<name>/promote"): {
        "type": "object", "required": ["version"],
        "properties": {"version": {"type": "string", "description": "the version to make current"}},
    },
    ("POST", "/v1/recognize"): PhotoRequest,
}

_PHOTO_FILE = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
_ZIP = {"type": "string", "format": "binary", "contentMediaType": "application/zip",
        "description": "a zip of the photos"}
# Bodies that are not (only) JSON: the other media types each route takes, beside REQUEST_BODIES' JSON.
OTHER_BODIES: dict[tuple[str, str], dict[str, dict]] = {
    ("POST", "/v1/recognize"): {"multipart/form-data": {"schema": {
        "type": "object", "required": ["photo"],
        "properties": {"photo": {**_PHOTO_FILE, "description": "the photo"},
                       "model": {"type": "string"}, "model_version": {"type": "string"},
                       "wait_s": {"type": "number", "minimum": 0, "maximum": 30}},
    }}},
    ("POST", "/v1/datasets/<name>"): {
        "application/zip": {"schema": {**_ZIP, "description": "entries <person>/<photo> (one common top "
                                                              "folder is dropped)"}},
        "multipart/form-data": {"schema": {
            "type": "object", "description": "one or more photo files; each field's name is the person",
            "additionalProperties": {"type": "array", "items": _PHOTO_FILE}}},
    },
    ("POST", "/v1/inboxes/<name>"): {
        "application/zip": {"schema": {**_ZIP, "description": "entries <photo> (one common top folder is dropped)"}},
        "multipart/form-data": {"schema": {
            "type": "object", "description": "one or more photo files, any field names",
            "additionalProperties": {"type": "array", "items": _PHOTO_FILE}}},
    },
}

# One typical request per body, shown in the document (and sent first by the fuzz test).
EXAMPLES: dict[tuple[str, str], dict] = {
    ("POST", "/v1/jobs/training"): {"model": "lfw", "dataset_prefix": "datasets/lfw20"},
    ("POST", "/v1/jobs/recognition"): {"model": "lfw", "input_prefix": "inbox/"},
    ("POST", "/v1/jobs/enroll"): {"model": "gallery", "dataset_prefix": "datasets/lfw20"},
    ("POST", "/v1/schedules"): {"model": "lfw", "dataset_prefix": "datasets/lfw20", "cron": "0 3 * * *",
                                "promotion_margin": 0.01},
    ("POST", "/v1/models/<name>/promote"): {"version": "20240131T120000Z-a1b2c3"},
    ("POST", "/v1/recognize"): {"key": "inboxes/press/photo-0001.jpg", "model": "lfw"},
}

_PAGE = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50}},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
]
_APPEND = {"name": "append", "in": "query", "description": "add new photos to an existing folder",
           "schema": {"type": "boolean", "default": False}}

QUERY_PARAMETERS: dict[tuple[str, str], list[dict]] = {
    ("GET", "/v1/jobs"): [
        {"name": "type", "in": "query", "schema": {"type": "string", "enum": list(TYPES)}},
        {"name": "state", "in": "query", "schema": {"type": "string", "enum": list(STATES)}},
        {"name": "limit", "in": "query",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50}},
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
    ],
    ("GET", "/v1/models"): _PAGE,
    ("GET", "/v1/schedules"): _PAGE,
    ("POST", "/v1/datasets/<name>"): [_APPEND],
    ("POST", "/v1/inboxes/<name>"): [_APPEND],
    ("GET", "/v1/jobs/<job_id>/results"): [
        {"name": "redirect", "in": "query", "description": "on S3, answer 302 to a presigned URL (default)",
         "schema": {"type": "boolean", "default": True}}],
}

IDEMPOTENT = {
    ("POST", "/v1/jobs/training"), ("POST", "/v1/jobs/recognition"), ("POST", "/v1/jobs/enroll"),
    ("POST", "/v1/schedules/<schedule_id>/run"),
}

QUEUED = "the job, queued (200 when an Idempotency-Key replays an earlier submit)"
SUCCESS: dict[tuple[str, str], tuple[str, str]] = {  # (status, description); others answer 200 with JSON
    ("POST", "/v1/jobs/training"): ("202", QUEUED),
    ("POST", "/v1/jobs/recognition"): ("202", QUEUED),
    ("POST", "/v1/jobs/enroll"): ("202", QUEUED),
    ("POST", "/v1/schedules/<schedule_id>/run"): ("202", "the training job of the run"),
    ("POST", "/v1/schedules"): ("201", "the schedule"),
    ("DELETE", "/v1/schedules/<schedule_id>"): ("204", "deleted"),
    ("POST", "/v1/jobs/<job_id>/resume"): ("202", "the job, queued again"),
    ("POST", "/v1/recognize"): ("200", "the faces (202 with the request's location if wait_s passed first)"),
    ("POST", "/v1/datasets/<name>"): ("201", "what was stored: prefix, photos, people, skipped files"),
    ("POST", "/v1/inboxes/<name>"): ("201", "what was stored: prefix, photos, skipped files"),
}
HTML_ROUTES = {("GET", "/v1/models/<name>/versions/<version>/report")}
JSONL_ROUTES = {("GET", "/v1/jobs/<job_id>/results")}

_VARIABLE = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_CONVERTER_TYPES = {"int": "integer", "float": "number"}


def openapi_document(app: Flask) -> dict:
    """The OpenAPI 3.1 document of every route of app."""
    schemas: dict[str, dict] = {
        "Error": {"type": "object", "required": ["error"], "additionalProperties": False,
                  "properties": {"error": {"type": "string", "description": "what went wrong, for a person"}}},
    }
    paths: dict[str, dict] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        path = _VARIABLE.sub(lambda m: "{" + m["name"] + "}", rule.rule)
        methods = sorted(rule.methods - {"HEAD", "OPTIONS"})
        for method in methods:
            operation_id = rule.endpoint.removeprefix("v1.") + (f"_{method.lower()}" if len(methods) > 1 else "")
            paths.setdefault(path, {})[method.lower()] = _operation(app, rule, method, operation_id, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "facerec API", "version": VERSION,
            "description": "Batch face recognition: submit training, enrolment and bulk-recognition jobs, "
                           "poll them, manage model versions and retraining schedules. Every error answers "
                           '{"error": "..."}.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"ApiKey": {
                "type": "apiKey", "in": "header", "name": HEADER,
                "description": "a key made with `python -m api.keys new NAME --scope read|submit|admin`; "
                               "each operation's x-required-scope says the least scope it needs",
            }},
        },
        "security": [{"ApiKey": []}],
    }


def _operation(app: Flask, rule, method: str, operation_id: str, schemas: dict) -> dict:
    key = (method, rule.rule)
    view = app.view_functions[rule.endpoint]
    doc = (view.__doc__ or "").strip()
    summary = doc.splitlines()[0] if doc else rule.endpoint.rsplit(".", 1)[-1].replace("_", " ").capitalize()
    operation: dict = {"operationId": operation_id, "summary": summary,
                       "tags": ["pages" if _is_page(rule) else rule.rule.strip("/").split("/")[1]]}
    scope = required_scope(rule.endpoint, rule.rule, method)
    if scope is None:
        operation["security"] = []
    else:
        operation["x-required-scope"] = scope

    parameters = [
        {"name": match["name"], "in": "path", "required": True,
         "schema": {"type": _CONVERTER_TYPES.get(match["converter"] or "", "string"),
                    **({} if match["converter"] in _CONVERTER_TYPES else {"minLength": 1})}}
        for match in _VARIABLE.finditer(rule.rule)
    ]
    parameters += QUERY_PARAMETERS.get(key, [])
    if key in IDEMPOTENT:
        parameters.append({"name": "Idempotency-Key", "in": "header", "required": False,
                           "description": "sending the same key again returns the same job",
                           "schema": {"type": "string", "maxLength": 255}})
    if parameters:
        operation["parameters"] = parameters

    body = REQUEST_BODIES.get(key)
    content: dict = {}
    if body is not None:
        media = {"schema": _body_schema(body, schemas)}
        if key in EXAMPLES:
            media["example"] = EXAMPLES[key]
        content["application/json"] = media
    content.update(OTHER_BODIES.get(key, {}))
    if content:
        operation["requestBody"] = {"required": True, "content": content}

    status, description = SUCCESS.get(key, ("200", "OK"))
    if key in HTML_ROUTES or _is_page(rule):
        success = {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}
    elif key in JSONL_ROUTES:
        success = {"description": "the results, one JSON line per photo (on S3: 302 to a presigned URL)",
                   "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}
    elif status == "204":
        success = {"description": description}
    else:
        success = {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}}
    errors = {"description": "an error: 400 invalid input, 401 no or wrong key, 403 scope too small, 404 "
                             "unknown id, 409 conflict, 503 a service the route needs is missing",
              "content": {"application/json": {"schema": ERROR}}}
    operation["responses"] = {status: success, "default": errors}
    return operation


def _is_page(rule) -> bool:
    """A web page (api.web), not a /v1 route: it answers HTML and authenticates by the session cookie."""
    return not rule.rule.startswith("/v1/")


def _body_schema(body: type[BaseModel] | dict, schemas: dict) -> dict:
    if isinstance(body, dict):
        return body
    schema = body.model_json_schema(ref_template=REF)
    schemas.update(schema.pop("$defs", {}))
    schemas[body.__name__] = schema
    return {"$ref": REF.format(model=body.__name__)}

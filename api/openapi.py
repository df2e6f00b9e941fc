"""The OpenAPI 3.1 document of the API, generated from the app itself.

Paths and methods come from app.url_map, so every route appears; everything else (scope, request bodies,
query parameters, success codes, which routes take an Idempotency-Key) from what each view declares
(api.endpoints). Request bodies are the JSON schemas of the pydantic models that validate them
(workers.schemas), so the document cannot drift from validation.
"""

from __future__ import annotations

import re

from flask import Flask
from pydantic import BaseModel

from api.auth import HEADER, OPEN_ENDPOINTS
from api.endpoints import HTML, JSONL, declared

VERSION = "1"
REF = "#/components/schemas/{model}"
ERROR = {"$ref": "#/components/schemas/Error"}

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
        if rule.endpoint in OPEN_ENDPOINTS:
            continue
        path = _VARIABLE.sub(lambda m: "{" + m["name"] + "}", rule.rule)
        methods = sorted(rule.methods - {"HEAD", "OPTIONS"})
        for method in methods:
            operation_id = rule.endpoint.rsplit(".", 1)[-1] + (f"_{method.lower()}" if len(methods) > 1 else "")
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
    view = app.view_functions[rule.endpoint]
    spec = declared(view)
    doc = (view.__doc__ or "").strip()
    summary = doc.splitlines()[0] if doc else rule.endpoint.rsplit(".", 1)[-1].replace("_", " ").capitalize()
    operation: dict = {"operationId": operation_id, "summary": summary,
                       "tags": ["pages" if spec.page else rule.rule.strip("/").split("/")[1]]}
    if spec.scope is None:
        operation["security"] = []
    else:
        operation["x-required-scope"] = spec.scope

    parameters = [
        {"name": match["name"], "in": "path", "required": True,
         "schema": {"type": _CONVERTER_TYPES.get(match["converter"] or "", "string"),
                    **({} if match["converter"] in _CONVERTER_TYPES else {"minLength": 1})}}
        for match in _VARIABLE.finditer(rule.rule)
    ]
    parameters += list(spec.query)
    if spec.idempotent:
        parameters.append({"name": "Idempotency-Key", "in": "header", "required": False,
                           "description": "sending the same key again returns the same job",
                           "schema": {"type": "string", "maxLength": 255}})
    if parameters:
        operation["parameters"] = parameters

    content: dict = {}
    if spec.body is not None:
        media = {"schema": _body_schema(spec.body, schemas)}
        if spec.example is not None:
            media["example"] = spec.example
        content["application/json"] = media
    content.update(spec.other_bodies or {})
    if content:
        operation["requestBody"] = {"required": True, "content": content}

    status, description = spec.success
    if spec.answers == HTML:
        success = {"description": description, "content": {HTML: {"schema": {"type": "string"}}}}
    elif spec.answers == JSONL:
        success = {"description": "the results, one JSON line per photo (on S3: 302 to a presigned URL)",
                   "content": {JSONL: {"schema": {"type": "string"}}}}
    elif status == "204":
        success = {"description": description}
    else:
        success = {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}}
    errors = {"description": "an error: 400 invalid input, 401 no or wrong key, 403 scope too small, 404 "
                             "unknown id, 409 conflict, 503 a service the route needs is missing",
              "content": {"application/json": {"schema": ERROR}}}
    operation["responses"] = {status: success, "default": errors}
    return operation


def _body_schema(body: type[BaseModel] | dict, schemas: dict) -> dict:
    if isinstance(body, dict):
        return body
    schema = body.model_json_schema(ref_template=REF)
    schemas.update(schema.pop("$defs", {}))
    schemas[body.__name__] = schema
    return {"$ref": REF.format(model=body.__name__)}

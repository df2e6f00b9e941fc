"""Reading a request: its JSON body against a schema, its query integers, its Idempotency-Key; each
problem a 400 that names it."""

from __future__ import annotations

from flask import request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import BadRequest

MAX_PAGE = 200  # the most items one page of a list holds
MAX_OFFSET = 10**9  # beyond any list, and within what an index (Redis's ZRANGE) takes
PAGE_QUERY = (
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50}},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET,
                                                 "default": 0}},
)


def parse_body(schema: type[BaseModel]) -> BaseModel:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object (Content-Type: application/json)")
    return parse(schema, body)


def parse(schema: type[BaseModel], values: dict) -> BaseModel:
    try:
        return schema.model_validate(values)
    except ValidationError as err:
        raise BadRequest(validation_message(err)) from None


def validation_message(err: ValidationError) -> str:
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in err.errors())
    return f"invalid request: {problems}"


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key", "").strip()
    if len(key) > 255:
        raise BadRequest("Idempotency-Key must be at most 255 characters")
    return key or None


def int_arg(name: str, default: int, low: int, high: int | None) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if value < low or (high is not None and value > high):
        raise BadRequest(f"{name} must be between {low} and {high}" if high else f"{name} must be at least {low}")
    return value


def page_args() -> tuple[int, int]:
    """The limit and offset of a list's page."""
    return int_arg("limit", 50, 1, MAX_PAGE), int_arg("offset", 0, 0, MAX_OFFSET)

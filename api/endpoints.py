"""What each view declares about itself, once: the key scope it needs and what it takes and answers.

Authentication (api.auth) and the OpenAPI document (api.openapi) read these declarations from the app's
views, so a route is described in one place, beside its code:

    @jobs.post("/jobs/training")
    @endpoint(SUBMIT, body=TrainingRequest, success=("202", QUEUED), idempotent=True)
    def submit_training_job(): ...

A view that declares nothing needs an admin key: a new route is safe until someone decides otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from api.keys import SCOPES

READ, SUBMIT, ADMIN = SCOPES
JSON, HTML, JSONL = "application/json", "text/html", "application/x-ndjson"


@dataclass(frozen=True)
class Endpoint:
    scope: str | None  # the least scope of key it needs; None: no key (health, the document, web pages)
    body: type[BaseModel] | dict | None = None  # its JSON body: a pydantic model or a JSON schema
    other_bodies: dict[str, dict] | None = None  # other media types it takes: media type -> {"schema": ...}
    example: dict | None = None  # a typical JSON body, shown in the document (and sent first by the fuzz test)
    query: tuple[dict, ...] = ()  # its query parameters, as OpenAPI parameter objects
    idempotent: bool = False  # takes an Idempotency-Key header
    success: tuple[str, str] = ("200", "OK")  # (status, description) of its success
    answers: str = JSON  # the media type of its success
    page: bool = False  # a web page: it checks the session itself and sends a stranger to the login form


def endpoint(scope: str | None, **details: Any) -> Callable:
    """Declare a view's scope and what it takes and answers (see Endpoint)."""
    if scope is not None and scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    declared = Endpoint(scope, **details)

    def declare(view: Callable) -> Callable:
        view.api_endpoint = declared
        return view

    return declare


def page(view: Callable) -> Callable:
    """Declare a web page: no key, HTML, the session checked by the page itself."""
    return endpoint(None, answers=HTML, page=True)(view)


def declared(view: Callable | None) -> Endpoint:
    """A view's declaration; a view that declares nothing needs an admin key."""
    return getattr(view, "api_endpoint", None) or Endpoint(ADMIN)

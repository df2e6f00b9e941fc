"""API-key authentication and scopes.

Every route but health and the OpenAPI document needs a key in the X-API-Key header, whose SHA-256 is
configured in FACEREC_API_KEYS (see api.keys), with a scope at least the one the route's view declares
(api.endpoints): reading needs ``read``, submitting and cancelling jobs ``submit``, and whatever changes
which model is live or when training runs (promote, roll back, every schedules route) ``admin``.
"""

from __future__ import annotations

import hmac

from flask import Flask, current_app, g, request
from werkzeug.exceptions import Forbidden, Unauthorized

from api.endpoints import declared
from api.keys import ApiKey, hash_key
from api.sessions import script_session_key

HEADER = "X-API-Key"
OPEN_ENDPOINTS = {"static"}  # Flask's own view of the pages' script and style


def required_scope(app: Flask, endpoint: str | None) -> str | None:
    """The scope a request to the endpoint needs, as its view declares (api.endpoints); None: no key."""
    if endpoint in OPEN_ENDPOINTS:
        return None
    return declared(app.view_functions.get(endpoint)).scope


def find_key(keys: tuple[ApiKey, ...], given: str) -> ApiKey | None:
    """The configured key whose hash matches, comparing hashes in constant time."""
    digest = hash_key(given)
    found = None
    for key in keys:  # no early exit: the time taken does not tell which entry matched
        if hmac.compare_digest(digest, key.digest):
            found = key
    return found


def authenticate() -> None:
    """before_request hook of the app: refuse a request without a valid key of the scope it needs."""
    if request.url_rule is None:
        return  # no such route: let routing answer 404 or 405
    scope = required_scope(current_app, request.endpoint)
    if scope is None:
        return
    keys: tuple[ApiKey, ...] = current_app.config["API_KEYS"]
    if not keys:
        raise Unauthorized("no API keys are configured on the server (set FACEREC_API_KEYS)")
    given = request.headers.get(HEADER, "")
    key = find_key(keys, given) if given else script_session_key()
    if key is None:
        raise Unauthorized("invalid API key" if given else f"missing API key: send it in the {HEADER} header")
    if not key.allows(scope):
        raise Forbidden(f"this API key has scope {key.scope}; {request.method} {request.url_rule.rule} "
                        f"needs scope {scope}")
    g.api_key_name = key.name  # who is calling, for routes that scope things per caller (never the key)

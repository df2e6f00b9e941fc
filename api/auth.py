"""API-key authentication: every route but health needs a key from FACEREC_API_KEYS in X-API-Key."""

from __future__ import annotations

import hmac

from flask import current_app, request
from werkzeug.exceptions import Unauthorized

HEADER = "X-API-Key"
OPEN_ENDPOINTS = {"v1.health"}


def require_api_key() -> None:
    if request.endpoint in OPEN_ENDPOINTS:
        return
    keys = current_app.config["API_KEYS"]
    given = request.headers.get(HEADER, "")
    if not keys:
        raise Unauthorized("no API keys are configured on the server (set FACEREC_API_KEYS)")
    if not given:
        raise Unauthorized(f"missing API key: send it in the {HEADER} header")
    if not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        raise Unauthorized("invalid API key")

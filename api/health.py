"""/v1/health: whether the API is up, and what it runs on (no key needed)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from api.context import settings
from api.endpoints import endpoint

health = Blueprint("health", __name__, url_prefix="/v1")


@health.get("/health")
@endpoint(None)
def get_health():
    """Liveness: the API answers, and which broker and storage it uses."""
    config = settings()
    return jsonify(status="ok", broker="embedded" if config.embedded else "redis",
                   storage="s3" if config.uses_s3 else "local")

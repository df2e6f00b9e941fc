"""The app's runtime (storage, job store, the Celery app it sends with), made by create_app from its settings."""

from __future__ import annotations

from flask import current_app, g

from config import Settings
from workers.runtime import Runtime


def runtime() -> Runtime:
    return current_app.extensions["facerec"]


def settings() -> Settings:
    return runtime().settings


def caller() -> str:
    """The name of the key that made the request (never the key), for what is scoped per caller."""
    return g.get("api_key_name", "")

"""Web sessions kept on the server: the cookie holds only an opaque random id; what it stands for
(the name of the key a person logged in with, the CSRF token, when the session started) is kept in Redis,
or on the embedded default in files under the data folder. Neither the key nor its hash is ever in it.

A session ends at logout (its record is deleted, so a copy of the cookie is worthless), after
FACEREC_SESSION_IDLE_S without a request, and FACEREC_SESSION_MAX_S after login whatever happens.
Flask-Session does the storing; this module decides what a session holds and when it counts.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from cachelib import FileSystemCache
from flask import Flask, current_app, request, session
from flask_session import Session

from api.keys import ApiKey
from workers.runtime import Runtime

COOKIE = "facerec_session"
# The web pages' scripts call the API with the session cookie, which only counts with this header holding
# the session's token: a page of another site can send the cookie, not the header.
CSRF_HEADER = "X-CSRF-Token"


def configure_sessions(app: Flask, runtime: Runtime, entries: list[str]) -> None:
    """Keep sessions in Redis, or in files under the data folder on the embedded default. The id in the
    cookie is 32 random bytes (Flask-Session's); the app's secret (FACEREC_SECRET_KEY, or else one derived
    from the configured key entries, the same in every API process) signs nothing else of ours but is
    Flask's own requirement for a session."""
    settings = runtime.settings
    app.secret_key = settings.secret_key or hashlib.sha256(
        ("facerec-session\n" + "\n".join(entries)).encode()).hexdigest()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        # Browsers keep Secure cookies over plain http on localhost only; set 0 to serve pages over plain
        # http elsewhere (better: put TLS in front).
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
        SESSION_COOKIE_SAMESITE="Strict",
        # The idle bound: every request with the session pushes its expiry this far ahead.
        PERMANENT_SESSION_LIFETIME=settings.session_idle_s,
        SESSION_REFRESH_EACH_REQUEST=True,
        SESSION_KEY_PREFIX="facerec:session:",
    )
    if runtime.redis is not None:
        app.config.update(SESSION_TYPE="redis", SESSION_REDIS=runtime.redis)
    else:
        # threshold=0: never evict a live session to make room; expired ones are removed as they are read.
        folder = settings.data_dir / "sessions"
        app.config.update(SESSION_TYPE="cachelib",
                          SESSION_CACHELIB=FileSystemCache(str(folder), threshold=0, mode=0o600))
    Session(app)


def start_session(key: ApiKey) -> None:
    """Log in: a fresh session id (never one the browser brought: no session fixation) holding who it is."""
    current_app.session_interface.regenerate(session)  # a stored session gets a new id; an unknown one had one
    session.clear()
    session.permanent = True
    session.update(key_name=key.name, csrf=secrets.token_urlsafe(32), started=time.time())


def end_session() -> None:
    """Log out: the record is deleted, so the cookie, or any copy of it, no longer stands for anyone."""
    session.clear()


def csrf_token() -> str:
    return session.get("csrf", "")


def session_key() -> ApiKey | None:
    """The key the session stands for, while it is within its absolute lifetime and the key is still
    configured; None otherwise."""
    name, started = session.get("key_name"), session.get("started", 0.0)
    if not name:
        return None
    if time.time() - started > current_app.extensions["facerec"].settings.session_max_s:
        session.clear()
        return None
    keys: tuple[ApiKey, ...] = current_app.config["API_KEYS"]
    return next((key for key in keys if key.name == name), None)


def script_session_key() -> ApiKey | None:
    """The session's key for a request of the pages' scripts: only with the session's CSRF token in the
    CSRF header."""
    token, expected = request.headers.get(CSRF_HEADER, ""), session.get("csrf", "")
    if token and expected and hmac.compare_digest(token, expected):
        return session_key()
    return None

"""Web sessions are kept on the server: the cookie is an opaque id that holds neither the API key nor its
hash, logging out ends the session for every copy of its cookie, and a session ends when idle too long
or too old. On the embedded default (files under the data folder) and on Redis."""

from __future__ import annotations

import base64
import dataclasses
import re
import time
from pathlib import Path

import pytest
import redis

from api import create_app
from api.keys import config_entry, hash_key
from config import load_settings

KEY = "frk_test-session-user-Qm4Zt8Lw2Xc6Vb1N"
ENTRY = config_entry("page-user", "submit", KEY)
REDIS = pytest.param("redis", marks=pytest.mark.system)


@pytest.fixture(params=["files", REDIS])
def make_app(request, tmp_path: Path):
    """create_app on the embedded default or on Redis, with the session bounds given."""
    def make(idle_s: int = 3600, max_s: int = 7200):
        settings = dataclasses.replace(
            load_settings(), data_dir=tmp_path, api_keys=(ENTRY,), session_cookie_secure=False,
            session_idle_s=idle_s, session_max_s=max_s,
            redis_url=request.getfixturevalue("redis_url") if request.param == "redis" else "")
        return create_app(settings)

    make.backend = request.param
    return make


def log_in(app):
    client = app.test_client()
    response = client.post("/login", data={"api_key": KEY, "next": "/jobs"})
    assert response.status_code == 302 and response.headers["Location"] == "/jobs"
    page = client.get("/jobs")
    assert page.status_code == 200
    csrf = re.search(r'data-csrf="([^"]+)"', page.text)[1]
    return client, csrf, client.get_cookie("facerec_session").value


def api_with(app, cookie: str, csrf: str):
    """A fresh browser that sends only a copy of the cookie and the page's token."""
    client = app.test_client()
    client.set_cookie("facerec_session", cookie)
    return client.get("/v1/jobs", headers={"X-CSRF-Token": csrf})


def test_the_cookie_and_the_stored_session_hold_neither_the_key_nor_its_hash(make_app, tmp_path, request):
    app = make_app()
    _, csrf, cookie = log_in(app)
    decoded = b"".join(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)) for part in cookie.split(".")
                       if re.fullmatch(r"[A-Za-z0-9_-]+", part))
    for secret in (KEY, hash_key(KEY)):
        assert secret not in cookie and secret.encode() not in decoded
    if make_app.backend == "files":
        stored = b"".join(path.read_bytes() for path in (tmp_path / "sessions").iterdir())
    else:
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        stored = b"".join(client.get(k) for k in client.keys("facerec:session:*"))
    assert b"page-user" in stored, "the session names who logged in"
    for secret in (KEY, hash_key(KEY)):
        assert secret.encode() not in stored
    assert api_with(app, cookie, csrf).status_code == 200


def test_a_cookie_replayed_after_logout_gets_401(make_app):
    app = make_app()
    client, csrf, cookie = log_in(app)
    assert api_with(app, cookie, csrf).status_code == 200
    assert client.post("/logout", data={"csrf": csrf}).status_code == 302

    replayed = api_with(app, cookie, csrf)
    assert replayed.status_code == 401, replayed.text
    browser = app.test_client()
    browser.set_cookie("facerec_session", cookie)
    assert browser.get("/jobs").headers["Location"].startswith("/login")


def test_logging_in_gives_a_new_session_id(make_app):
    app = make_app()
    client, _, first = log_in(app)
    client.post("/login", data={"api_key": KEY})
    assert client.get_cookie("facerec_session").value != first


def test_a_session_ends_after_its_idle_time(make_app):
    app = make_app(idle_s=1)
    _, csrf, cookie = log_in(app)
    time.sleep(2.5)
    assert api_with(app, cookie, csrf).status_code == 401


def test_a_session_ends_at_its_absolute_lifetime_however_busy(make_app):
    app = make_app(idle_s=60, max_s=2)
    _, csrf, cookie = log_in(app)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # busy the whole time: never idle
        answer = api_with(app, cookie, csrf).status_code
        time.sleep(0.3)
    assert answer == 401

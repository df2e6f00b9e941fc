"""The web pages: log in, recognise a photo, follow jobs, manage model versions, read the API's document.

Pages are rendered on the server (templates/) with a little JavaScript (static/app.js) that calls the
/v1 API. The API key a person logs in with is kept in the session cookie (signed, HTTP-only, Secure,
SameSite=Strict) and never appears in a URL or a page; the scripts send the session's CSRF token in a
header, and the API accepts the session's key only with it (api.auth.session_key).
"""

from __future__ import annotations

import hashlib
import secrets
from urllib.parse import urlsplit

from flask import Blueprint, Flask, current_app, redirect, render_template, request, session, url_for
from werkzeug.exceptions import Forbidden, NotFound

from api.auth import find_key
from api.context import runtime
from api.endpoints import page
from api.jobs import get_results
from api.keys import ApiKey
from api.models import get_report
from api.openapi import openapi_document
from config import Settings
from pipeline import registry
from workers.jobs import STATES, TYPES, JobNotFound

web = Blueprint("web", __name__)
PAGE_SIZE = 50
CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


def configure_sessions(app: Flask, settings: Settings, entries: list[str] | tuple[str, ...]) -> None:
    """Sign session cookies with FACEREC_SECRET_KEY, or else with a secret derived from the configured key
    entries, the same in every API process (a session holds a key that is checked again on every request,
    so a forged cookie gets nothing that its key would not)."""
    secret = settings.secret_key
    app.secret_key = secret or hashlib.sha256(("facerec-session\n" + "\n".join(entries)).encode()).hexdigest()
    app.config.update(
        SESSION_COOKIE_NAME="facerec_session",
        SESSION_COOKIE_HTTPONLY=True,
        # Browsers keep Secure cookies over plain http on localhost only; set 0 to serve pages over plain
        # http elsewhere (better: put TLS in front).
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=12 * 3600,
    )


@web.after_request
def page_headers(response):
    if response.mimetype == "text/html" and not request.path.endswith("/report"):
        response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def _current_key() -> ApiKey | None:
    key = session.get("api_key")
    return find_key(current_app.config["API_KEYS"], key) if key else None


def _page(template: str, **context):
    """Render a page for the logged-in person, or send them to the login form (and back here after)."""
    key = _current_key()
    if key is None:
        return redirect(url_for("web.login", next=request.path))
    return render_template(template, user=key, csrf=session["csrf"], **context)


@web.get("/")
@page
def home():
    """The home page: the Recognise page."""
    return redirect(url_for("web.recognize_page"))


@web.get("/login")
@page
def login():
    """The login form: an API key, kept in a secure HTTP-only session cookie."""
    return render_template("login.html", error=None, next=_safe_next(request.args.get("next")))


@web.post("/login")
@page
def login_submit():
    """Log in with an API key (form field api_key)."""
    given = request.form.get("api_key", "").strip()
    next_page = _safe_next(request.form.get("next"))
    key = find_key(current_app.config["API_KEYS"], given) if given else None
    if key is None:
        message = "That API key is not valid." if given else "Enter your API key."
        return render_template("login.html", error=message, next=next_page), 401
    session.clear()
    session.permanent = True
    session.update(api_key=given, csrf=secrets.token_urlsafe(32))
    return redirect(next_page)


@web.post("/logout")
@page
def logout():
    """Log out: forget the key."""
    if session.get("csrf") and not secrets.compare_digest(request.form.get("csrf", ""), session["csrf"]):
        raise Forbidden("the form was not sent by this site's page")
    session.clear()
    return redirect(url_for("web.login"))


@web.get("/recognize")
@page
def recognize_page():
    """Recognise: drop a photo, see every face boxed and named."""
    storage = runtime().storage
    models = [{"name": name, "current_version": registry.current_version(storage, name)}
              for name in registry.list_models(storage)]
    return _page("recognize.html", models=models, active="recognize")


@web.get("/jobs")
@page
def jobs_page():
    """Jobs: type, state, progress and timings, refreshed live."""
    job_type = request.args.get("type") if request.args.get("type") in TYPES else None
    state = request.args.get("state") if request.args.get("state") in STATES else None
    jobs, total = runtime().jobs.list(job_type, state, PAGE_SIZE, 0)
    return _page("jobs.html", jobs=jobs, total=total, types=TYPES, states=STATES, job_type=job_type,
                 state=state, active="jobs")


@web.get("/jobs/<job_id>")
@page
def job_page(job_id: str):
    """One job: its parameters, progress, errors, results and report, and a cancel button."""
    try:
        job = runtime().jobs.get(job_id)
    except JobNotFound:
        raise NotFound(f"no job {job_id}") from None
    return _page("job.html", job=job, active="jobs")


@web.get("/jobs/<job_id>/results.jsonl")
@page
def job_results_download(job_id: str):
    """Download a finished recognition job's results (the page's link; the session stands for the key)."""
    if _current_key() is None:
        return redirect(url_for("web.login", next=request.path))
    return get_results(job_id)


@web.get("/models")
@page
def models_page():
    """Models: versions, metrics, which is current; promote and roll back; reports."""
    storage = runtime().storage
    models = []
    for name in registry.list_models(storage):
        versions = sorted(registry.list_versions(storage, name), key=lambda v: v.get("version", ""), reverse=True)
        models.append({"name": name, "current_version": registry.current_version(storage, name),
                       "versions": versions})
    return _page("models.html", models=models, active="models")


@web.get("/models/<name>/versions/<version>/report")
@page
def report_page(name: str, version: str):
    """A version's evaluation report and dataset exploration (self-contained HTML)."""
    if _current_key() is None:
        return redirect(url_for("web.login", next=request.path))
    return get_report(name, version)


@web.get("/docs")
@page
def docs_page():
    """The API's documentation, from its OpenAPI document (no key needed)."""
    if "openapi" not in current_app.extensions:
        current_app.extensions["openapi"] = openapi_document(current_app)
    document = current_app.extensions["openapi"]
    return render_template("docs.html", document=document, user=_current_key(), csrf=session.get("csrf"),
                           active="docs")


def _safe_next(value: str | None) -> str:
    """Where to go after logging in: a path of this site only (never another host)."""
    if not value:
        return "/recognize"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/recognize"
    return value

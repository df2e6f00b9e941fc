"""The web pages: log in, recognise a photo, follow jobs, manage model versions, read the API's document.

Pages are rendered on the server (templates/) with a little JavaScript (static/app.js) that calls the
/v1 API. Logging in with an API key starts a session kept on the server (api.sessions): the cookie holds
an opaque id, never the key, which appears in no URL or page either; the scripts send the session's CSRF
token in a header, and the API accepts the session only with it (api.sessions.script_session_key).
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from werkzeug.exceptions import Forbidden, NotFound

from api.auth import find_key
from api.context import runtime
from api.endpoints import page
from api.jobs import get_results
from api.models import get_report
from api.openapi import openapi_document
from api.sessions import csrf_token, end_session, session_key, start_session
from pipeline import registry
from workers.jobs import STATES, TYPES, JobNotFound

web = Blueprint("web", __name__)
PAGE_SIZE = 50
CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


@web.after_request
def page_headers(response):
    if response.mimetype == "text/html" and not request.path.endswith("/report"):
        response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def _page(template: str, **context):
    """Render a page for the logged-in person, or send them to the login form (and back here after)."""
    key = session_key()
    if key is None:
        return redirect(url_for("web.login", next=request.path))
    return render_template(template, user=key, csrf=csrf_token(), **context)


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
    """Log in with an API key (form field api_key): a new session on the server stands for it."""
    given = request.form.get("api_key", "").strip()
    next_page = _safe_next(request.form.get("next"))
    key = find_key(current_app.config["API_KEYS"], given) if given else None
    if key is None:
        message = "That API key is not valid." if given else "Enter your API key."
        return render_template("login.html", error=message, next=next_page), 401
    start_session(key)
    return redirect(next_page)


@web.post("/logout")
@page
def logout():
    """Log out: the session ends on the server, so its cookie is worthless from now on."""
    if csrf_token() and not secrets.compare_digest(request.form.get("csrf", ""), csrf_token()):
        raise Forbidden("the form was not sent by this site's page")
    end_session()
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
    if session_key() is None:
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
    if session_key() is None:
        return redirect(url_for("web.login", next=request.path))
    return get_report(name, version)


@web.get("/docs")
@page
def docs_page():
    """The API's documentation, from its OpenAPI document (no key needed)."""
    if "openapi" not in current_app.extensions:
        current_app.extensions["openapi"] = openapi_document(current_app)
    document = current_app.extensions["openapi"]
    return render_template("docs.html", document=document, user=session_key(), csrf=csrf_token(),
                           active="docs")


def _safe_next(value: str | None) -> str:
    """Where to go after logging in: a path of this site only (never another host)."""
    if not value:
        return "/recognize"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/recognize"
    return value

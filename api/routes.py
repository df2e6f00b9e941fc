"""The /v1 JSON API: submit, read, list and cancel jobs; list models; health."""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, g, jsonify, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import BadRequest, Conflict, NotFound, ServiceUnavailable, UnprocessableEntity

from pipeline import registry
from workers import runtime, schedules
from workers.jobs import STATES, TERMINAL, TYPES, IdempotencyConflict, JobNotFound, NotResumable, TooLateToCancel
from workers.submit import (
    EnrollRequest,
    InputNotFound,
    OutputPrefixTaken,
    RecognitionRequest,
    ScheduleRequest,
    TrainingRequest,
    resume_job,
    submit_enrollment,
    submit_recognition,
    submit_training,
)

v1 = Blueprint("v1", __name__, url_prefix="/v1")

MAX_PAGE = 200


@v1.get("/health")
def health():
    settings = runtime.settings()
    return jsonify(status="ok", broker="embedded" if settings.embedded else "redis",
                   storage="s3" if settings.uses_s3 else "local")


@v1.post("/jobs/training")
def submit_training_job():
    return _submitted(submit_training, TrainingRequest)


@v1.post("/jobs/recognition")
def submit_recognition_job():
    return _submitted(submit_recognition, RecognitionRequest)


@v1.post("/jobs/enroll")
def submit_enrollment_job():
    return _submitted(submit_enrollment, EnrollRequest)


def _submitted(submit, schema: type[BaseModel]):
    """Validate, submit and answer: 202 for a new job, 200 for the one an Idempotency-Key names."""
    try:
        # The idempotency scope: the route (the job type, in submit) and the client's key name.
        job, created = submit(_parse(schema), _idempotency_key(), client=g.get("api_key_name", ""))
    except InputNotFound as err:
        raise NotFound(str(err)) from None
    except OutputPrefixTaken as err:
        raise Conflict(str(err)) from None
    except IdempotencyConflict as err:
        raise UnprocessableEntity(str(err)) from None
    return _with_location(jsonify(job), job["id"]), 202 if created else 200


def _with_location(response: Response, job_id: str) -> Response:
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return response


@v1.get("/jobs")
def list_jobs():
    job_type, state = request.args.get("type"), request.args.get("state")
    if job_type and job_type not in TYPES:
        raise BadRequest(f"type must be one of {', '.join(TYPES)}")
    if state and state not in STATES:
        raise BadRequest(f"state must be one of {', '.join(STATES)}")
    limit, offset = _int_arg("limit", 50, 1, MAX_PAGE), _int_arg("offset", 0, 0, None)
    jobs, total = runtime.job_store().list(job_type, state, limit, offset)
    return jsonify(jobs=jobs, total=total, limit=limit, offset=offset)


@v1.get("/jobs/<job_id>")
def get_job(job_id: str):
    return jsonify(_job(job_id))


@v1.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    job = _job(job_id)
    if job["state"] in TERMINAL:
        raise Conflict(f"job {job_id} is already {job['state']}")
    try:
        return jsonify(runtime.job_store().cancel(job_id))
    except TooLateToCancel as err:
        raise Conflict(str(err)) from None


@v1.post("/jobs/<job_id>/resume")
def resume_failed_job(job_id: str):
    """Run a failed job again; a recognition job keeps the chunks it finished."""
    _job(job_id)
    try:
        return _with_location(jsonify(resume_job(job_id)), job_id), 202
    except NotResumable as err:
        raise Conflict(str(err)) from None


@v1.get("/models")
def list_models():
    """Models by name, with their current versions; paginated with limit and offset."""
    storage = runtime.storage()
    limit, offset = _int_arg("limit", 50, 1, MAX_PAGE), _int_arg("offset", 0, 0, None)
    names = registry.list_models(storage)
    return jsonify(models=[
        {"name": name, "current_version": registry.current_version(storage, name)}
        for name in names[offset:offset + limit]
    ], total=len(names), limit=limit, offset=offset)


@v1.get("/models/<name>")
def get_model(name: str):
    storage = runtime.storage()
    try:
        versions = registry.list_versions(storage, name)
    except ValueError as err:
        raise BadRequest(str(err)) from None
    if not versions:
        raise NotFound(f"no model named {name}")
    return jsonify(name=name, current_version=registry.current_version(storage, name), versions=versions)


@v1.get("/models/<name>/versions/<version>/report")
def get_report(name: str, version: str):
    """The version's self-contained HTML report (report.json beside it holds the same figures)."""
    try:
        record = registry.get_version(runtime.storage(), name, version)
        html = runtime.storage().get(record["report_html_key"])
    except (LookupError, ValueError, KeyError):
        raise NotFound(f"no report for model {name} version {version}") from None
    return Response(html, mimetype="text/html")


@v1.post("/models/<name>/promote")
def promote_version(name: str):
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("version"), str):
        raise BadRequest('send {"version": "<version to make current>"}')
    try:
        pointer = registry.set_current(runtime.storage(), name, body["version"])
    except registry.PointerMoved as err:
        raise Conflict(str(err)) from None
    except ValueError as err:
        raise BadRequest(str(err)) from None
    except LookupError as err:
        raise NotFound(str(err)) from None
    return jsonify(name=name, current_version=pointer["version"], history=pointer["history"])


@v1.post("/models/<name>/rollback")
def roll_back_version(name: str):
    try:
        pointer = registry.roll_back(runtime.storage(), name)
    except registry.PointerMoved as err:
        raise Conflict(str(err)) from None
    except ValueError as err:
        raise BadRequest(str(err)) from None
    except LookupError as err:
        raise Conflict(str(err)) from None
    return jsonify(name=name, current_version=pointer["version"], history=pointer["history"])


@v1.get("/schedules")
def list_schedules():
    """Retraining schedules; paginated with limit and offset."""
    limit, offset = _int_arg("limit", 50, 1, MAX_PAGE), _int_arg("offset", 0, 0, None)
    found = schedules.list_schedules()
    return jsonify(schedules=found[offset:offset + limit], total=len(found), limit=limit, offset=offset)


@v1.post("/schedules")
def create_schedule():
    try:
        schedule = schedules.create_schedule(_parse(ScheduleRequest))
    except ValueError as err:
        raise BadRequest(str(err)) from None
    except RuntimeError as err:
        raise ServiceUnavailable(str(err)) from None
    return jsonify(schedule), 201


@v1.get("/schedules/<schedule_id>")
def get_schedule(schedule_id: str):
    try:
        return jsonify(schedules.get_schedule(schedule_id))
    except schedules.ScheduleNotFound as err:
        raise NotFound(str(err)) from None


@v1.delete("/schedules/<schedule_id>")
def delete_schedule(schedule_id: str):
    try:
        schedules.delete_schedule(schedule_id)
    except schedules.ScheduleNotFound as err:
        raise NotFound(str(err)) from None
    except RuntimeError as err:
        raise ServiceUnavailable(str(err)) from None
    return "", 204


@v1.post("/schedules/<schedule_id>/run")
def run_schedule_now(schedule_id: str):
    """Run a schedule's training now, as beat would at its next time."""
    run_id = f"manual-{_idempotency_key() or uuid.uuid4().hex}"
    try:
        job, created = schedules.submit_scheduled_run(schedule_id, run_id)
    except schedules.ScheduleNotFound as err:
        raise NotFound(str(err)) from None
    return _with_location(jsonify(job), job["id"]), 202 if created else 200


def _parse(schema: type[BaseModel]) -> BaseModel:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object (Content-Type: application/json)")
    try:
        return schema.model_validate(body)
    except ValidationError as err:
        raise BadRequest(_validation_message(err)) from None


def _validation_message(err: ValidationError) -> str:
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in err.errors())
    return f"invalid request: {problems}"


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key", "").strip()
    if len(key) > 255:
        raise BadRequest("Idempotency-Key must be at most 255 characters")
    return key or None


def _int_arg(name: str, default: int, low: int, high: int | None) -> int:
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


def _job(job_id: str) -> dict:
    try:
        return runtime.job_store().get(job_id)
    except JobNotFound as err:
        raise NotFound(str(err)) from None


# Routes in their own modules, on the same blueprint (imported here, once, before it is registered).
from api import photos, uploads  # noqa: E402, F401

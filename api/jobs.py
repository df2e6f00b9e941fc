"""/v1/jobs: submit training, enrolment and recognition jobs; list, read, cancel and resume them; read a
recognition job's results and summary."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response, jsonify, redirect, request, stream_with_context
from pydantic import BaseModel
from werkzeug.exceptions import BadRequest, Conflict, NotFound, UnprocessableEntity

from api.context import caller, runtime
from api.endpoints import JSONL, READ, SUBMIT, endpoint
from api.validation import PAGE_QUERY, idempotency_key, page_args, parse_body
from pipeline.storage import LocalStorage, MissingKey, S3Storage
from workers.jobs import (
    STATES,
    SUCCEEDED,
    TERMINAL,
    TYPES,
    IdempotencyConflict,
    JobNotFound,
    NotResumable,
    TooLateToCancel,
)
from workers.schemas import EnrollRequest, RecognitionRequest, TrainingRequest
from workers.submit import (
    InputNotFound,
    OutputPrefixTaken,
    Refused,
    resume_job,
    submit_enrollment,
    submit_recognition,
    submit_training,
)

jobs = Blueprint("jobs", __name__, url_prefix="/v1")

QUEUED = "the job, queued (200 when an Idempotency-Key replays an earlier submit)"
CHUNK = 1024 * 1024
PRESIGNED_S = 3600


@jobs.post("/jobs/training")
@endpoint(SUBMIT, body=TrainingRequest, success=("202", QUEUED), idempotent=True,
          example={"model": "lfw", "dataset_prefix": "datasets/lfw20"})
def submit_training_job():
    """Train a new version of a model from labelled photos (a folder per person, or a manifest)."""
    return _submitted(submit_training, TrainingRequest)


@jobs.post("/jobs/recognition")
@endpoint(SUBMIT, body=RecognitionRequest, success=("202", QUEUED), idempotent=True,
          example={"model": "lfw", "input_prefix": "inbox/"})
def submit_recognition_job():
    """Recognise every face in the photos under a prefix or in a manifest."""
    return _submitted(submit_recognition, RecognitionRequest)


@jobs.post("/jobs/enroll")
@endpoint(SUBMIT, body=EnrollRequest, success=("202", QUEUED), idempotent=True,
          example={"model": "gallery", "dataset_prefix": "datasets/lfw20"})
def submit_enrollment_job():
    """Add or update people in a centroid model without retraining anyone."""
    return _submitted(submit_enrollment, EnrollRequest)


def _submitted(submit, schema: type[BaseModel]):
    """Validate, submit and answer: 202 for a new job, 200 for the one an Idempotency-Key names."""
    try:
        # The idempotency scope: the route (the job type, in submit) and the client's key name.
        job, created = submit(runtime(), parse_body(schema), idempotency_key(), client=caller())
    except InputNotFound as err:
        raise NotFound(str(err)) from None
    except (OutputPrefixTaken, Refused) as err:
        raise Conflict(str(err)) from None
    except IdempotencyConflict as err:
        raise UnprocessableEntity(str(err)) from None
    return with_location(jsonify(job), job["id"]), 202 if created else 200


def with_location(response: Response, job_id: str) -> Response:
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return response


@jobs.get("/jobs")
@endpoint(READ, query=(
    {"name": "type", "in": "query", "schema": {"type": "string", "enum": list(TYPES)}},
    {"name": "state", "in": "query", "schema": {"type": "string", "enum": list(STATES)}},
    *PAGE_QUERY,
))
def list_jobs():
    """Jobs, newest first, filtered by type and state."""
    job_type, state = request.args.get("type"), request.args.get("state")
    if job_type and job_type not in TYPES:
        raise BadRequest(f"type must be one of {', '.join(TYPES)}")
    if state and state not in STATES:
        raise BadRequest(f"state must be one of {', '.join(STATES)}")
    limit, offset = page_args()
    found, total = runtime().jobs.list(job_type, state, limit, offset)
    return jsonify(jobs=found, total=total, limit=limit, offset=offset)


@jobs.get("/jobs/<job_id>")
@endpoint(READ)
def get_job(job_id: str):
    """A job: state, progress with its stage, result locations, error, recoveries."""
    return jsonify(find_job(job_id))


@jobs.post("/jobs/<job_id>/cancel")
@endpoint(SUBMIT)
def cancel_job(job_id: str):
    """Cancel a job; 409 if it already finished or is publishing its version."""
    job = find_job(job_id)
    if job["state"] in TERMINAL:
        raise Conflict(f"job {job_id} is already {job['state']}")
    try:
        return jsonify(runtime().jobs.cancel(job_id))
    except TooLateToCancel as err:
        raise Conflict(str(err)) from None


@jobs.post("/jobs/<job_id>/resume")
@endpoint(SUBMIT, success=("202", "the job, queued again"))
def resume_failed_job(job_id: str):
    """Run a failed job again; a recognition job keeps the chunks it finished."""
    find_job(job_id)
    try:
        return with_location(jsonify(resume_job(runtime(), job_id)), job_id), 202
    except NotResumable as err:
        raise Conflict(str(err)) from None


@jobs.get("/jobs/<job_id>/results")
@endpoint(READ, answers=JSONL, query=(
    {"name": "redirect", "in": "query", "description": "on S3, answer 302 to a presigned URL (default)",
     "schema": {"type": "boolean", "default": True}},))
def get_results(job_id: str):
    """A finished recognition job's results.jsonl: streamed, or on S3 a redirect to a presigned URL.

    ?redirect=false streams it from S3 too. 409 while the job has not succeeded.
    """
    key = _output(job_id, "results")
    storage = runtime().storage
    if isinstance(storage, S3Storage) and request.args.get("redirect", "true").lower() not in ("0", "false", "no"):
        url = storage.client.generate_presigned_url(
            "get_object", Params={"Bucket": storage.bucket, "Key": key}, ExpiresIn=PRESIGNED_S)
        return redirect(url, code=302)
    return Response(stream_with_context(_stream(storage, key)), mimetype=JSONL,
                    headers={"Content-Disposition": f'attachment; filename="{job_id}-results.jsonl"'})


@jobs.get("/jobs/<job_id>/summary")
@endpoint(READ)
def get_summary(job_id: str):
    """A finished recognition job's summary: photos, faces, unknowns, errors, identities, stage timings."""
    key = _output(job_id, "summary")
    try:
        return jsonify(runtime().storage.get_json(key))
    except MissingKey:
        raise NotFound(f"job {job_id} has no summary in storage any more") from None


def find_job(job_id: str) -> dict:
    """The job, or 404."""
    try:
        return runtime().jobs.get(job_id)
    except JobNotFound as err:
        raise NotFound(str(err)) from None


def finished_job(job_id: str, job_type: str, what: str) -> dict:
    """The job if it is a job_type job that succeeded; 404 if there is none, 409 saying why it has no `what`."""
    job = find_job(job_id)
    if job["type"] != job_type:
        raise Conflict(f"job {job_id} is a {job['type']} job: only {job_type} jobs have {what}")
    if job["state"] != SUCCEEDED:
        raise Conflict(f"job {job_id} is {job['state']}: its {what} is written when it succeeds")
    return job


def output_key(job: dict, what: str) -> str:
    """The storage key of a finished job's output `what` (its result names it), or 404."""
    key = (job.get("result") or {}).get(what)
    if not key:
        raise NotFound(f"job {job['id']} has no {what}")
    return key


def output_file(job_id: str, job_type: str, what: str, mimetype: str) -> Response:
    """A finished job's output file, as it is stored; 404 once it is gone from storage."""
    key = output_key(finished_job(job_id, job_type, what), what)
    try:
        return Response(runtime().storage.get(key), mimetype=mimetype)
    except MissingKey:
        raise NotFound(f"job {job_id}'s {what} is no longer in storage") from None


def _output(job_id: str, what: str) -> str:
    return output_key(finished_job(job_id, "recognition", what), what)


def _stream(storage, key: str) -> Iterator[bytes]:
    if isinstance(storage, LocalStorage):
        with open(storage.path(key), "rb") as file:
            while chunk := file.read(CHUNK):
                yield chunk
    elif isinstance(storage, S3Storage):
        body = storage.client.get_object(Bucket=storage.bucket, Key=key)["Body"]
        yield from body.iter_chunks(CHUNK)
    else:
        yield storage.get(key)

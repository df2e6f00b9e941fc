"""/v1/schedules: retraining on a cron schedule (needs Redis). Every route needs an admin key: schedules
decide what trains and what gets promoted."""

from __future__ import annotations

import uuid

from flask import Blueprint, jsonify
from werkzeug.exceptions import BadRequest, NotFound, ServiceUnavailable

from api.context import runtime
from api.endpoints import ADMIN, endpoint
from api.jobs import with_location
from api.validation import PAGE_QUERY, idempotency_key, page_args, parse_body
from workers import schedules as scheduling
from workers.schemas import ScheduleRequest

schedules = Blueprint("schedules", __name__, url_prefix="/v1")


@schedules.get("/schedules")
@endpoint(ADMIN, query=PAGE_QUERY)
def list_schedules():
    """Retraining schedules; paginated with limit and offset."""
    limit, offset = page_args()
    found = scheduling.list_schedules(runtime().storage)
    return jsonify(schedules=found[offset:offset + limit], total=len(found), limit=limit, offset=offset)


@schedules.post("/schedules")
@endpoint(ADMIN, body=ScheduleRequest, success=("201", "the schedule"),
          example={"model": "lfw", "dataset_prefix": "datasets/lfw20", "cron": "0 3 * * *", "promotion_margin": 0.01})
def create_schedule():
    """Retrain a model on a cron schedule."""
    try:
        schedule = scheduling.create_schedule(runtime(), parse_body(ScheduleRequest))
    except ValueError as err:
        raise BadRequest(str(err)) from None
    except RuntimeError as err:
        raise ServiceUnavailable(str(err)) from None
    return jsonify(schedule), 201


@schedules.get("/schedules/<schedule_id>")
@endpoint(ADMIN)
def get_schedule(schedule_id: str):
    """A schedule."""
    try:
        return jsonify(scheduling.get_schedule(runtime().storage, schedule_id))
    except scheduling.ScheduleNotFound as err:
        raise NotFound(str(err)) from None


@schedules.delete("/schedules/<schedule_id>")
@endpoint(ADMIN, success=("204", "deleted"))
def delete_schedule(schedule_id: str):
    """Delete a schedule."""
    try:
        scheduling.delete_schedule(runtime(), schedule_id)
    except scheduling.ScheduleNotFound as err:
        raise NotFound(str(err)) from None
    except RuntimeError as err:
        raise ServiceUnavailable(str(err)) from None
    return "", 204


@schedules.post("/schedules/<schedule_id>/run")
@endpoint(ADMIN, idempotent=True, success=("202", "the training job of the run"))
def run_schedule_now(schedule_id: str):
    """Run a schedule's training now, as beat would at its next time."""
    run_id = f"manual-{idempotency_key() or uuid.uuid4().hex}"
    try:
        job, created = scheduling.submit_scheduled_run(runtime(), schedule_id, run_id)
    except scheduling.ScheduleNotFound as err:
        raise NotFound(str(err)) from None
    return with_location(jsonify(job), job["id"]), 202 if created else 200

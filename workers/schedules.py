"""Scheduled retraining: cron schedules kept by celery-redbeat in Redis, one beat holding the lock.

Each schedule's definition is stored in storage (``schedules/<id>.json``, the source of truth) and
as a RedBeat entry that runs ``facerec.scheduled_training`` on the cron expression. A scheduled run
submits a training job that trains only if the dataset changed since the current version, and
promotes the new version only if it is not worse than the current one by more than the margin.
"""

from __future__ import annotations

import uuid

from celery.schedules import crontab

from pipeline.storage import MissingKey
from workers import runtime
from workers.app import app
from workers.jobs import now
from workers.submit import ScheduleRequest, TrainingRequest, submit_training

TASK = "facerec.scheduled_training"


class ScheduleNotFound(LookupError):
    def __str__(self) -> str:
        return f"no schedule with id {self.args[0]}"


def parse_cron(expression: str) -> crontab:
    """A standard 5-field cron expression (minute hour day-of-month month day-of-week) as a crontab."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression {expression!r} must have 5 fields: minute hour day month weekday")
    minute, hour, day_of_month, month, day_of_week = fields
    try:
        return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month,
                       day_of_week=day_of_week)
    except ValueError as err:
        raise ValueError(f"invalid cron expression {expression!r}: {err}") from None


def _require_redis() -> None:
    if not runtime.settings().redis_url:
        raise RuntimeError("scheduled retraining needs Redis: set REDIS_URL (celery-redbeat keeps schedules there)")


def _entry(schedule: dict):
    from redbeat import RedBeatSchedulerEntry

    return RedBeatSchedulerEntry(f"facerec-schedule-{schedule['id']}", TASK, parse_cron(schedule["cron"]),
                                 args=[schedule["id"]], options={"queue": runtime.settings().queue_default},
                                 app=app)


def create_schedule(request: ScheduleRequest) -> dict:
    _require_redis()
    parse_cron(request.cron)
    schedule = {"id": uuid.uuid4().hex, **request.model_dump(exclude_none=True), "created_at": now()}
    runtime.storage().put_json(f"schedules/{schedule['id']}.json", schedule)
    _entry(schedule).save()
    return schedule


def get_schedule(schedule_id: str) -> dict:
    if not schedule_id.isalnum():
        raise ScheduleNotFound(schedule_id)
    try:
        return runtime.storage().get_json(f"schedules/{schedule_id}.json")
    except MissingKey:
        raise ScheduleNotFound(schedule_id) from None


def list_schedules() -> list[dict]:
    storage = runtime.storage()
    return sorted((storage.get_json(key) for key in storage.list("schedules/") if key.endswith(".json")),
                  key=lambda s: s["created_at"])


def delete_schedule(schedule_id: str) -> None:
    schedule = get_schedule(schedule_id)
    _require_redis()
    _entry(schedule).delete()
    runtime.storage().delete(f"schedules/{schedule_id}.json")


def submit_scheduled_run(schedule_id: str, run_id: str) -> tuple[dict, bool]:
    """Submit the training job of one scheduled run; run_id makes a redelivered run submit nothing new."""
    schedule = get_schedule(schedule_id)
    request = TrainingRequest(
        model=schedule["model"], model_type=schedule["model_type"],
        dataset_prefix=schedule.get("dataset_prefix"), dataset_manifest=schedule.get("dataset_manifest"),
        promotion_margin=schedule["promotion_margin"], skip_if_unchanged=True, schedule_id=schedule_id,
    )
    return submit_training(request, idempotency_key=f"schedule-{schedule_id}-{run_id}")

"""Scheduled retraining: cron schedules kept by celery-redbeat in Redis, one beat holding the lock.

Each schedule's definition is stored in storage (``schedules/<id>.json``, the source of truth) and
as a RedBeat entry that runs ``facerec.scheduled_training`` on the cron expression. A scheduled run
submits a training job that trains only if the dataset changed both since the current version and
since the schedule last trained (``schedules/<id>/last-training.json``): a candidate that was not
made current is not trained again on the same photos at every tick. The new version is promoted
only if it is not worse than the current one by more than the margin, on the schedule's
validation_manifest when it has one.
"""

from __future__ import annotations

import re
import uuid

from celery.schedules import crontab

from pipeline.dataset import Item, manifest_hash
from pipeline.storage import MissingKey, Storage
from workers.jobs import now
from workers.runtime import Runtime
from workers.schemas import ScheduleRequest, TrainingRequest
from workers.submit import submit_training
from workers.task_names import SCHEDULED_TRAINING


class ScheduleNotFound(LookupError):
    def __str__(self) -> str:
        return f"no schedule with id {self.args[0]}"


# (name, lowest, highest, names) of each cron field, in order; names count from lowest.
CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day-of-month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    ("day-of-week", 0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)


def parse_cron(expression: str) -> crontab:
    """A standard 5-field cron expression (minute hour day-of-month month day-of-week) as a crontab.

    Each field is checked here first: celery's parser reads a backwards range such as 1-0 as a wrap
    around the whole field (every minute), and names the wrong field in some of its errors.
    """
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression {expression!r} must have 5 fields: minute hour day month weekday")
    for text, spec in zip(fields, CRON_FIELDS, strict=True):
        problem = _cron_field_problem(text, *spec[1:])
        if problem:
            raise ValueError(f"invalid cron expression {expression!r}: the {spec[0]} field {text!r} {problem}")
    minute, hour, day_of_month, month, day_of_week = fields
    try:
        return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month,
                       day_of_week=day_of_week)
    except ValueError as err:
        raise ValueError(f"invalid cron expression {expression!r}: {err}") from None


def _cron_field_problem(text: str, low: int, high: int, names: tuple[str, ...]) -> str | None:
    """What is wrong with one cron field (a comma-separated list of *, N, N-M, */S or N-M/S), or None."""
    def value(word: str) -> int | None:
        if word.isdigit():
            return int(word)
        return names.index(word.lower()) + low if word.lower() in names else None

    allowed = f"{low}-{high}" + (f" or {names[0]}-{names[-1]}" if names else "")
    for item in text.split(","):
        base, slash, step = item.partition("/")
        if slash and not (step.isdigit() and 1 <= int(step) <= high - low + 1):
            return f"has step {step!r}: a step must be a whole number from 1 to {high - low + 1}"
        if base == "*":
            continue
        start_word, dash, end_word = base.partition("-")
        if slash and not dash:
            return f"has {item!r}: a step goes after * or a range (N-M/S)"
        start, end = value(start_word), value(end_word) if dash else value(start_word)
        if start is None or end is None:
            return f"has {item!r}: values must be numbers in {allowed}"
        if not (low <= start <= high and low <= end <= high):
            return f"has {item!r}: values must be in {allowed}"
        if start > end:
            return f"has the range {base!r}, which runs backwards: write the lower value first"
    return None


def _require_redis(runtime: Runtime) -> None:
    if not runtime.settings.redis_url:
        raise RuntimeError("scheduled retraining needs Redis: set REDIS_URL (celery-redbeat keeps schedules there)")


def _entry(runtime: Runtime, schedule: dict):
    from redbeat import RedBeatSchedulerEntry

    return RedBeatSchedulerEntry(f"facerec-schedule-{schedule['id']}", SCHEDULED_TRAINING,
                                 parse_cron(schedule["cron"]), args=[schedule["id"]],
                                 options={"queue": runtime.settings.queue_default}, app=runtime.celery)


def create_schedule(runtime: Runtime, request: ScheduleRequest) -> dict:
    _require_redis(runtime)
    parse_cron(request.cron)
    schedule = {"id": uuid.uuid4().hex, **request.model_dump(exclude_none=True), "created_at": now()}
    runtime.storage.put_json(f"schedules/{schedule['id']}.json", schedule)
    _entry(runtime, schedule).save()
    return schedule


ID_PATTERN = re.compile(r"[0-9a-f]{32}")  # ids are uuid4().hex; anything else is no schedule


def get_schedule(storage: Storage, schedule_id: str) -> dict:
    if not ID_PATTERN.fullmatch(schedule_id):
        raise ScheduleNotFound(schedule_id)
    try:
        return storage.get_json(f"schedules/{schedule_id}.json")
    except MissingKey:
        raise ScheduleNotFound(schedule_id) from None


def list_schedules(storage: Storage) -> list[dict]:
    # Only the definitions, not what each schedule remembers under schedules/<id>/.
    definitions = [key for key in storage.list("schedules/")
                   if ID_PATTERN.fullmatch(key.removeprefix("schedules/").removesuffix(".json"))]
    return sorted((storage.get_json(key) for key in definitions), key=lambda s: s["created_at"])


def delete_schedule(runtime: Runtime, schedule_id: str) -> None:
    schedule = get_schedule(runtime.storage, schedule_id)
    _require_redis(runtime)
    _entry(runtime, schedule).delete()
    runtime.storage.delete(f"schedules/{schedule_id}.json")
    runtime.storage.delete(_last_training_key(schedule_id))


def _last_training_key(schedule_id: str) -> str:
    return f"schedules/{schedule_id}/last-training.json"


def remember_training(storage: Storage, schedule_id: str, job_id: str, record: dict) -> None:
    """Remember what a schedule's run trained on and what became of the version, promoted or not."""
    promotion = record["promotion"]
    storage.put_json(_last_training_key(schedule_id), {
        "dataset_manifest_hash": record["dataset_manifest_hash"], "version": record["version"], "job": job_id,
        "promoted": promotion["promote"], "reason": promotion["reason"], "trained_at": now()})


def last_training(storage: Storage, schedule_id: str) -> dict | None:
    """What the schedule last trained on (remember_training's record); None if it has not trained yet."""
    try:
        return storage.get_json(_last_training_key(schedule_id))
    except MissingKey:
        return None


def unchanged_since_last_training(storage: Storage, schedule_id: str | None, items: list[Item]) -> str | None:
    """Why a run of the schedule should train nothing, when the schedule last trained on exactly these
    photos and labels; None when it should train (no schedule, never trained, or the data changed)."""
    last = last_training(storage, schedule_id) if schedule_id else None
    if last is None or last["dataset_manifest_hash"] != manifest_hash(items):
        return None
    outcome = "made current" if last["promoted"] else f"not made current ({last['reason']})"
    return (f"dataset unchanged since this schedule last trained, in job {last['job']}: version {last['version']}, "
            f"{outcome}; nothing trained")


def submit_scheduled_run(runtime: Runtime, schedule_id: str, run_id: str) -> tuple[dict, bool]:
    """Submit the training job of one scheduled run; run_id makes a redelivered run submit nothing new."""
    schedule = get_schedule(runtime.storage, schedule_id)
    request = TrainingRequest(
        model=schedule["model"], model_type=schedule["model_type"],
        dataset_prefix=schedule.get("dataset_prefix"), dataset_manifest=schedule.get("dataset_manifest"),
        validation_manifest=schedule.get("validation_manifest"), promotion_margin=schedule["promotion_margin"],
        skip_if_unchanged=True, schedule_id=schedule_id, priority=schedule.get("priority", "high"),
    )
    return submit_training(runtime, request, idempotency_key=f"schedule-{schedule_id}-{run_id}")

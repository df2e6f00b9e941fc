"""Celery tasks. Each is thin: it reads the job, calls pipeline/, and records the outcome.

Tasks are idempotent: a redelivered chunk whose predictions exist is not computed again, and a job in
a final state is never changed. Transient storage and network errors are retried with backoff.
"""

from __future__ import annotations

import json
import logging
import time

from botocore.exceptions import BotoCoreError
from celery import Task, chord

from pipeline import registry
from pipeline.dataset import load_items
from pipeline.enroll import enroll_people
from pipeline.storage import MissingKey, StorageError
from pipeline.train import TrainingParams, dataset_unchanged, train_model
from workers import runtime
from workers.app import app
from workers.jobs import CANCELLED, TERMINAL

log = logging.getLogger(__name__)

TRANSIENT_ERRORS = (StorageError, BotoCoreError, ConnectionError, TimeoutError)
MAX_DELIVERIES = 3


class JobCancelled(Exception):
    pass


class JobTask(Task):
    """A task whose first argument is a job id: failures after the last retry fail the job."""

    acks_late = True
    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = 2
    retry_backoff_max = 120
    retry_jitter = True
    max_retries = runtime.settings().task_max_retries

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        runtime.job_store().fail(args[0], f"{type(exc).__name__}: {exc}", {"task": self.name})

    def begin(self, job_id: str) -> dict | None:
        """The job, or None when the task must not run: job finished, or this message was lost too often."""
        jobs = runtime.job_store()
        job = jobs.get(job_id)
        if job["state"] in TERMINAL:
            return None
        deliveries = jobs.count_delivery(job_id, f"{self.request.id}:{self.request.retries}")
        if deliveries > MAX_DELIVERIES:
            jobs.fail(job_id, f"task {self.name} was delivered {deliveries} times without finishing "
                              "(worker lost: crash or out of memory?)")
            return None
        return job


# -- training --------------------------------------------------------------------------------

@app.task(bind=True, base=JobTask, name="facerec.train")
def train(self: JobTask, job_id: str) -> None:
    job = self.begin(job_id)
    if job is None:
        return
    jobs, storage, params = runtime.job_store(), runtime.storage(), job["params"]
    jobs.start(job_id)

    def on_progress(stage: str, done: int, total: int) -> None:
        if jobs.set_progress(job_id, done, total, stage)["state"] == CANCELLED:
            raise JobCancelled

    try:
        items = load_items(storage, params.get("dataset_prefix"), params.get("dataset_manifest"))
        if params.get("skip_if_unchanged") and dataset_unchanged(storage, params["model"], items):
            jobs.succeed(job_id, {"model": params["model"], "trained": False,
                                  "decision": "dataset unchanged since the current version: nothing trained"})
            return
        validation = (load_items(storage, manifest=params["validation_manifest"])
                      if params.get("validation_manifest") else None)
        training = TrainingParams(model_type=params.get("model_type", "embedding"),
                                  model_params=params.get("model_params", {}),
                                  validation_fraction=params.get("validation_fraction", 0.2),
                                  stranger_fraction=params.get("stranger_fraction", 0.0))
        record = train_model(storage, runtime.face_pipeline(), items, params["model"], training, on_progress,
                             validation_items=validation, promotion_margin=params.get("promotion_margin"))
    except JobCancelled:
        return
    except (ValueError, LookupError, MissingKey) as err:  # bad input: retrying cannot help
        jobs.fail(job_id, str(err))
        return
    jobs.succeed(job_id, _version_result(record, trained=True, promotion=record["promotion"]))


@app.task(bind=True, base=JobTask, name="facerec.enroll")
def enroll(self: JobTask, job_id: str) -> None:
    """Add or update people in a centroid model: a new version, no one else retrained."""
    job = self.begin(job_id)
    if job is None:
        return
    jobs, storage, params = runtime.job_store(), runtime.storage(), job["params"]
    jobs.start(job_id)
    try:
        items = load_items(storage, params.get("dataset_prefix"), params.get("dataset_manifest"))
        record = enroll_people(storage, runtime.face_pipeline(), items, params["model"],
                               on_progress=lambda done, total: jobs.set_progress(job_id, done, total, "enrolling"))
    except (ValueError, LookupError, MissingKey) as err:
        jobs.fail(job_id, str(err))
        return
    jobs.succeed(job_id, _version_result(record, enrolled=record["enrolled"]))


@app.task(bind=True, name="facerec.scheduled_training", acks_late=True)
def scheduled_training(self: Task, schedule_id: str) -> None:
    """Run by celery beat: submit the schedule's training job (once per schedule and minute)."""
    from workers.schedules import submit_scheduled_run

    submit_scheduled_run(schedule_id, self.request.id)


def _version_result(record: dict, **extra) -> dict:
    return {"model": record["model"], "version": record["version"], "model_type": record["model_type"],
            "metrics": record["metrics"], "report": record["report_key"],
            "report_html": record.get("report_html_key"),
            "model_prefix": registry.version_prefix(record["model"], record["version"]), **extra}


# -- bulk recognition ------------------------------------------------------------------------

def _output_prefix(job: dict) -> str:
    return job["params"].get("output_prefix") or f"jobs/{job['id']}/output"


def _input_keys(job: dict, output: str) -> list[str]:
    """The job's photos, each once, in input order; never those under its own output prefix."""
    storage, params = runtime.storage(), job["params"]
    if params.get("input_manifest"):
        lines = storage.get(params["input_manifest"]).decode("utf-8").splitlines()
        keys = [line.strip() for line in lines if line.strip()]
    else:
        prefix = params["input_prefix"].rstrip("/") + "/"
        # Sorted: backends list in different orders, and a plan should not depend on the backend.
        keys = sorted(k for k in storage.list(prefix) if not k.startswith(output + "/"))
    return list(dict.fromkeys(keys))


@app.task(bind=True, base=JobTask, name="facerec.plan_recognition")
def plan_recognition(self: JobTask, job_id: str) -> None:
    """Split the input into chunks, then run one chunk task per chunk and a final summary task."""
    job = self.begin(job_id)
    if job is None:
        return
    jobs, storage, params = runtime.job_store(), runtime.storage(), job["params"]
    output = _output_prefix(job)
    plan_key = f"{output}/plan.json"
    try:
        if storage.exists(plan_key):  # redelivered: keep the plan already made
            plan = storage.get_json(plan_key)
        else:
            version = registry.resolve_version(storage, params["model"], params.get("model_version"))
            keys = _input_keys(job, output)
            if not keys:
                raise ValueError("the input holds no photos")
            size = runtime.settings().chunk_size
            plan = {"model": params["model"], "model_version": version, "images": len(keys),
                    "chunks": (len(keys) + size - 1) // size, "chunk_size": size}
            for index in range(plan["chunks"]):
                storage.put_json(f"{output}/chunks/{index:05d}.json", keys[index * size:(index + 1) * size])
            storage.put_json(plan_key, plan)
    except (ValueError, LookupError, MissingKey) as err:
        jobs.fail(job_id, str(err))
        return
    jobs.start(job_id, total=plan["images"], model_version=plan["model_version"])
    chord(recognize_chunk.si(job_id, i) for i in range(plan["chunks"]))(finish_recognition.si(job_id))


@app.task(bind=True, base=JobTask, name="facerec.recognize_chunk")
def recognize_chunk(self: JobTask, job_id: str, index: int) -> None:
    """Recognise one chunk's photos and write its predictions file, unless it already exists."""
    from pipeline.recognize import recognize

    job = self.begin(job_id)
    if job is None:
        return
    storage, output = runtime.storage(), _output_prefix(job)
    predictions_key = f"{output}/predictions/{index:05d}.jsonl"
    if storage.exists(predictions_key):
        return
    plan = storage.get_json(f"{output}/plan.json")
    keys = storage.get_json(f"{output}/chunks/{index:05d}.json")
    model = runtime.model(plan["model"], plan["model_version"])
    faces = runtime.face_pipeline()
    photos = ((key, data) for key, data in storage.get_many(keys) if not isinstance(data, MissingKey))
    started = time.perf_counter()
    found = {result["key"]: result for result in recognize(faces, model, photos)}
    timings = dict(faces.timings_ms)
    lines = [json.dumps(found.get(key) or {"key": key, "model": plan["model"], "model_version": plan["model_version"],
                                           "error": "missing from storage"})
             for key in keys]
    timings["total"] = (time.perf_counter() - started) * 1000
    storage.put_json(f"{output}/stats/{index:05d}.json", {"images": len(keys), "timings_ms": timings})
    storage.put(predictions_key, ("\n".join(lines) + "\n").encode())
    runtime.job_store().add_progress(job_id, len(keys))


@app.task(bind=True, base=JobTask, name="facerec.finish_recognition")
def finish_recognition(self: JobTask, job_id: str) -> None:
    """Join the chunks' predictions into the results manifest and write the summary."""
    job = self.begin(job_id)
    if job is None:
        return
    storage, output = runtime.storage(), _output_prefix(job)
    plan = storage.get_json(f"{output}/plan.json")
    parts, timings = [], {}
    summary = {"images": 0, "faces": 0, "unknown_faces": 0, "images_without_face": 0, "errors": 0,
               "identities": {}}
    for index in range(plan["chunks"]):
        data = storage.get(f"{output}/predictions/{index:05d}.jsonl")
        parts.append(data)
        for line in data.decode().splitlines():
            result = json.loads(line)
            summary["images"] += 1
            if "error" in result:
                summary["errors"] += 1
                continue
            summary["faces"] += len(result["faces"])
            summary["images_without_face"] += not result["faces"]
            for face in result["faces"]:
                summary["identities"][face["identity"]] = summary["identities"].get(face["identity"], 0) + 1
        stats = storage.get_json(f"{output}/stats/{index:05d}.json")
        for stage, ms in stats["timings_ms"].items():
            timings[stage] = timings.get(stage, 0.0) + ms
    summary["unknown_faces"] = summary["identities"].get("unknown", 0)
    summary["timings_ms"] = {stage: round(ms, 1) for stage, ms in timings.items()}
    summary.update(model=plan["model"], model_version=plan["model_version"], chunks=plan["chunks"])
    results_key, summary_key = f"{output}/results.jsonl", f"{output}/summary.json"
    storage.put(results_key, b"".join(parts))
    storage.put_json(summary_key, summary)
    runtime.job_store().succeed(job_id, {
        "results": results_key, "summary": summary_key, "output_prefix": output,
        "model": plan["model"], "model_version": plan["model_version"],
        **{k: summary[k] for k in ("images", "faces", "unknown_faces", "errors")},
    })

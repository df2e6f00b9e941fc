"""Submitting jobs: validate the request, record the job, enqueue its first task.

The API and the demo both submit through here, so every job is validated the same way and every
job runs through Celery. Tasks are sent by name: submitting never imports the pipeline's models.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from pipeline.registry import NAME_PATTERN
from pipeline.storage import check_key
from workers import runtime
from workers.app import app

ModelName = Annotated[str, StringConstraints(pattern=NAME_PATTERN.pattern)]
StorageKey = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class TrainingRequest(BaseModel):
    """Train a model from labelled photos: a prefix with one folder per person, or a JSONL manifest."""

    model_config = ConfigDict(extra="forbid")
    model: ModelName = "default"
    dataset_prefix: StorageKey | None = None
    dataset_manifest: StorageKey | None = None
    validation_fraction: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def one_source(self):
        _check_one_source(self.dataset_prefix, self.dataset_manifest, "dataset_prefix", "dataset_manifest")
        return self


class RecognitionRequest(BaseModel):
    """Recognise every face in the photos under a prefix, or in those a manifest (one key per line) lists."""

    model_config = ConfigDict(extra="forbid")
    model: ModelName = "default"
    model_version: str | None = None
    input_prefix: StorageKey | None = None
    input_manifest: StorageKey | None = None
    output_prefix: StorageKey | None = None

    @model_validator(mode="after")
    def one_source(self):
        _check_one_source(self.input_prefix, self.input_manifest, "input_prefix", "input_manifest")
        if self.output_prefix:
            check_key(self.output_prefix.rstrip("/"))
        return self


def _check_one_source(prefix: str | None, manifest: str | None, prefix_name: str, manifest_name: str) -> None:
    if bool(prefix) == bool(manifest):
        raise ValueError(f"give exactly one of {prefix_name} and {manifest_name}")
    check_key((prefix or manifest).rstrip("/"))


def submit_training(request: TrainingRequest, idempotency_key: str | None = None) -> tuple[dict, bool]:
    """Record and enqueue a training job; returns (job, created)."""
    return _submit("training", "facerec.train", request, idempotency_key)


def submit_recognition(request: RecognitionRequest, idempotency_key: str | None = None) -> tuple[dict, bool]:
    """Record and enqueue a bulk-recognition job; returns (job, created)."""
    return _submit("recognition", "facerec.plan_recognition", request, idempotency_key)


def _submit(job_type: str, task: str, request: BaseModel, idempotency_key: str | None) -> tuple[dict, bool]:
    job, created = runtime.job_store().create(job_type, request.model_dump(exclude_none=True), idempotency_key)
    if created:
        try:
            app.send_task(task, args=[job["id"]])
        except Exception as err:
            runtime.job_store().fail(job["id"], f"could not enqueue the job: {err}")
            raise
    return job, created

"""Submitting jobs: validate the request, record the job, enqueue its first task.

The API and the demo both submit through here, so every job is validated the same way and every
job runs through Celery. Tasks are sent by name: submitting never imports the pipeline's models.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from pipeline.registry import NAME_PATTERN
from pipeline.storage import check_key
from workers import runtime
from workers.app import app

ModelName = Annotated[str, StringConstraints(pattern=NAME_PATTERN.pattern)]
StorageKey = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
# The model types of pipeline.models, named here so that submitting never imports the models.
ModelType = Literal["embedding", "centroid", "cnn", "finetune"]


class DatasetSource(BaseModel):
    """Labelled photos: a prefix with one folder per person, or a JSONL manifest of {"key", "label"}."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: ModelName = "default"
    dataset_prefix: StorageKey | None = None
    dataset_manifest: StorageKey | None = None

    @model_validator(mode="after")
    def one_source(self):
        _check_one_source(self.dataset_prefix, self.dataset_manifest, "dataset_prefix", "dataset_manifest")
        return self


class TrainingRequest(DatasetSource):
    """Train a new version of a model. With promotion_margin set, the new version becomes current
    only if its validation accuracy is not below the current version's by more than the margin."""

    model_type: ModelType = "embedding"
    model_params: dict = Field(default_factory=dict)
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    validation_manifest: StorageKey | None = None
    stranger_fraction: float = Field(0.0, ge=0, lt=1)
    promotion_margin: float | None = Field(None, ge=0, le=1)
    skip_if_unchanged: bool = False
    schedule_id: str | None = None


class EnrollRequest(DatasetSource):
    """Add or update people in a centroid model, from a folder per person or a manifest."""


class ScheduleRequest(DatasetSource):
    """Retrain a model on a cron schedule (minute hour day-of-month month day-of-week, UTC)."""

    cron: Annotated[str, StringConstraints(min_length=9, max_length=100)]
    model_type: ModelType = "embedding"
    promotion_margin: float = Field(0.0, ge=0, le=1)


class RecognitionRequest(BaseModel):
    """Recognise every face in the photos under a prefix, or in those a manifest (one key per line) lists."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
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


def submit_enrollment(request: EnrollRequest, idempotency_key: str | None = None) -> tuple[dict, bool]:
    """Record and enqueue an enrolment job; returns (job, created)."""
    return _submit("enroll", "facerec.enroll", request, idempotency_key)


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

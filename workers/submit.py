"""Submitting jobs: validate the request, record the job, enqueue its first task.

The API and the demo both submit through here, so every job is validated the same way and every
job runs through Celery. Tasks are sent by name: submitting never imports the pipeline's models.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from pipeline import registry
from pipeline.models.params import validate_model_params
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
    only if its accuracy, on photos neither version was fitted or tuned on, is not below the current
    version's by more than the margin."""

    model_type: ModelType = "embedding"
    model_params: dict = Field(default_factory=dict)
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    validation_manifest: StorageKey | None = None
    stranger_fraction: float = Field(0.0, ge=0, lt=1)
    promotion_margin: float | None = Field(None, ge=0, le=1)
    skip_if_unchanged: bool = False
    schedule_id: str | None = None

    @model_validator(mode="after")
    def bounded_model_params(self):
        self.model_params = validate_model_params(self.model_type, self.model_params)
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError("validation_fraction + test_fraction must leave at least 10% of the photos to train on")
        return self


class EnrollRequest(DatasetSource):
    """Add or update people in a centroid model, from a folder per person or a manifest."""


class ScheduleRequest(DatasetSource):
    """Retrain a model on a cron schedule (minute hour day-of-month month day-of-week, UTC)."""

    cron: Annotated[str, StringConstraints(min_length=9, max_length=100)]
    model_type: ModelType = "embedding"
    promotion_margin: float = Field(0.0, ge=0, le=1)
    validation_manifest: StorageKey | None = None  # fixed photos every run's promotion is decided on (not tuned on)


class RecognitionRequest(BaseModel):
    """Recognise every face in the photos under a prefix, or in those a manifest (one key per line) lists."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: ModelName = "default"
    model_version: str | None = None
    input_prefix: StorageKey | None = None
    input_manifest: StorageKey | None = None
    output_prefix: StorageKey | None = None
    annotate: bool = False  # also write each photo with its faces drawn, under <output>/annotated/

    @model_validator(mode="after")
    def one_source(self):
        _check_one_source(self.input_prefix, self.input_manifest, "input_prefix", "input_manifest")
        if self.output_prefix:
            check_key(self.output_prefix.rstrip("/"))
            _check_output_prefix(self.output_prefix)
        return self


class PhotoRequest(BaseModel):
    """Recognise every face in one photo and wait for the answer. Send the photo as a multipart file field
    named ``photo`` (with these fields as form fields), or send JSON naming a photo already in storage
    (``key``). The answer comes within wait_s seconds, else 202 with the request to poll."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: ModelName = "default"
    model_version: str | None = None
    key: StorageKey | None = None
    wait_s: float = Field(10.0, ge=0, le=30)

    @model_validator(mode="after")
    def valid_key(self):
        if self.key is not None:
            check_key(self.key)
        return self


def _check_one_source(prefix: str | None, manifest: str | None, prefix_name: str, manifest_name: str) -> None:
    if bool(prefix) == bool(manifest):
        raise ValueError(f"give exactly one of {prefix_name} and {manifest_name}")
    check_key(prefix.rstrip("/") if prefix else manifest)  # a manifest is an object: no trailing '/'


def _check_output_prefix(prefix: str) -> None:
    top = prefix.split("/", 1)[0]
    if top in RESERVED_PREFIXES:
        raise ValueError(f"output_prefix {prefix!r} is inside {top}/, where the system keeps its own records "
                         f"(reserved: {', '.join(sorted(RESERVED_PREFIXES))})")


# interactive/: single photos sent to POST /v1/recognize, and their answers (workers.interactive).
RESERVED_PREFIXES = {"jobs", "models", "schedules", "idempotency", "datasets", "interactive"}
CLAIM = ".facerec-job.json"  # under an output prefix: the job that owns it
ENTRY_TASKS = {"training": "facerec.train", "enroll": "facerec.enroll", "recognition": "facerec.plan_recognition"}


class InputNotFound(LookupError):
    """A manifest, prefix or model version named in a request does not exist."""


class OutputPrefixTaken(Exception):
    """The output prefix already holds objects, another job's output perhaps."""


def submit_training(request: TrainingRequest, idempotency_key: str | None = None,
                    client: str = "") -> tuple[dict, bool]:
    """Record and enqueue a training job; returns (job, created)."""
    storage = runtime.storage()
    _check_dataset(storage, request.dataset_prefix, request.dataset_manifest)
    if request.validation_manifest:
        _check_manifest(storage, request.validation_manifest, "validation_manifest")
    return _submit("training", request, idempotency_key, client)


def submit_enrollment(request: EnrollRequest, idempotency_key: str | None = None,
                      client: str = "") -> tuple[dict, bool]:
    """Record and enqueue an enrolment job; returns (job, created)."""
    storage = runtime.storage()
    _check_dataset(storage, request.dataset_prefix, request.dataset_manifest)
    _check_model_version(storage, request.model, None)
    return _submit("enroll", request, idempotency_key, client)


def submit_recognition(request: RecognitionRequest, idempotency_key: str | None = None,
                       client: str = "") -> tuple[dict, bool]:
    """Record and enqueue a bulk-recognition job; returns (job, created). An output prefix is claimed
    for the job: one that holds anything already is refused (OutputPrefixTaken)."""
    storage = runtime.storage()
    _check_dataset(storage, request.input_prefix, request.input_manifest)
    _check_model_version(storage, request.model, request.model_version)

    def claim_output(job: dict) -> None:
        if not request.output_prefix:
            return
        prefix = request.output_prefix.rstrip("/")
        if next(iter(storage.list(prefix + "/")), None) is not None or \
                not storage.put_new(f"{prefix}/{CLAIM}", json.dumps({"job_id": job["id"]}).encode()):
            raise OutputPrefixTaken(f"output_prefix {prefix!r} already holds objects (another job's output?): "
                                    "choose an empty prefix, or leave it out to write under the job's folder")

    return _submit("recognition", request, idempotency_key, client, claim_output)


def submit_photo(request: PhotoRequest, request_id: str, key: str) -> str:
    """Enqueue the recognition of one stored photo on the interactive queue; returns the model version
    it will use. Raises InputNotFound for a model or version that does not exist."""
    from workers import interactive

    version = _check_model_version(runtime.storage(), request.model, request.model_version)
    interactive.send(request_id, key, request.model, version)
    return version


def resume_job(job_id: str) -> dict:
    """Run a failed job again from where it stopped (a recognition job keeps its finished chunks)."""
    job, _ = runtime.job_store().resume(job_id, "resumed by a user")
    app.send_task(ENTRY_TASKS[job["type"]], args=[job_id])
    return job


def _submit(job_type: str, request: BaseModel, idempotency_key: str | None, client: str,
            prepare=lambda job: None) -> tuple[dict, bool]:
    jobs = runtime.job_store()
    job, created = jobs.create(job_type, request.model_dump(exclude_none=True), idempotency_key,
                               scope=client, prepare=prepare)
    if created:
        try:
            app.send_task(ENTRY_TASKS[job_type], args=[job["id"]])
        except Exception as err:
            jobs.fail(job["id"], f"could not enqueue the job: {err}")
            raise
    return job, created


def _check_dataset(storage, prefix: str | None, manifest: str | None) -> None:
    if manifest:
        _check_manifest(storage, manifest, "the manifest")
    elif next(iter(storage.list(prefix.rstrip("/") + "/")), None) is None:
        raise InputNotFound(f"nothing is stored under the prefix {prefix!r}")


def _check_manifest(storage, key: str, what: str) -> None:
    if not storage.exists(key):
        raise InputNotFound(f"{what} {key!r} does not exist in storage")


def _check_model_version(storage, model: str, version: str | None) -> str:
    try:
        return registry.resolve_version(storage, model, version)
    except LookupError as err:
        raise InputNotFound(str(err)) from None

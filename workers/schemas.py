"""The requests a client may send, as pydantic models: what validates them and what the OpenAPI document shows.

Importing this module has no side effects (no Celery app, no settings, no folders made), so the API,
the CLI's tests and the documentation can use it freely.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from pipeline.models.params import validate_model_params
from pipeline.registry import NAME_PATTERN
from pipeline.storage import check_key

# interactive/: single photos sent to POST /v1/recognize, and their answers (workers.interactive).
RESERVED_PREFIXES = {"jobs", "models", "schedules", "idempotency", "datasets", "interactive"}

ModelName = Annotated[str, StringConstraints(pattern=NAME_PATTERN.pattern)]
StorageKey = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
# The model types of pipeline.models, named here so that submitting never imports the models.
ModelType = Literal["embedding", "centroid", "cnn", "finetune"]
# Jobs of higher priority are taken first from a shared queue (on Redis); each job still gets its turn.
Priority = Literal["high", "normal", "low"]


class DatasetSource(BaseModel):
    """Labelled photos: a prefix with one folder per person, or a JSONL manifest of {"key", "label"}."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: ModelName = "default"
    dataset_prefix: StorageKey | None = None
    dataset_manifest: StorageKey | None = None
    priority: Priority = "normal"

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
    # Faces of quality below this (pipeline.quality's score) are left out of fitting, and counted.
    min_quality: float = Field(0.0, ge=0, le=1)
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

    min_quality: float = Field(0.0, ge=0, le=1)  # faces of quality below this are not enrolled, and counted


class ScheduleRequest(DatasetSource):
    """Retrain a model on a cron schedule (minute hour day-of-month month day-of-week, UTC). Its trainings
    run at high priority unless it says otherwise."""

    priority: Priority = "high"

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
    priority: Priority = "normal"
    # Read only each photo's header: the unreadable and oversized photos, and what the job would cost; no model
    # is loaded (and none need exist).
    dry_run: bool = False

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

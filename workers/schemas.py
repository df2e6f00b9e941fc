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
# receipts/: what each erasure removed (pipeline.erasure).
RESERVED_PREFIXES = {"jobs", "models", "schedules", "idempotency", "datasets", "interactive", "receipts"}

ModelName = Annotated[str, StringConstraints(pattern=NAME_PATTERN.pattern)]
IndexName = Annotated[str, StringConstraints(pattern=NAME_PATTERN.pattern)]  # a face index (pipeline.face_index)
JobId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
# A false-accept rate: per comparison (far) or per search of a whole gallery (gallery_far); pipeline.thresholds.
FalseAcceptRate = Annotated[float, Field(gt=0, lt=0.5)]
StorageKey = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
# The model types of pipeline.models, named here so that submitting never imports the models.
ModelType = Literal["embedding", "centroid", "cnn", "finetune"]
# A person's folder name in a dataset (as api.uploads accepts them): no separators, no '..', no hidden names.
PersonName = Annotated[str, StringConstraints(pattern=r"^[^\W_]([\w.() +-]{0,126}[\w)])?$")]
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
    # The unknown threshold set for a false-accept rate instead of the balanced default (at most one).
    far: FalseAcceptRate | None = None
    gallery_far: FalseAcceptRate | None = None

    @model_validator(mode="after")
    def bounded_model_params(self):
        self.model_params = validate_model_params(self.model_type, self.model_params)
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError("validation_fraction + test_fraction must leave at least 10% of the photos to train on")
        _check_at_most_one(far=self.far, gallery_far=self.gallery_far)
        return self


class ClusterSource(BaseModel):
    """A cluster of a cluster job, to enrol as one person."""

    model_config = ConfigDict(extra="forbid")
    job: JobId
    id: int = Field(ge=0)


class EnrollRequest(DatasetSource):
    """Add or update people in a centroid model, from a folder per person, a manifest, or a cluster of a
    cluster job (``{"cluster": {"job", "id"}, "name"}``: the photos where its faces are the subject)."""

    min_quality: float = Field(0.0, ge=0, le=1)  # faces of quality below this are not enrolled, and counted
    cluster: ClusterSource | None = None
    name: PersonName | None = None  # the person a cluster is enrolled as

    @model_validator(mode="after")
    def one_source(self):
        if self.cluster is None:
            if self.name is not None:
                raise ValueError("name goes with a cluster: a dataset's folders name its people")
            _check_one_source(self.dataset_prefix, self.dataset_manifest, "dataset_prefix", "dataset_manifest")
            return self
        if self.dataset_prefix or self.dataset_manifest:
            raise ValueError("enrol from a cluster or from a dataset, not both")
        if not self.name:
            raise ValueError("a cluster is enrolled under a name: give name")
        return self


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
    index: IndexName | None = None  # also add every face found to this face index (created on first use)

    @model_validator(mode="after")
    def one_source(self):
        _check_one_source(self.input_prefix, self.input_manifest, "input_prefix", "input_manifest")
        if self.dry_run and self.index:
            raise ValueError("a dry run reads only the photos' headers: it finds no faces to add to an index")
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


class SearchFilters(BaseModel):
    """What a search looks among, and when a face found is a match."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    index: IndexName
    in_jobs: list[JobId] = Field(default_factory=list, max_length=100)  # only faces these jobs added
    key_prefix: StorageKey | None = None  # only faces of photos under this prefix
    # A face found is a match at the index's calibrated threshold, or at one set for a false-accept rate
    # (per comparison, or per search of the whole index), or at a similarity given outright.
    far: FalseAcceptRate | None = None
    gallery_far: FalseAcceptRate | None = None
    threshold: float | None = Field(None, ge=-1, le=1)

    @model_validator(mode="after")
    def one_rule(self):
        _check_at_most_one(far=self.far, gallery_far=self.gallery_far, threshold=self.threshold)
        return self


class SearchRequest(SearchFilters):
    """Find the k faces of a face index most like one face: a face of a job's results (job, key, face), a
    person of a model (model, person; the person's mean face), or, sent as multipart, a photo (file field
    ``photo``, its main face unless ``face`` says which). The answer comes within wait_s seconds, else 202."""

    k: int = Field(10, ge=1, le=1000)
    job: JobId | None = None
    key: StorageKey | None = None
    face: int | None = Field(None, ge=0, le=10_000)
    model: ModelName | None = None
    model_version: str | None = None
    person: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    exact: bool = False  # scan every face instead of the ANN index (slow on a large index; for checking it)
    wait_s: float = Field(10.0, ge=0, le=30)

    def query_kind(self, photo: bool) -> str:
        """Which face the request searches with: "photo", "face" or "person"; ValueError naming what is
        missing or extra."""
        kinds = [kind for kind, given in (("photo", photo), ("face", self.job or self.key),
                                          ("person", self.model or self.person)) if given]
        if len(kinds) != 1:
            raise ValueError("search with exactly one of: a photo (multipart field 'photo'), a face of a job's "
                             'results ({"job", "key", "face"}) or a person of a model ({"model", "person"})'
                             + (f"; got {' and '.join(kinds)}" if kinds else ""))
        kind = kinds[0]
        if kind == "face" and (not self.job or not self.key or self.face is None):
            raise ValueError('a face of a job\'s results needs all of "job", "key" and "face" (its number in the '
                             "photo's faces)")
        if kind == "person" and (not self.model or not self.person):
            raise ValueError('a person of a model needs both "model" and "person"')
        if kind == "person" and (self.far or self.gallery_far):
            raise ValueError("a person is matched at the model's own threshold (set when it was trained, "
                             "with far or gallery_far there): give threshold, or no rule")
        if kind != "person" and self.model_version:
            raise ValueError("model_version goes with a person of a model")
        if self.key is not None:
            check_key(self.key)
        return kind


class SearchJobRequest(SearchFilters):
    """Every person of a gallery model (centroid or embedding) against a face index: per person, the photos
    where they appear (the faces that match, at most k per person), as JSONL and an HTML report."""

    model: ModelName
    model_version: str | None = None
    k: int = Field(100, ge=1, le=10_000)
    people: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=10_000)  # only these people (default: all of the model's)

    @model_validator(mode="after")
    def person_threshold(self):
        if self.far or self.gallery_far:
            raise ValueError("people are matched at the model's own threshold (set when it was trained, with "
                             "far or gallery_far there): give threshold, or no rule")
        return self


class ClusterJobRequest(BaseModel):
    """Group the faces of a face index (those of in_jobs, under key_prefix; with unknown_only, only the faces
    those jobs' results left unknown) into clusters that are each probably one person: clusters.json and an
    HTML report with each cluster's representative faces. A cluster can then be enrolled as a person."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    index: IndexName
    in_jobs: list[JobId] = Field(default_factory=list, max_length=100)
    key_prefix: StorageKey | None = None
    unknown_only: bool = False
    min_size: int = Field(2, ge=1, le=100_000)  # smaller groups are counted, not listed
    threshold: float | None = Field(None, ge=-1, le=1)  # least similarity of any link (default none: the model's)
    priority: Priority = "normal"

    @model_validator(mode="after")
    def jobs_for_unknowns(self):
        if self.unknown_only and not self.in_jobs:
            raise ValueError("unknown_only needs in_jobs: the recognition jobs whose results say which faces "
                             "were left unknown")
        return self




class ErasureRequest(BaseModel):
    """Erase a person: their photos from the datasets named, their faces from the face indexes named (deleted
    and compacted away), their centroid from the centroid models named (a new current version without them;
    every version that held them retired), single-photo answers that named them, and, with redact_results,
    their name from job results. Name the person, or give photo_keys: photos of them (the models name them).
    The job's result points to the receipt (receipts/<job id>.json and .html)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    person: PersonName | None = None
    models: list[ModelName] = Field(default_factory=list, max_length=100)
    indexes: list[IndexName] = Field(default_factory=list, max_length=100)
    datasets: list[ModelName] = Field(default_factory=list, max_length=100)
    photo_keys: list[StorageKey] = Field(default_factory=list, max_length=100)
    redact_results: bool = False
    # Faces at least this similar to the person's are erased from indexes (default: each index's calibration).
    threshold: float | None = Field(None, ge=-1, le=1)
    priority: Priority = "high"

    @model_validator(mode="after")
    def someone_somewhere(self):
        if not self.person and not self.photo_keys:
            raise ValueError("name the person to erase, or give photo_keys of photos of them")
        if not (self.models or self.indexes or self.datasets):
            raise ValueError("name at least one of models, indexes or datasets to erase the person from")
        for key in self.photo_keys:
            check_key(key)
        return self


def _check_at_most_one(**rules: float | None) -> None:
    given = [name for name, value in rules.items() if value is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of {', '.join(rules)}: got {' and '.join(given)}")


def _check_one_source(prefix: str | None, manifest: str | None, prefix_name: str, manifest_name: str) -> None:
    if bool(prefix) == bool(manifest):
        raise ValueError(f"give exactly one of {prefix_name} and {manifest_name}")
    check_key(prefix.rstrip("/") if prefix else manifest)  # a manifest is an object: no trailing '/'


def _check_output_prefix(prefix: str) -> None:
    top = prefix.split("/", 1)[0]
    if top in RESERVED_PREFIXES:
        raise ValueError(f"output_prefix {prefix!r} is inside {top}/, where the system keeps its own records "
                         f"(reserved: {', '.join(sorted(RESERVED_PREFIXES))})")

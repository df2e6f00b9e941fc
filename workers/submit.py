"""Submitting jobs: validate the request, record the job, enqueue its first task.

The API and the demo both submit through here, so every job is validated the same way and every
job runs through Celery. Tasks are sent by name: submitting never imports the pipeline's models.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from pydantic import BaseModel

from pipeline import registry
from pipeline.face_index import FaceIndex, IndexNotFound
from workers import interactive
from workers.jobs import JobNotFound
from workers.runtime import Runtime
from workers.schemas import (
    ClusterJobRequest,
    ClusterSource,
    EnrollRequest,
    ErasureRequest,
    PhotoRequest,
    RecognitionRequest,
    SearchJobRequest,
    SearchRequest,
    TrainingRequest,
)
from workers.task_names import ENTRY_TASKS, SEARCH_FACES

CLAIM = ".facerec-job.json"  # under an output prefix: the job that owns it


class InputNotFound(LookupError):
    """A manifest, prefix or model version named in a request does not exist."""


class OutputPrefixTaken(Exception):
    """The output prefix already holds objects, another job's output perhaps."""


class Refused(Exception):
    """A request that is well formed but asks for what its target's state does not allow (409)."""


class NotErasable(ValueError):
    """A model named in an erasure cannot forget someone without being trained again."""


class IndexConflict(Exception):
    """A face index holds another embedder's faces than the model named with it makes."""


def submit_training(runtime: Runtime, request: TrainingRequest, idempotency_key: str | None = None,
                    client: str = "") -> tuple[dict, bool]:
    """Record and enqueue a training job; returns (job, created)."""
    storage = runtime.storage
    _check_dataset(storage, request.dataset_prefix, request.dataset_manifest)
    if request.validation_manifest:
        _check_manifest(storage, request.validation_manifest, "validation_manifest")
    return _submit(runtime, "training", request, idempotency_key, client)


def submit_enrollment(runtime: Runtime, request: EnrollRequest, idempotency_key: str | None = None,
                      client: str = "") -> tuple[dict, bool]:
    """Record and enqueue an enrolment job; returns (job, created). A cluster is enrolled through a manifest of
    the photos whose subject is one of its faces, written beside the cluster job's output."""
    storage = runtime.storage
    _check_model_version(storage, request.model, None)
    if request.cluster is None:
        _check_dataset(storage, request.dataset_prefix, request.dataset_manifest)
        return _submit(runtime, "enroll", request, idempotency_key, client)
    manifest = _cluster_manifest(runtime, request.cluster, request.name)
    params = {**request.model_dump(exclude_none=True), "dataset_manifest": manifest}
    return _submit(runtime, "enroll", request, idempotency_key, client, params=params)


def _cluster_manifest(runtime: Runtime, cluster: ClusterSource, name: str) -> str:
    """The key of a manifest of the cluster's photos in which its face is the subject, labelled name."""
    try:
        job = runtime.jobs.get(cluster.job)
    except JobNotFound as err:
        raise InputNotFound(str(err)) from None
    if job["type"] != "cluster" or job["state"] != "succeeded":
        raise InputNotFound(f"job {cluster.job} is a {job['state']} {job['type']} job, not a cluster job that "
                            "succeeded")
    from pipeline.clusters import read_clusters

    clusters = read_clusters(runtime.storage, job["result"]["clusters"])["clusters"]
    if cluster.id >= len(clusters):
        raise InputNotFound(f"cluster job {cluster.job} has no cluster {cluster.id} (it has {len(clusters)})")
    chosen = clusters[cluster.id]
    if chosen.get("merged_into") is not None:
        raise Refused(f"cluster {cluster.id} was merged into cluster {chosen['merged_into']}: enrol that one")
    if chosen.get("not_one_person"):
        raise Refused(f"cluster {cluster.id} is marked as not one person: enrolling it would mix people")
    keys = list(dict.fromkeys(face["key"] for face in chosen["faces"] if face["main"]))
    if not keys:
        raise InputNotFound(f"in no photo of cluster {cluster.id} is its face the photo's subject: nothing to enrol")
    key = f"jobs/{cluster.job}/output/enrollments/{cluster.id}-{hashlib.sha256(name.encode()).hexdigest()[:12]}.jsonl"
    runtime.storage.put(key, "".join(json.dumps({"key": k, "label": name}) + "\n" for k in keys).encode())
    return key


def submit_cluster_job(runtime: Runtime, request: ClusterJobRequest, idempotency_key: str | None = None,
                       client: str = "") -> tuple[dict, bool]:
    """Record and enqueue a cluster job (an index's faces grouped by person); returns (job, created)."""
    _check_index(runtime.storage, request.index)
    for job_id in request.in_jobs if request.unknown_only else ():
        try:
            job = runtime.jobs.get(job_id)
        except JobNotFound as err:
            raise InputNotFound(str(err)) from None
        if job["type"] != "recognition" or job["state"] != "succeeded":
            raise InputNotFound(f"unknown_only reads the results of recognition jobs that succeeded: job {job_id} is "
                                f"a {job['state']} {job['type']} job")
    return _submit(runtime, "cluster", request, idempotency_key, client)


def submit_recognition(runtime: Runtime, request: RecognitionRequest, idempotency_key: str | None = None,
                       client: str = "") -> tuple[dict, bool]:
    """Record and enqueue a bulk-recognition job; returns (job, created). An output prefix is claimed
    for the job: one that holds anything already is refused (OutputPrefixTaken)."""
    storage = runtime.storage
    _check_dataset(storage, request.input_prefix, request.input_manifest)
    if not request.dry_run:  # a dry run loads no model: one need not exist yet
        version = _check_model_version(storage, request.model, request.model_version)
        if request.index:
            _check_index_embedder(storage, request.index, request.model, version)

    def claim_output(job: dict) -> Callable[[], None] | None:
        if not request.output_prefix:
            return None
        prefix = request.output_prefix.rstrip("/")
        if storage.exists(prefix):
            raise OutputPrefixTaken(f"output_prefix {prefix!r} is an object already (a photo?), not a folder: "
                                    "choose another prefix, or leave it out to write under the job's folder")
        claim = f"{prefix}/{CLAIM}"
        if next(iter(storage.list(prefix + "/")), None) is not None or \
                not storage.put_new(claim, json.dumps({"job_id": job["id"]}).encode()):
            raise OutputPrefixTaken(f"output_prefix {prefix!r} already holds objects (another job's output?): "
                                    "choose an empty prefix, or leave it out to write under the job's folder")
        return lambda: storage.delete(claim)

    return _submit(runtime, "recognition", request, idempotency_key, client, claim_output)


def submit_photo(runtime: Runtime, request: PhotoRequest, request_id: str, key: str) -> str:
    """Enqueue the recognition of one stored photo on the interactive queue; returns the model version
    it will use. Raises InputNotFound for a model or version that does not exist."""
    version = _check_model_version(runtime.storage, request.model, request.model_version)
    interactive.send(runtime, request_id, key, request.model, version)
    return version


def submit_search(runtime: Runtime, request: SearchRequest, request_id: str, photo_key: str | None) -> None:
    """Enqueue a search on the interactive queue (a worker makes the photo's embedding and searches).
    InputNotFound for an index, job or model version that does not exist; IndexConflict for a model whose
    embedder is not the index's."""
    storage = runtime.storage
    _check_index(storage, request.index)
    if request.job:
        try:
            runtime.jobs.get(request.job)
        except JobNotFound as err:
            raise InputNotFound(str(err)) from None
    if request.model:
        version = _check_model_version(storage, request.model, request.model_version)
        _check_index_embedder(storage, request.index, request.model, version)
        request = request.model_copy(update={"model_version": version})
    params = {**request.model_dump(exclude_none=True), "photo_key": photo_key}
    runtime.send(SEARCH_FACES, [request_id, params], queue=runtime.settings.queue_interactive)


def submit_search_job(runtime: Runtime, request: SearchJobRequest, idempotency_key: str | None = None,
                      client: str = "") -> tuple[dict, bool]:
    """Record and enqueue a search job (every person of a gallery model against an index); returns (job, created)."""
    storage = runtime.storage
    _check_index(storage, request.index)
    version = _check_model_version(storage, request.model, request.model_version)
    _check_index_embedder(storage, request.index, request.model, version)
    return _submit(runtime, "search", request, idempotency_key, client)


def resume_job(runtime: Runtime, job_id: str) -> dict:
    """Run a failed job again from where it stopped (a recognition job keeps its finished chunks)."""
    job, _ = runtime.jobs.resume(job_id, "resumed by a user")
    runtime.send(ENTRY_TASKS[job["type"]], [job_id], priority=job["params"].get("priority"))
    return job


def submit_erasure(runtime: Runtime, request: ErasureRequest, idempotency_key: str | None = None,
                   client: str = "") -> tuple[dict, bool]:
    """Record and enqueue an erasure; returns (job, created). Every model named must be a centroid model (the
    others can forget someone only by training again), every index and dataset must exist."""
    storage = runtime.storage
    for model in request.models:
        version = _check_model_version(storage, model, None)
        model_type = registry.get_version(storage, model, version).get("model_type")
        if model_type != "centroid":
            raise NotErasable(f"model {model} is a {model_type} model: erasing someone from it means training it "
                             "again without their photos (erase them from its dataset, then train); erasure "
                             "takes centroid models")
    for name in request.indexes:
        _check_index(storage, name)
    for name in request.datasets:
        _check_dataset(storage, f"datasets/{name}", None)
    for key in request.photo_keys:
        _check_manifest(storage, key, "the photo")
    # Who asked is part of the receipt: the API key's name (or the embedded default's "no key").
    params = {**request.model_dump(exclude_none=True), "asked_by": client or "no key (the embedded default)"}
    return _submit(runtime, "erasure", request, idempotency_key, client, params=params)


def _submit(runtime: Runtime, job_type: str, request: BaseModel, idempotency_key: str | None, client: str,
            prepare=lambda job: None, params: dict | None = None) -> tuple[dict, bool]:
    # Recorded and enqueued as one step: if either fails, nothing of the job is left behind.
    params = params if params is not None else request.model_dump(exclude_none=True)
    return runtime.jobs.create(job_type, params, idempotency_key, scope=client,
                               prepare=prepare, enqueue=lambda job: runtime.send(
                                   ENTRY_TASKS[job_type], [job["id"]], priority=job["params"].get("priority")))


def _check_dataset(storage, prefix: str | None, manifest: str | None) -> None:
    if manifest:
        _check_manifest(storage, manifest, "the manifest")
    elif next(iter(storage.list(prefix.rstrip("/") + "/")), None) is None:
        raise InputNotFound(f"nothing is stored under the prefix {prefix!r}")


def _check_manifest(storage, key: str, what: str) -> None:
    if not storage.exists(key):
        raise InputNotFound(f"{what} {key!r} does not exist in storage")


def _check_index(storage, name: str) -> FaceIndex:
    index = FaceIndex(storage, name)
    try:
        index.info()
    except IndexNotFound as err:
        raise InputNotFound(str(err)) from None
    return index


def _check_index_embedder(storage, name: str, model: str, version: str) -> None:
    """IndexConflict if the index exists and holds faces of another embedder than the model version's."""
    index = FaceIndex(storage, name)
    if not index.exists():
        return
    embedder = registry.get_version(storage, model, version).get("embedder")
    held = index.info()["embedder"]
    if embedder and embedder != held:
        raise IndexConflict(f"face index {name!r} holds {held} embeddings, but model {model} version {version} "
                            f"uses {embedder} embeddings: their similarities would mean nothing; use another index")


def _check_model_version(storage, model: str, version: str | None) -> str:
    try:
        return registry.resolve_version(storage, model, version)
    except LookupError as err:
        raise InputNotFound(str(err)) from None

"""Clusters of unknown faces: POST /v1/jobs/cluster groups a face index's faces by person (pipeline.clusters, run
as a job); its clusters are read as JSON or as a page of faces, and a cluster is enrolled as a person with
POST /v1/jobs/enroll {"model", "cluster": {"job", "id"}, "name"}."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import BadRequest, NotFound

from api.context import runtime
from api.endpoints import HTML, READ, SUBMIT, endpoint, page
from api.jobs import QUEUED, _submitted, finished_job, output_file, output_key
from api.web import _page
from pipeline import registry
from pipeline.storage import MissingKey
from workers.jobs import JOB_ID, SUCCEEDED, JobNotFound
from workers.schemas import ClusterJobRequest
from workers.submit import submit_cluster_job

clusters = Blueprint("clusters", __name__)


@clusters.post("/v1/jobs/cluster")
@endpoint(SUBMIT, body=ClusterJobRequest, success=("202", QUEUED), idempotent=True,
          example={"index": "archive", "in_jobs": ["0123456789abcdef0123456789abcdef"], "unknown_only": True})
def submit_cluster_job_route():
    """Group a face index's faces (optionally those of some jobs, or only those their results left unknown)
    into clusters that are each probably one person."""
    return _submitted(submit_cluster_job, ClusterJobRequest)


@clusters.get("/v1/jobs/<job_id>/clusters")
@endpoint(READ)
def get_clusters(job_id: str):
    """A finished cluster job's clusters: per cluster, largest first, its faces (job, key, face, box, subject
    or not, similarity to the cluster's mean), its representatives and its photos; and the counts."""
    return _cluster_file(job_id, "clusters", "application/json")


CLUSTER_EDIT = {"type": "object", "additionalProperties": False, "properties": {
    "merged_into": {"type": ["integer", "null"], "minimum": 0,
                    "description": "merge this cluster into that one (null: undo)"},
    "not_one_person": {"type": "boolean", "description": "this cluster mixes people: it cannot be enrolled"}}}


@clusters.post("/v1/jobs/<job_id>/clusters/<cluster>")
@endpoint(SUBMIT, body=CLUSTER_EDIT, example={"merged_into": 0})
def edit_cluster_route(job_id: str, cluster: str):
    """Edit a cluster before enrolling: merge it into another (its faces join that one's), or mark it as not
    one person (it cannot be enrolled); the answer is the edited clusters."""
    from pipeline.clusters import edit_cluster

    body = request.get_json(silent=True)  # first: a body nested too deeply is refused before anything is read
    job = finished_job(job_id, "cluster", "clusters")
    if not cluster.isdigit() or len(cluster) > 9:
        raise NotFound(f"no cluster {cluster[:40]!r}: clusters are numbered from 0")
    if not isinstance(body, dict) or set(body) - {"merged_into", "not_one_person"} or not body:
        raise BadRequest('send {"merged_into": <cluster id or null>} and/or {"not_one_person": true or false}')
    into, mixed = body.get("merged_into"), body.get("not_one_person", False)
    if (into is not None and (not isinstance(into, int) or isinstance(into, bool))) or not isinstance(mixed, bool):
        raise BadRequest("merged_into is a cluster id (or null) and not_one_person true or false")
    try:
        edited = edit_cluster(runtime().storage, output_key(job, "clusters"), int(cluster), into, mixed)
    except ValueError as err:
        raise BadRequest(str(err)) from None
    return jsonify(edited)


@clusters.get("/v1/jobs/<job_id>/clusters/report")
@endpoint(READ, answers=HTML)
def get_clusters_report(job_id: str):
    """A finished cluster job's page: each cluster's representative faces, boxed."""
    return _cluster_file(job_id, "report", "text/html")


def _cluster_file(job_id: str, what: str, mimetype: str) -> Response:
    if what != "clusters":
        return output_file(job_id, "cluster", what, mimetype)
    from pipeline.clusters import read_clusters  # with the edits a person made since

    key = output_key(finished_job(job_id, "cluster", what), what)
    try:
        return jsonify(read_clusters(runtime().storage, key))
    except MissingKey:
        raise NotFound(f"job {job_id}'s clusters are no longer in storage") from None


@clusters.get("/clusters")
@page
def clusters_page():
    """Clusters: the clusters of a cluster job as grids of faces, each with a form to enrol it as a person."""
    store = runtime().jobs
    done = store.list(job_type="cluster", state=SUCCEEDED, limit=20)[0]
    chosen_id = request.args.get("job") or (done[0]["id"] if done else None)
    chosen, shown, error = None, [], None
    if chosen_id:
        try:
            chosen = store.get(chosen_id) if JOB_ID.fullmatch(chosen_id) else None
        except JobNotFound:
            chosen = None
        if chosen is None or chosen["type"] != "cluster" or chosen["state"] != SUCCEEDED:
            error, chosen = f"no cluster job {chosen_id} that succeeded", None
    if chosen:
        from pipeline.clusters import read_clusters

        storage = runtime().storage
        try:
            found = read_clusters(storage, chosen["result"]["clusters"])
            chips = storage.get_json(chosen["result"]["chips"]) if chosen["result"].get("chips") else {}
        except MissingKey:  # the job's output was deleted since
            error = f"cluster job {chosen['id']}'s clusters are no longer in storage"
            chosen, found, chips = None, {}, {}
    if chosen:
        shown = [{**c, "chips": [chip for chip in chips.get(str(c["id"]), []) if chip]}
                 for c in found["clusters"] if str(c["id"]) in chips and c.get("merged_into") is None]
        chosen = {**chosen, "found": found}
    models = [name for name in registry.list_models(runtime().storage)
              if _is_centroid(name)]
    return _page("clusters.html", active="clusters", jobs=done, chosen=chosen, clusters=shown, models=models,
                 error=error)


def _is_centroid(model: str) -> bool:
    storage = runtime().storage
    version = registry.current_version(storage, model)
    try:
        return version is not None and registry.get_version(storage, model, version).get("model_type") == "centroid"
    except LookupError:
        return False

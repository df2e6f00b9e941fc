"""Clusters of unknown faces: POST /v1/jobs/cluster groups a face index's faces by person (pipeline.clusters, run
as a job); its clusters are read as JSON or as a page of faces, and a cluster is enrolled as a person with
POST /v1/jobs/enroll {"model", "cluster": {"job", "id"}, "name"}."""

from __future__ import annotations

from flask import Blueprint, Response
from werkzeug.exceptions import Conflict, NotFound

from api.context import runtime
from api.endpoints import HTML, READ, SUBMIT, endpoint
from api.jobs import QUEUED, _submitted, find_job
from pipeline.storage import MissingKey
from workers.jobs import SUCCEEDED
from workers.schemas import ClusterJobRequest
from workers.submit import submit_cluster_job

clusters = Blueprint("clusters", __name__, url_prefix="/v1")


@clusters.post("/jobs/cluster")
@endpoint(SUBMIT, body=ClusterJobRequest, success=("202", QUEUED), idempotent=True,
          example={"index": "archive", "in_jobs": ["0123456789abcdef0123456789abcdef"], "unknown_only": True})
def submit_cluster_job_route():
    """Group a face index's faces (optionally those of some jobs, or only those their results left unknown)
    into clusters that are each probably one person."""
    return _submitted(submit_cluster_job, ClusterJobRequest)


@clusters.get("/jobs/<job_id>/clusters")
@endpoint(READ)
def get_clusters(job_id: str):
    """A finished cluster job's clusters: per cluster, largest first, its faces (job, key, face, box, subject
    or not, similarity to the cluster's mean), its representatives and its photos; and the counts."""
    return _cluster_file(job_id, "clusters", "application/json")


@clusters.get("/jobs/<job_id>/clusters/report")
@endpoint(READ, answers=HTML)
def get_clusters_report(job_id: str):
    """A finished cluster job's page: each cluster's representative faces, boxed."""
    return _cluster_file(job_id, "report", "text/html")


def _cluster_file(job_id: str, what: str, mimetype: str) -> Response:
    job = find_job(job_id)
    if job["type"] != "cluster":
        raise Conflict(f"job {job_id} is a {job['type']} job: only cluster jobs have clusters")
    if job["state"] != SUCCEEDED:
        raise Conflict(f"job {job_id} is {job['state']}: its {what} is written when it succeeds")
    try:
        return Response(runtime().storage.get(job["result"][what]), mimetype=mimetype)
    except MissingKey:
        raise NotFound(f"job {job_id}'s {what} is no longer in storage") from None

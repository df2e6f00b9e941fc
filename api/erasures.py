"""Erasure with a receipt: POST /v1/erasures (admin) removes a person from the datasets, models and face
indexes named (pipeline.erasure, run as a job); GET /v1/receipts/<id> shows what it removed."""

from __future__ import annotations

from flask import Blueprint, Response
from werkzeug.exceptions import UnprocessableEntity

from api.endpoints import ADMIN, HTML, READ, endpoint
from api.jobs import QUEUED, _submitted, output_file
from workers.schemas import ErasureRequest
from workers.submit import NotErasable, submit_erasure

erasures = Blueprint("erasures", __name__, url_prefix="/v1")


@erasures.post("/erasures")
@endpoint(ADMIN, body=ErasureRequest, success=("202", QUEUED), idempotent=True,
          example={"person": "Jane_Doe", "models": ["gallery"], "indexes": ["archive"], "datasets": ["staff"],
                   "redact_results": True})
def submit_erasure_route():
    """Erase a person everywhere named: their dataset photos, their faces from face indexes (deleted and
    compacted away), their centroid from centroid models (a new current version; versions that held them
    retired), single-photo answers naming them, and with redact_results their name in job results. A job:
    poll GET /v1/jobs/<id>; when it succeeds, GET /v1/receipts/<id> lists every object removed."""
    try:
        return _submitted(submit_erasure, ErasureRequest)
    except NotErasable as err:
        raise UnprocessableEntity(str(err)) from None


@erasures.get("/receipts/<job_id>")
@endpoint(READ)
def get_receipt(job_id: str):
    """An erasure's receipt: the person, who asked, when, and every object deleted or rewritten (size and
    SHA-256 before), every model version retired or published, every index's faces removed."""
    return _receipt(job_id, "receipt", "application/json")


@erasures.get("/receipts/<job_id>/html")
@endpoint(READ, answers=HTML)
def get_receipt_page(job_id: str):
    """The receipt as a page to read and keep."""
    return _receipt(job_id, "receipt_html", "text/html")


def _receipt(job_id: str, what: str, mimetype: str) -> Response:
    return output_file(job_id, "erasure", what, mimetype)

"""Face search: POST /v1/search (one face against a face index, answered while the asker waits), the search
job (every person of a gallery model against an index), the photos of the faces found, and the Search page.

The API stays thin: a worker on the interactive queue makes a photo's embedding and searches the index
(workers.tasks.search_faces); the API stores the photo, enqueues the search and waits a bounded time for
the answer, as POST /v1/recognize does. A face found comes with a photo_url: a signed link to its photo
that works for an hour without a key (as a presigned S3 URL does), so that a page can show it in an <img>.
"""

from __future__ import annotations

import mimetypes
import uuid

from flask import Blueprint, Response, current_app, jsonify, redirect, request, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.exceptions import BadRequest, HTTPException, NotFound, RequestEntityTooLarge

from api.context import runtime
from api.endpoints import HTML, JSONL, READ, SUBMIT, endpoint, page
from api.jobs import QUEUED, _submitted, output_file
from api.photos import MULTIPART_OVERHEAD, _uploaded_photo
from api.sessions import session_key
from api.validation import parse, parse_body
from api.web import _page, page_headers
from pipeline import registry
from pipeline.decode import MAX_BYTES
from pipeline.face_index import FaceIndex, list_indexes
from pipeline.storage import MissingKey
from workers import interactive
from workers.jobs import JOB_ID
from workers.schemas import SearchJobRequest, SearchRequest
from workers.submit import IndexConflict, InputNotFound, submit_search, submit_search_job

search = Blueprint("search", __name__)

PHOTO_LINK_S = 3600
_SALT = "facerec-search-photo"
_FORM_LISTS = ("in_jobs",)
MULTIPART_SEARCH = {"multipart/form-data": {"schema": {
    "type": "object", "required": ["photo", "index"],
    "properties": {"photo": {"type": "string", "format": "binary", "description": "a photo: its main face is searched"},
                   "index": {"type": "string"}, "k": {"type": "integer", "minimum": 1, "maximum": 1000},
                   "face": {"type": "integer", "minimum": 0, "description": "which face of the photo"},
                   "in_jobs": {"type": "array", "items": {"type": "string"}}, "key_prefix": {"type": "string"},
                   "far": {"type": "number"}, "gallery_far": {"type": "number"}, "threshold": {"type": "number"},
                   "wait_s": {"type": "number", "minimum": 0, "maximum": 30}},
}}}


@search.post("/v1/search")
@endpoint(SUBMIT, body=SearchRequest, other_bodies=MULTIPART_SEARCH,
          example={"index": "archive", "job": "0123456789abcdef0123456789abcdef", "key": "inbox/p1.jpg", "face": 0},
          success=("200", "the faces found (202 with the request's location if wait_s passed first)"))
def search_faces():
    """The k faces of a face index most like one face: a photo's (multipart), a job's ({"job", "key",
    "face"}) or a person of a model's ({"model", "person"}); filtered by jobs (in_jobs) and key_prefix.

    Each face found has its photo key, box, landmarks, similarity, whether it is a match at the threshold
    (the index's calibrated one, or one set by far, gallery_far or threshold) and a photo_url.
    """
    request_id = uuid.uuid4().hex
    photo_key = None
    if request.mimetype == "multipart/form-data":
        request.max_content_length = MAX_BYTES + MULTIPART_OVERHEAD
        try:
            form = request.form
        except RequestEntityTooLarge:
            raise RequestEntityTooLarge(f"the photo is larger than {MAX_BYTES // (1024 * 1024)} MB") from None
        values = {name: value for name, value in form.items() if name not in _FORM_LISTS}
        values.update({name: form.getlist(name) for name in _FORM_LISTS if name in form})
        params = parse(SearchRequest, values)
        _query_kind(params, photo=True)
        data = _uploaded_photo()
        photo_key = interactive.photo_key(request_id)
        runtime().storage.put(photo_key, data)
    else:
        params = parse_body(SearchRequest)
        _query_kind(params, photo=False)
    try:
        submit_search(runtime(), params, request_id, photo_key)
    except InputNotFound as err:
        raise NotFound(str(err)) from None
    runtime().storage.put_json(interactive.request_key(request_id), {"search": True})  # so that polling finds it
    answer = interactive.wait_for_answer(runtime(), request_id, params.wait_s)
    return _pending(request_id) if answer is None else _answered(answer)


@search.get("/v1/search/<request_id>")
@endpoint(READ)
def get_search(request_id: str):
    """The answer to a search that was still pending: 200 with it, or 202 while it is."""
    if not JOB_ID.fullmatch(request_id):
        raise NotFound(f"no search {request_id}")
    storage = runtime().storage
    answer = interactive.stored_answer(storage, request_id)
    if answer is not None and ("index" in answer or "status" in answer):  # not a single photo's recognition
        return _answered(answer)
    if answer is None and storage.exists(interactive.request_key(request_id)):
        return _pending(request_id)
    raise NotFound(f"no search {request_id}")


@search.get("/v1/search/photos/<token>")
@endpoint(None, answers="image/*")
def search_photo(token: str):
    """The photo of a face found by a search (the link in its photo_url; it works for an hour, without a key)."""
    try:
        key = _signer().loads(token, max_age=PHOTO_LINK_S)
    except BadSignature:
        raise NotFound("this photo link is not valid, or more than an hour old: search again") from None
    try:
        data = runtime().storage.get_at_most(key, MAX_BYTES)
    except MissingKey:
        raise NotFound("the photo is no longer in storage") from None
    mimetype = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return Response(data, mimetype=mimetype, headers={"Cache-Control": "private, max-age=3600"})


@search.get("/v1/indexes")
@endpoint(READ)
def get_indexes():
    """The face indexes (a recognition job with "index": NAME creates one): each one's embedder, who created it,
    and its calibration: the default threshold, the lowest false-accept rate it can set, and its ROC/DET figure."""
    storage = runtime().storage
    indexes = []
    for name in list_indexes(storage):
        info = FaceIndex(storage, name).info()
        calibration = info.get("calibration")
        if calibration:
            calibration = {k: calibration.get(k) for k in ("source", "default", "genuine", "impostor", "lowest_far",
                                                           "figure")}
        indexes.append({**{k: info.get(k) for k in ("name", "embedder", "created_by", "created_at")},
                        "calibration": calibration})
    return jsonify(indexes=indexes)


@search.post("/v1/jobs/search")
@endpoint(SUBMIT, body=SearchJobRequest, success=("202", QUEUED), idempotent=True,
          example={"model": "gallery", "index": "archive"})
def submit_search_job_route():
    """Every person of a gallery model (centroid or embedding) against a face index: per person, the photos
    where they appear, as JSONL and an HTML report with thumbnails."""
    return _submitted(submit_search_job, SearchJobRequest)


@search.get("/v1/jobs/<job_id>/people")
@endpoint(READ, answers=JSONL)
def get_search_job_results(job_id: str):
    """A finished search job's people.jsonl: one line per person with the photos where they appear."""
    return _search_job_file(job_id, "people", JSONL)


@search.get("/v1/jobs/<job_id>/people/report")
@endpoint(READ, answers=HTML)
def get_search_job_report(job_id: str):
    """A finished search job's HTML report: each person's photos as thumbnails with the face boxed."""
    return _search_job_file(job_id, "report", "text/html")


@search.get("/jobs/<job_id>/people.html")
@page
def search_job_report_page(job_id: str):
    """A finished search job's report, linked from the job's page (the session stands for the key)."""
    if session_key() is None:
        return redirect(url_for("web.login", next=request.path))
    return _search_job_file(job_id, "report", "text/html")


@search.get("/search")
@page
def search_page():
    """Search: drop a photo, see the photos where that face appears."""
    return _page("search.html", indexes=list_indexes(runtime().storage), active="search",
                 models=registry.list_models(runtime().storage))


@search.after_request
def headers(response: Response) -> Response:
    """The Search page gets the pages' Content-Security-Policy; a search job's report, self-contained with its
    own inline style, only nosniff (as a version's report)."""
    if request.path.endswith("/people.html"):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response
    return page_headers(response)


@search.app_errorhandler(IndexConflict)
def index_conflict(err: IndexConflict):
    """A face index of one embedder named with a model of another (a search, a search job or a recognition
    job's "index"): 409."""
    return jsonify(error=str(err)), 409


def _query_kind(params: SearchRequest, photo: bool) -> str:
    try:
        return params.query_kind(photo)
    except ValueError as err:
        raise BadRequest(str(err)) from None


def _signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt=_SALT)


def _pending(request_id: str):
    location = f"/v1/search/{request_id}"
    response = jsonify(id=request_id, state="pending", location=location)
    response.headers["Location"] = location
    return response, 202


def _answered(answer: dict):
    if "error" in answer:
        error = HTTPException(answer["error"])
        error.code = answer.get("status", 422)
        raise error
    signer = _signer()
    for face in answer["faces"]:
        face["photo_url"] = f"/v1/search/photos/{signer.dumps(face['key'])}"
    return jsonify(answer)


def _search_job_file(job_id: str, what: str, mimetype: str) -> Response:
    return output_file(job_id, "search", what, mimetype)

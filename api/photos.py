"""Single-photo recognition: POST /v1/recognize answers with the faces while the person waits.

The API stores the photo under a key it chooses (interactive/<id>/photo), enqueues it on the interactive
queue and waits a bounded time for a worker's answer (workers.interactive). It never decodes the photo
beyond its header, and never loads a model.
"""

from __future__ import annotations

import io
import uuid

from flask import Blueprint, jsonify, request
from PIL import Image, UnidentifiedImageError
from werkzeug.exceptions import BadRequest, NotFound, RequestEntityTooLarge, UnprocessableEntity

from api.context import runtime
from api.endpoints import READ, SUBMIT, endpoint
from api.validation import parse, parse_body
from pipeline.decode import MAX_BYTES
from workers import interactive
from workers.jobs import JOB_ID
from workers.schemas import PhotoRequest
from workers.submit import InputNotFound, submit_photo

photos = Blueprint("photos", __name__, url_prefix="/v1")

MULTIPART_OVERHEAD = 64 * 1024  # form fields and part headers around the photo
_PHOTO_FILE = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
MULTIPART_PHOTO = {"multipart/form-data": {"schema": {
    "type": "object", "required": ["photo"],
    "properties": {"photo": {**_PHOTO_FILE, "description": "the photo"},
                   "model": {"type": "string"}, "model_version": {"type": "string"},
                   "wait_s": {"type": "number", "minimum": 0, "maximum": 30}},
}}}


@photos.post("/recognize")
@endpoint(SUBMIT, body=PhotoRequest, other_bodies=MULTIPART_PHOTO,
          example={"key": "inboxes/press/photo-0001.jpg", "model": "lfw"},
          success=("200", "the faces (202 with the request's location if wait_s passed first)"))
def recognize_photo():
    """Recognise every face in one photo, answering within wait_s seconds (else 202 with the request to poll).

    Multipart: the photo in a file field named ``photo``, and optional form fields model, model_version,
    wait_s. JSON: {"key": "<a photo in storage>", "model": ..., "model_version": ..., "wait_s": ...}.
    The answer: the photo's size, every face with box [x, y, width, height], landmarks, identity (or
    ``unknown``), score, confidence, best_guess; the model's threshold, the version used and timings.
    """
    request_id = uuid.uuid4().hex
    storage = runtime().storage
    if request.mimetype == "multipart/form-data":
        request.max_content_length = MAX_BYTES + MULTIPART_OVERHEAD
        params = parse(PhotoRequest, request.form.to_dict())
        if params.key is not None:
            raise BadRequest("send either a photo (multipart field 'photo') or a storage key (JSON), not both")
        data = _uploaded_photo()
        key = interactive.photo_key(request_id)
        storage.put(key, data)
    else:
        params = parse_body(PhotoRequest)
        if params.key is None:
            raise BadRequest('send the photo as a multipart file field named "photo", '
                             'or JSON {"key": "<photo in storage>"}')
        key = params.key
        if not storage.exists(key):
            raise NotFound(f"no photo is stored under the key {key!r}")
        storage.put_json(interactive.request_key(request_id), {"key": key})  # so that polling finds the request
    try:
        submit_photo(runtime(), params, request_id, key)
    except InputNotFound as err:
        raise NotFound(str(err)) from None
    answer = interactive.wait_for_answer(runtime(), request_id, params.wait_s)
    if answer is None:
        return _pending(request_id)
    return _answered(answer)


@photos.get("/recognize/<request_id>")
@endpoint(READ)
def get_recognition(request_id: str):
    """The answer to a single-photo request that was still pending: 200 with it, or 202 while it is."""
    if not JOB_ID.fullmatch(request_id):
        raise NotFound(f"no recognition request {request_id}")
    storage = runtime().storage
    answer = interactive.stored_answer(storage, request_id)
    if answer is not None:
        return _answered(answer)
    if storage.exists(interactive.photo_key(request_id)) or storage.exists(interactive.request_key(request_id)):
        return _pending(request_id)
    raise NotFound(f"no recognition request {request_id}")


def _uploaded_photo() -> bytes:
    try:
        upload = request.files.get("photo")
    except RequestEntityTooLarge:
        raise RequestEntityTooLarge(f"the photo is larger than {MAX_BYTES // (1024 * 1024)} MB") from None
    if upload is None:
        raise BadRequest('send the photo in a multipart file field named "photo"')
    data = upload.read(MAX_BYTES + 1)
    if not data:
        raise BadRequest("the photo is empty")
    if len(data) > MAX_BYTES:
        raise RequestEntityTooLarge(f"the photo is larger than {MAX_BYTES // (1024 * 1024)} MB")
    try:
        Image.open(io.BytesIO(data))  # the header only: refuse what is not a photo before queueing it
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise BadRequest(f"the upload is not a photo Pillow can read ({type(err).__name__})") from None
    return data


def _pending(request_id: str):
    location = f"/v1/recognize/{request_id}"
    response = jsonify(id=request_id, state="pending", location=location)
    response.headers["Location"] = location
    return response, 202


def _answered(answer: dict):
    if "error" in answer and "faces" not in answer:
        raise UnprocessableEntity(answer["error"])
    return jsonify(answer)

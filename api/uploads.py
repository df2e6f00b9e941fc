"""Data in and out without touching the storage folder: upload datasets and inboxes, read a job's results.

POST /v1/datasets/<name>: photos labelled by person, into datasets/<name>/<person>/<file>; either a zip
(Content-Type application/zip) whose entries are <person>/<file> (one common top folder is allowed and
dropped), or multipart files whose field name is the person. POST /v1/inboxes/<name>: photos to
recognise, into inboxes/<name>/<file>, from a zip or multipart files (any field name).

Uploads are bounded (per photo by the decoder's limit, in all by FACEREC_MAX_UPLOAD_MB), names with path
tricks are refused, and nothing already stored is ever overwritten: a dataset or inbox that exists takes
more photos only with ?append=true, and then only photos whose names are new. Every name is checked and
every conflict found before the first photo is written, so a refused upload writes nothing.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

from flask import Response, jsonify, redirect, request, stream_with_context
from werkzeug.exceptions import BadRequest, Conflict, NotFound, RequestEntityTooLarge

from api.routes import _job, v1
from pipeline.dataset import is_image_key
from pipeline.decode import MAX_BYTES
from pipeline.storage import LocalStorage, MissingKey, S3Storage
from workers import runtime
from workers.jobs import SUCCEEDED

# One place for the upload bound until config.py has it.
MAX_UPLOAD_BYTES = runtime.settings().max_upload_mb * 1024 * 1024
MAX_FILES = 100_000
MAX_FORM_PARTS = 20_000  # multipart files per request (werkzeug's default is 1,000)
# Names of datasets, inboxes, people and files: letters, digits and . _ - ( ) + and spaces inside,
# starting with a letter or digit, so no '..', no hidden files, no separators, no control characters.
NAME = re.compile(r"[^\W_]|[^\W_][\w.() +-]{0,126}[\w)]", re.UNICODE)
MARKER = ".facerec-upload.json"  # in the uploaded folder: ignored by training and recognition (a dotfile)
CHUNK = 1024 * 1024
PRESIGNED_S = 3600


@dataclass
class Photo:
    relative: str  # person/file or file, checked
    size: int
    open: object  # () -> binary file object


@v1.post("/datasets/<name>")
def upload_dataset(name: str):
    """Upload a labelled dataset: a zip of <person>/<photo> entries, or multipart files whose field is the person.

    Stored under datasets/<name>/<person>/<photo>, ready for a training job's dataset_prefix. 409 if the
    dataset exists (add ?append=true to add new photos to it; existing photos are never replaced).
    """
    return _upload("datasets", name, labelled=True)


@v1.post("/inboxes/<name>")
def upload_inbox(name: str):
    """Upload photos to recognise: a zip, or multipart files (any field name), stored under inboxes/<name>/.

    Use inboxes/<name> as a recognition job's input_prefix. 409 if the inbox exists, unless ?append=true
    (existing photos are never replaced).
    """
    return _upload("inboxes", name, labelled=False)


@v1.get("/jobs/<job_id>/results")
def get_results(job_id: str):
    """A finished recognition job's results.jsonl: streamed, or on S3 a redirect to a presigned URL.

    ?redirect=false streams it from S3 too. 409 while the job has not succeeded.
    """
    key = _output(job_id, "results")
    storage = runtime.storage()
    if isinstance(storage, S3Storage) and request.args.get("redirect", "true").lower() not in ("0", "false", "no"):
        url = storage.client.generate_presigned_url(
            "get_object", Params={"Bucket": storage.bucket, "Key": key}, ExpiresIn=PRESIGNED_S)
        return redirect(url, code=302)
    return Response(stream_with_context(_stream(storage, key)), mimetype="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="{job_id}-results.jsonl"'})


@v1.get("/jobs/<job_id>/summary")
def get_summary(job_id: str):
    """A finished recognition job's summary: photos, faces, unknowns, errors, identities, stage timings."""
    key = _output(job_id, "summary")
    try:
        return jsonify(runtime.storage().get_json(key))
    except MissingKey:
        raise NotFound(f"job {job_id} has no summary in storage any more") from None


def _output(job_id: str, what: str) -> str:
    job = _job(job_id)
    if job["type"] != "recognition":
        raise Conflict(f"job {job_id} is a {job['type']} job: only recognition jobs have {what}")
    if job["state"] != SUCCEEDED:
        raise Conflict(f"job {job_id} is {job['state']}: its {what} are written when it succeeds")
    return job["result"][what]


def _stream(storage, key: str) -> Iterator[bytes]:
    if isinstance(storage, LocalStorage):
        with open(storage.path(key), "rb") as file:
            while chunk := file.read(CHUNK):
                yield chunk
    elif isinstance(storage, S3Storage):
        body = storage.client.get_object(Bucket=storage.bucket, Key=key)["Body"]
        yield from body.iter_chunks(CHUNK)
    else:
        yield storage.get(key)


# -- uploads ---------------------------------------------------------------------------------------

def _upload(top: str, name: str, labelled: bool):
    _check_name(name, "the name")
    append = request.args.get("append", "false").lower() in ("1", "true", "yes")
    request.max_content_length = MAX_UPLOAD_BYTES
    request.max_form_parts = MAX_FORM_PARTS
    prefix = f"{top}/{name}"
    with tempfile.TemporaryDirectory(prefix="facerec-upload-") as work:
        if request.mimetype in ("application/zip", "application/x-zip-compressed"):
            photos, skipped = _zip_photos(_save_body(work), labelled)
        elif request.mimetype == "multipart/form-data":
            photos, skipped = _multipart_photos(labelled)
        else:
            if request.is_json:
                request.get_json(silent=True)  # a hostile body gets the same answer as on every route
            raise BadRequest("send a zip (Content-Type: application/zip) or multipart/form-data files")
        if not photos:
            also = f" (skipped: {', '.join(skipped[:5])})" if skipped else ""
            raise BadRequest(f"the upload holds no photos{also}")
        storage = runtime.storage()
        keys = [f"{prefix}/{photo.relative}" for photo in photos]
        if len(set(keys)) < len(keys):
            twice = next(k for k in keys if keys.count(k) > 1)
            raise BadRequest(f"the upload holds {twice.removeprefix(prefix + '/')!r} more than once")
        exists = next(iter(storage.list(prefix + "/")), None) is not None
        if exists and not append:
            raise Conflict(f"{prefix} already exists: send ?append=true to add new photos to it "
                           "(photos already there are never replaced), or choose another name")
        if exists:
            taken = [key for key in keys if storage.exists(key)]
            if taken:
                raise Conflict(f"{len(taken)} of the photos are already in {prefix}, such as "
                               f"{taken[0].removeprefix(prefix + '/')!r}: nothing was written "
                               "(existing photos are never replaced; rename or leave them out)")
        elif not storage.put_new(f"{prefix}/{MARKER}", json.dumps({"uploaded_by": _caller()}).encode()):
            raise Conflict(f"{prefix} was created by another upload just now: send ?append=true to add to it")
        written = 0
        for photo, key in zip(photos, keys):
            with photo.open() as file:
                data = file.read(MAX_BYTES + 1)
            if not storage.put_new(key, data):
                raise Conflict(f"{key.removeprefix(prefix + '/')!r} appeared in {prefix} during the upload; "
                               f"{written} photos were written before it, none replaced")
            written += 1
    people = sorted({photo.relative.split("/")[0] for photo in photos}) if labelled else None
    body = {"name": name, "prefix": prefix, "photos": written, "bytes": sum(p.size for p in photos),
            "skipped": skipped, "appended": exists}
    if people is not None:
        body["people"] = len(people)
    response = jsonify(body)
    response.headers["Location"] = f"/v1/{top}/{name}"
    return response, 201


def _caller() -> str:
    from flask import g

    return g.get("api_key_name", "")


def _check_name(value: str, what: str) -> str:
    if not NAME.fullmatch(value or ""):
        raise BadRequest(f"{what} {value[:100]!r} is not allowed: use letters, digits, '.', '_', '-', '(', ')', "
                         "'+' and spaces, starting with a letter or digit, at most 128 characters, "
                         "no path separators")
    return value


def _save_body(work: str) -> str:
    """The request body (a zip) in a temporary file, read in chunks; 413 past the upload bound."""
    path = os.path.join(work, "upload.zip")
    total = 0
    with open(path, "wb") as file:
        while chunk := request.stream.read(CHUNK):
            total += len(chunk)
            if total > MAX_UPLOAD_BYTES:
                raise RequestEntityTooLarge(f"the upload is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
            file.write(chunk)
    return path


def _zip_photos(path: str, labelled: bool) -> tuple[list[Photo], list[str]]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise BadRequest("the upload is not a readable zip file") from None
    entries = [info for info in archive.infolist() if not info.is_dir()]
    if len(entries) > MAX_FILES:
        raise BadRequest(f"the zip holds {len(entries)} files: at most {MAX_FILES} per upload")
    if sum(info.file_size for info in entries) > MAX_UPLOAD_BYTES:  # a zip bomb says so in its directory
        raise RequestEntityTooLarge(f"the zip's contents are larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
    names = [_entry_parts(info.filename) for info in entries]
    kept = [(info, parts) for info, parts in zip(entries, names) if parts is not None]
    skipped = [info.filename for info, parts in zip(entries, names) if parts is None]
    depth = 2 if labelled else 1
    # A zip of a folder (lfw5/Ada/1.jpg): drop the one top folder every entry shares.
    tops = {parts[0] for _, parts in kept}
    if len(tops) == 1 and all(len(parts) == depth + 1 for _, parts in kept):
        kept = [(info, parts[1:]) for info, parts in kept]
    photos = []
    for info, parts in kept:
        if len(parts) != depth:
            expected = "<person>/<photo>" if labelled else "<photo>"
            raise BadRequest(f"zip entry {info.filename!r}: expected {expected}")
        for part in parts:
            _check_name(part, f"zip entry {info.filename!r}: the name")
        if info.file_size > MAX_BYTES:
            raise RequestEntityTooLarge(f"zip entry {info.filename!r} is larger than {MAX_BYTES // (1024 * 1024)} MB")
        if not is_image_key(parts[-1]):
            skipped.append(info.filename)
            continue
        photos.append(Photo("/".join(parts), info.file_size, lambda info=info: archive.open(info)))
    return photos, skipped


def _entry_parts(filename: str) -> list[str] | None:
    """A zip entry's path parts, or None for what zips carry besides photos (macOS resource forks, dotfiles).
    Absolute paths, '..' and backslashes are refused outright."""
    if filename.startswith("/") or "\\" in filename or ".." in filename.split("/"):
        raise BadRequest(f"zip entry {filename[:200]!r} is not allowed: absolute path, '..' or backslash")
    parts = [part for part in filename.split("/") if part]
    if not parts or parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts):
        return None
    return parts


def _multipart_photos(labelled: bool) -> tuple[list[Photo], list[str]]:
    try:
        files = list(request.files.items(multi=True))
    except RequestEntityTooLarge:
        raise RequestEntityTooLarge(f"the upload is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB") from None
    photos, skipped = [], []
    for field, upload in files:
        filename = os.path.basename((upload.filename or "").replace("\\", "/"))
        if upload.filename and filename != upload.filename:
            raise BadRequest(f"file name {upload.filename[:200]!r} is not allowed: no folders in file names")
        _check_name(filename, "the file name")
        if labelled:
            _check_name(field, f"the person (field name) of {filename!r}")
        if not is_image_key(filename):
            skipped.append(filename)
            continue
        size = _size(upload.stream)
        if size > MAX_BYTES:
            raise RequestEntityTooLarge(f"{filename!r} is larger than {MAX_BYTES // (1024 * 1024)} MB")
        relative = f"{field}/{filename}" if labelled else filename
        photos.append(Photo(relative, size, lambda upload=upload: _rewound(upload.stream)))
    return photos, skipped


def _size(stream) -> int:
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    return size


class _rewound:
    """A context manager giving an uploaded file from its start, left open (werkzeug closes it)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def __enter__(self):
        self.stream.seek(0)
        return self.stream

    def __exit__(self, *exc) -> None:
        return None


"""Photos in without touching the storage folder: upload labelled datasets and inboxes to recognise.

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

import io
import json
import os
import re
import tempfile
import zipfile
import zlib
from dataclasses import dataclass

from flask import Blueprint, jsonify, request
from PIL import Image, UnidentifiedImageError
from werkzeug.exceptions import BadRequest, Conflict, RequestEntityTooLarge

from api.context import caller, runtime, settings
from api.endpoints import SUBMIT, endpoint
from pipeline.dataset import is_image_key
from pipeline.decode import MAX_BYTES
from pipeline.storage import check_key

uploads = Blueprint("uploads", __name__, url_prefix="/v1")

MAX_FILES = 100_000
MAX_FORM_PARTS = 20_000  # multipart files per request (werkzeug's default is 1,000)
# Names of datasets, inboxes, people and files: letters, digits and . _ - ( ) + and spaces inside,
# starting with a letter or digit, so no '..', no hidden files, no separators, no control characters.
NAME = re.compile(r"[^\W_]|[^\W_][\w.() +-]{0,126}[\w)]", re.UNICODE)
MARKER = ".facerec-upload.json"  # in the uploaded folder: ignored by training and recognition (a dotfile)
CHUNK = 1024 * 1024
_PHOTO_FILE = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
_ZIP = {"type": "string", "format": "binary", "contentMediaType": "application/zip"}
_APPEND = {"name": "append", "in": "query", "description": "add new photos to an existing folder",
           "schema": {"type": "boolean", "default": False}}
DATASET_BODIES = {
    "application/zip": {"schema": {**_ZIP, "description": "entries <person>/<photo> (one common top folder is "
                                                          "dropped)"}},
    "multipart/form-data": {"schema": {
        "type": "object", "description": "one or more photo files; each field's name is the person",
        "additionalProperties": {"type": "array", "items": _PHOTO_FILE}}},
}
INBOX_BODIES = {
    "application/zip": {"schema": {**_ZIP, "description": "entries <photo> (one common top folder is dropped)"}},
    "multipart/form-data": {"schema": {
        "type": "object", "description": "one or more photo files, any field names",
        "additionalProperties": {"type": "array", "items": _PHOTO_FILE}}},
}


@dataclass
class Photo:
    relative: str  # person/file or file, checked
    size: int
    open: object  # () -> binary file object
    sent_as: str  # its name in the request (a zip entry's path, or the file's name), for messages


@uploads.post("/datasets/<name>")
@endpoint(SUBMIT, other_bodies=DATASET_BODIES, query=(_APPEND,),
          success=("201", "what was stored: prefix, photos, people, skipped files"))
def upload_dataset(name: str):
    """Upload a labelled dataset: a zip of <person>/<photo> entries, or multipart files whose field is the person.

    Stored under datasets/<name>/<person>/<photo>, ready for a training job's dataset_prefix. 409 if the
    dataset exists (add ?append=true to add new photos to it; existing photos are never replaced).
    """
    return _upload("datasets", name, labelled=True)


@uploads.post("/inboxes/<name>")
@endpoint(SUBMIT, other_bodies=INBOX_BODIES, query=(_APPEND,),
          success=("201", "what was stored: prefix, photos, skipped files"))
def upload_inbox(name: str):
    """Upload photos to recognise: a zip, or multipart files (any field name), stored under inboxes/<name>/.

    Use inboxes/<name> as a recognition job's input_prefix. 409 if the inbox exists, unless ?append=true
    (existing photos are never replaced).
    """
    return _upload("inboxes", name, labelled=False)


# -- uploads ---------------------------------------------------------------------------------------

def _upload(top: str, name: str, labelled: bool):
    _check_name(name, "the name")
    append = request.args.get("append", "false").lower() in ("1", "true", "yes")
    request.max_content_length = _max_upload_bytes()
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
        _check_photos(photos)
        storage = runtime().storage
        keys = [check_key(f"{prefix}/{photo.relative}") for photo in photos]  # every key valid before any write
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
        elif not storage.put_new(f"{prefix}/{MARKER}", json.dumps({"uploaded_by": caller()}).encode()):
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
    if skipped:
        body["skipped_because"] = ("not photos by their names: a photo's name ends in a suffix of a format "
                                   "Pillow reads (.jpg, .png, .webp, .tif and 57 more)")
    if people is not None:
        body["people"] = len(people)
    response = jsonify(body)
    response.headers["Location"] = f"/v1/{top}/{name}"
    return response, 201


def _check_photos(photos: list[Photo]) -> None:
    """Read every photo once before the first write: an entry the zip cannot give back whole (a bad CRC,
    data cut short) or a file that is not a photo Pillow can read refuses the whole upload, naming them."""
    refused = []
    for photo in photos:
        try:
            with photo.open() as file:
                data = file.read(MAX_BYTES + 1)
        except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as err:
            refused.append(f"{photo.sent_as!r} cannot be read from the upload ({err})")
            continue
        try:
            Image.open(io.BytesIO(data))  # the header only
        except (UnidentifiedImageError, OSError, ValueError):
            refused.append(f"{photo.sent_as!r} is not a photo Pillow can read")
    if refused:
        more = f"; and {len(refused) - 5} more" if len(refused) > 5 else ""
        raise BadRequest(f"{len(refused)} of the {len(photos)} photos were refused, so nothing was written: "
                         f"{'; '.join(refused[:5])}{more}")


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
            if total > _max_upload_bytes():
                raise RequestEntityTooLarge(f"the upload is larger than {settings().max_upload_mb} MB")
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
    if sum(info.file_size for info in entries) > _max_upload_bytes():  # a zip bomb says so in its directory
        raise RequestEntityTooLarge(f"the zip's contents are larger than {settings().max_upload_mb} MB")
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
        photos.append(Photo("/".join(parts), info.file_size, lambda info=info: archive.open(info), info.filename))
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
        raise RequestEntityTooLarge(f"the upload is larger than {settings().max_upload_mb} MB") from None
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
        photos.append(Photo(relative, size, lambda upload=upload: _rewound(upload.stream), filename))
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


def _max_upload_bytes() -> int:
    return settings().max_upload_mb * 1024 * 1024

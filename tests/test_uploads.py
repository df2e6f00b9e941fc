"""Uploads check every photo before writing the first: a zip entry that cannot be read back whole (a bad
CRC, damaged data) or a file that is not a photo refuses the whole upload with a 400 naming it, nothing is
written, and the clean upload that follows is taken (it would have got 409 for the half-written folder)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from api import create_app
from api.keys import config_entry
from tests.settings import embedded

KEY = "frk_test-uploads-Lk2Jh5Gf8Ds1Az4X"
PEOPLE = ["Colin_Powell", "Tony_Blair"]


@pytest.fixture
def client(tmp_path):
    settings = embedded(tmp_path / "data", api_keys=(config_entry("submitter", "submit", KEY),))
    client = create_app(settings).test_client()
    client.environ_base["HTTP_X_API_KEY"] = KEY
    return client


@pytest.fixture
def photos(lfw_dir: Path) -> dict[str, bytes]:
    """Three photos of each of two people, by their entry names in a zip."""
    return {f"{person}/{path.name}": path.read_bytes()
            for person in PEOPLE for path in sorted((lfw_dir / person).glob("*.jpg"))[:3]}


def zipped(entries: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def damaged(archive: bytes, entry_data: bytes) -> bytes:
    """The zip with one byte inside one entry's data changed (its directory and sizes intact)."""
    middle = len(entry_data) // 2  # JPEG headers are alike: look for the entry by its middle
    at = archive.index(entry_data[middle:middle + 64]) + 10
    return archive[:at] + bytes([archive[at] ^ 0xFF]) + archive[at + 1:]


def stored(client) -> list[str]:
    return list(client.application.extensions["facerec"].storage.list("datasets/"))


def upload_zip(client, data: bytes):
    return client.post("/v1/datasets/lfw2", data=data, content_type="application/zip")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_zip_with_a_damaged_entry_is_refused_naming_it_and_writes_nothing(client, photos, compression):
    bad_name = sorted(photos)[-1]  # the last entry: every other one would be written first without the check
    archive = zipped(photos, compression)
    if compression == zipfile.ZIP_DEFLATED:
        entry_data = zipfile.ZipFile(io.BytesIO(archive)).getinfo(bad_name)
        start = entry_data.header_offset + 30 + len(bad_name.encode()) + len(entry_data.extra)
        broken = archive[:start + 300] + bytes([archive[start + 300] ^ 0xFF]) + archive[start + 301:]
    else:
        broken = damaged(archive, photos[bad_name])

    refused = upload_zip(client, broken)
    assert refused.status_code == 400, refused.text
    assert bad_name in refused.json["error"] and "nothing was written" in refused.json["error"]
    assert stored(client) == []

    accepted = upload_zip(client, archive)
    assert accepted.status_code == 201, accepted.text
    assert accepted.json["photos"] == len(photos)


def test_a_text_file_named_like_a_photo_is_refused_and_a_text_file_is_skipped_saying_why(client, photos):
    files = {name.split("/")[0]: (io.BytesIO(data), name.split("/")[1]) for name, data in list(photos.items())[:1]}
    notes = {"Tony_Blair": [(io.BytesIO(b"shopping list: milk, eggs"), "notes.jpg")]}
    refused = client.post("/v1/datasets/mixed", data={**files, **notes}, content_type="multipart/form-data")
    assert refused.status_code == 400, refused.text
    assert "'notes.jpg' is not a photo Pillow can read" in refused.json["error"]
    assert stored(client) == []

    readme = {"Tony_Blair": [(io.BytesIO(b"how to use"), "readme.txt")]}
    files = {name.split("/")[0]: (io.BytesIO(data), name.split("/")[1]) for name, data in list(photos.items())[:1]}
    accepted = client.post("/v1/datasets/mixed", data={**files, **readme}, content_type="multipart/form-data")
    assert accepted.status_code == 201, accepted.text
    assert accepted.json["skipped"] == ["readme.txt"]
    assert "not photos by their names" in accepted.json["skipped_because"]

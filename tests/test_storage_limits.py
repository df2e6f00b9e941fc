"""Requests at the file system's and the object store's limits get a 4xx naming the problem, never a 500 nor
a 503 that asks to try again: a name longer than a file system allows (255 bytes between two '/'), a key
longer than S3 allows (1,024 bytes), and an output folder that is in fact a photo. The same bounds hold on
every backend, so a key accepted on local disk is accepted on S3 and the other way round."""

from __future__ import annotations

import io

import pytest

from api import create_app
from api.keys import config_entry
from pipeline import registry
from pipeline.storage import InvalidKey, LocalStorage, check_key
from tests.settings import embedded

KEY = "frk_test-limits-Zx8Qw2Er4Ty6Ui9O"
LONG = "x" * 300  # one name of 300 bytes
WIDE = "名" * 100  # 100 characters, 300 bytes in UTF-8: short to the eye, long to the file system


@pytest.fixture
def client(tmp_path):
    settings = embedded(tmp_path / "data", api_keys=(config_entry("submitter", "submit", KEY),))
    app = create_app(settings)
    storage = app.extensions["facerec"].storage
    storage.put("datasets/two/ada/1.jpg", b"not read at submit")
    storage.put("inbox/1.jpg", b"not read at submit")
    version = registry.new_version_id()
    registry.publish_version(storage, "m", version, {}, {"model": "m", "version": version})
    registry.set_current(storage, "m", version)
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = KEY
    return client


@pytest.mark.parametrize("name", [LONG, WIDE])
@pytest.mark.parametrize(("path", "body"), [
    ("/v1/jobs/training", {"model": "m", "dataset_manifest": "manifests/{name}.jsonl"}),
    ("/v1/jobs/training", {"model": "m", "dataset_prefix": "datasets/{name}"}),
    ("/v1/jobs/training", {"model": "m", "dataset_prefix": "datasets/two", "validation_manifest": "{name}"}),
    ("/v1/jobs/enroll", {"model": "m", "dataset_prefix": "{name}/people"}),
    ("/v1/jobs/recognition", {"model": "m", "input_manifest": "lists/{name}"}),
    ("/v1/jobs/recognition", {"model": "m", "input_prefix": "inbox/{name}"}),
    ("/v1/jobs/recognition", {"model": "m", "input_prefix": "inbox", "output_prefix": "results/{name}"}),
    ("/v1/recognize", {"model": "m", "key": "inbox/{name}.jpg"}),
])
def test_a_name_longer_than_a_file_system_allows_is_a_400_naming_it(client, path, body, name):
    sent = {field: value.format(name=name) if isinstance(value, str) else value for field, value in body.items()}
    response = client.post(path, json=sent)
    assert response.status_code == 400, response.text
    assert "bytes long, at most 255 between two '/'" in response.json["error"]


def test_a_key_longer_than_s3_allows_is_a_400_naming_it(client):
    key = "/".join(["folder"] * 200)  # short names, 1,399 bytes in all
    response = client.post("/v1/jobs/recognition", json={"model": "m", "input_manifest": key})
    assert response.status_code == 400 and "at most 1024" in response.json["error"], response.text


@pytest.mark.parametrize("name", [WIDE, "ok"])
def test_an_upload_whose_names_are_too_long_for_the_file_system_is_a_400_and_writes_nothing(client, name, lfw_dir):
    person = WIDE if name == "ok" else "ada"
    files = {person: (io.BytesIO((lfw_dir / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes()), "1.jpg")}
    response = client.post(f"/v1/datasets/{name}", data=files, content_type="multipart/form-data")
    assert response.status_code == 400, response.text
    assert "bytes long" in response.json["error"]
    storage = client.application.extensions["facerec"].storage
    assert list(storage.list("datasets/")) == ["datasets/two/ada/1.jpg"], "nothing written"


def test_an_output_prefix_that_is_a_photo_is_a_409_not_a_retry(client):
    response = client.post("/v1/jobs/recognition", json={"model": "m", "input_prefix": "inbox",
                                                          "output_prefix": "inbox/1.jpg"})
    assert response.status_code == 409, response.text
    assert "is an object already" in response.json["error"] and "Retry-After" not in response.headers


def test_every_backend_refuses_the_same_keys(tmp_path):
    for key in [f"a/{LONG}", f"{WIDE}/b", "/".join(["folder"] * 200)]:
        with pytest.raises(InvalidKey):
            check_key(key)
        with pytest.raises(InvalidKey):
            LocalStorage(tmp_path).put(key, b"")
    check_key("a/" + "x" * 255)  # the bound itself is fine

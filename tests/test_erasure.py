"""Erasure (pipeline.erasure) on real LFW faces, on local disk and on SeaweedFS: after a person is erased from
a dataset, a centroid model, a face index, single-photo answers and job results, their photo is found in no index
and named by no current model, older model versions holding them are retired, no stored object holds their
embedding, everyone else is untouched, and the receipt lists what was removed with each object's hash."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pipeline import registry
from pipeline.erasure import ErasureRequest, erase
from pipeline.face_index import FaceIndex, add_chunk_faces
from pipeline.recognize import load_model, recognize
from pipeline.search import photo_query, search
from pipeline.storage import LocalStorage
from pipeline.train import TrainingParams, train_model
from tests.test_face_index import lookalikes
from tests.test_training import upload

PEOPLE = ["Colin_Powell", "Tony_Blair", "Hugo_Chavez", "Jean_Chretien"]
ERASED = "Hugo_Chavez"
S3 = pytest.param("s3", marks=pytest.mark.system)
REQUEST = ErasureRequest(ERASED, models=["gallery"], indexes=["archive"], datasets=["people"], redact_results=True)


@pytest.fixture(params=["local", S3])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    return request.getfixturevalue("s3_storage")


def photos(lfw_dir, person: str, start: int, count: int) -> list[tuple[str, bytes]]:
    return [(f"inbox/{path.name}", path.read_bytes())
            for path in sorted((lfw_dir / person).glob("*.jpg"))[start:start + count]]


def photos_of(lfw_dir, person: str, number: int) -> tuple[str, bytes, str]:
    path = sorted((lfw_dir / person).glob("*.jpg"))[number]
    return path.name, path.read_bytes(), "image/jpeg"


def every_object(storage) -> dict[str, bytes]:
    return {key: storage.get(key) for key in storage.list()}


def holding(objects: dict[str, bytes], needles: list[bytes]) -> list[str]:
    return sorted(key for key, data in objects.items() if any(needle in data for needle in needles))


def build_world(storage, lfw_dir, face_pipeline) -> dict:
    """A dataset, a centroid model trained on it, an index of other photos, results and single-photo answers;
    the byte strings of the erased person's embeddings and centroid as stored, and every object's hash."""
    items = upload(storage, lfw_dir, PEOPLE, 8)
    for item in items:  # as POST /v1/datasets/people stores them
        storage.put(f"datasets/people/{item.label}/{item.key.rsplit('/', 1)[1]}", storage.get(item.key))
        storage.delete(item.key)
    params = TrainingParams(model_type="centroid", validation_fraction=0.25, test_fraction=0.25)
    dataset = [item.__class__(f"datasets/people/{item.label}/{item.key.rsplit('/', 1)[1]}", item.label)
               for item in items]
    first = train_model(storage, face_pipeline, dataset, "gallery", params)
    assert registry.current_version(storage, "gallery") == first["version"]
    loaded = load_model(storage, "gallery", first["version"])
    inbox = [photo for person in PEOPLE for photo in photos(lfw_dir, person, 8, 4)]
    found = {p.key: p for p in face_pipeline.process(inbox)}
    # With lookalikes in the same file, their faces are under a tenth of it: LanceDB alone would leave them there.
    others = {key: photo for key, photo in found.items() if ERASED not in key}
    add_chunk_faces(storage, "archive", "job-1", 0, {**found, **lookalikes(others, 300)},
                    face_pipeline.embedder_name, "gallery", first["version"])
    results = list(recognize(face_pipeline, loaded, inbox))
    storage.put("jobs/job-1/results.jsonl", "".join(json.dumps(r) + "\n" for r in results).encode())
    chavez = next(r for r in results if any(f["identity"] == ERASED for f in r.get("faces", [])))
    powell = next(r for r in results if any(f["identity"] == "Colin_Powell" for f in r.get("faces", [])))
    storage.put_json("interactive/r-chavez/result.json", chavez)
    storage.put("interactive/r-chavez/photo", dict(inbox)[chavez["key"]])
    storage.put_json("interactive/r-powell/result.json", powell)

    index = FaceIndex(storage, "archive")
    rows = index.table().to_arrow().to_pylist()
    centroids = np.load(__import__("io").BytesIO(storage.get(
        f"{registry.version_prefix('gallery', first['version'])}/model/centroids.npy")))
    held = [np.asarray(row["vector"], np.float32).tobytes() for row in rows if row["key"] in
            {key for key, _ in photos(lfw_dir, ERASED, 8, 4)}]
    needles = held + [centroids[loaded.model.labels_.index(ERASED)].tobytes()]
    assert len(held) >= 4 and holding(every_object(storage), needles)  # the scan finds them before
    originals = {key: hashlib.sha256(data).hexdigest() for key, data in every_object(storage).items()}
    others_before = index.count() - len(held)

    return {"first": first, "loaded": loaded, "held": held, "needles": needles, "originals": originals,
            "others_before": others_before}


def test_an_erased_person_is_found_nowhere_and_the_receipt_says_what_was_removed(storage, lfw_dir, face_pipeline):
    world = build_world(storage, lfw_dir, face_pipeline)
    first, held, needles, originals = world["first"], world["held"], world["needles"], world["originals"]
    others_before = world["others_before"]
    probe = face_pipeline.process(photos(lfw_dir, ERASED, 12, 1))[0]
    searching = FaceIndex(storage, "archive")  # a worker's index, open and searched before the erasure
    assert search(searching, photo_query(probe, None), k=10)["matches"] >= 3

    receipt = erase(storage, face_pipeline, REQUEST, "erasure-1", "key admin")

    # The worker's handle still works, on the index as it is now (its version's files are gone).
    assert search(searching, photo_query(probe, None), k=10)["matches"] == 0

    # No stored object holds their faces' embeddings or their centroid.
    objects = every_object(storage)
    assert holding(objects, needles) == []
    # The dataset lost their photos only.
    assert not [key for key in objects if key.startswith(f"datasets/people/{ERASED}/")]
    assert len([key for key in objects if key.startswith("datasets/people/")]) == 8 * (len(PEOPLE) - 1)
    # The model: a new current version without them; the one that held them retired and unloadable.
    current = registry.current_version(storage, "gallery")
    assert current != first["version"] and receipt["models"][0]["retired"] == [first["version"]]
    model = load_model(storage, "gallery", current)
    assert ERASED not in model.model.labels_ and len(model.model.labels_) == len(PEOPLE) - 1
    with pytest.raises(LookupError, match="retired by erasure erasure-1"):
        load_model(storage, "gallery", first["version"])
    with pytest.raises(LookupError, match="retired"):
        registry.set_current(storage, "gallery", first["version"])
    with pytest.raises(LookupError, match="no earlier current version"):
        registry.roll_back(storage, "gallery")
    # Their photo (one never seen before) is named by no current model and matches no face of the index.
    answer = next(recognize(face_pipeline, model, photos(lfw_dir, ERASED, 12, 1)))
    assert answer["faces"][answer["main_face"]]["identity"] == "unknown"
    index = FaceIndex(storage, "archive")
    assert search(index, photo_query(probe, None), k=10)["matches"] == 0
    # Everyone else's faces are still there and still found.
    assert index.count() == others_before == receipt["indexes"][0]["faces_left"]
    powell_probe = face_pipeline.process(photos(lfw_dir, "Colin_Powell", 12, 1))[0]
    assert search(index, photo_query(powell_probe, None), k=10)["matches"] >= 3
    # Single-photo answers that named them are gone; the others stay. Results are redacted.
    assert not storage.exists("interactive/r-chavez/result.json") and not storage.exists("interactive/r-chavez/photo")
    assert storage.exists("interactive/r-powell/result.json")
    names = [(face["identity"], face["best_guess"]) for line in storage.read_lines("jobs/job-1/results.jsonl")
             for face in json.loads(line).get("faces", [])]
    assert ("erased", "erased") in names and ("Colin_Powell", "Colin_Powell") in names
    assert not [pair for pair in names if ERASED in pair]

    # The receipt: every object deleted with its hash before, what was rewritten, the faces removed.
    stored = storage.get_json("receipts/erasure-1.json")
    assert stored == json.loads(json.dumps(receipt)) and stored["asked_by"] == "key admin"
    for entry in stored["deleted"]:
        assert originals[entry["key"]] == entry["sha256"] and not storage.exists(entry["key"])
    deleted = {entry["key"] for entry in stored["deleted"]}
    assert {key for key in originals if key.startswith(f"datasets/people/{ERASED}/")} <= deleted
    assert "interactive/r-chavez/photo" in deleted
    assert stored["rewritten"][0]["key"] == "jobs/job-1/results.jsonl"
    assert stored["rewritten"][0]["sha256_before"] == originals["jobs/job-1/results.jsonl"]
    assert stored["counts"]["index_faces_removed"] == len(held) == len(stored["indexes"][0]["faces"])
    page = storage.get("receipts/erasure-1.html").decode()
    assert ERASED in page and "Objects deleted" in page and first["version"] in page


def test_an_erasure_that_finds_nothing_of_the_person_says_so_and_changes_nothing(tmp_path, face_pipeline):
    storage = LocalStorage(tmp_path / "store")
    storage.put("datasets/people/Someone/a.jpg", b"not a photo")
    with pytest.raises(ValueError, match="nothing of 'Nobody_Known' was found"):
        erase(storage, face_pipeline, ErasureRequest("Nobody_Known", datasets=["people"]), "e", "k")
    assert list(storage.list()) == ["datasets/people/Someone/a.jpg"]


class DiesOnce(LocalStorage):
    """Local storage whose process 'dies' (raises) at the n-th delete, once."""

    def __init__(self, root, n: int) -> None:
        super().__init__(root)
        self.deletes_left = n

    def delete(self, key: str) -> None:
        self.deletes_left -= 1
        if self.deletes_left == 0:
            raise KeyboardInterrupt("the worker died here")
        super().delete(key)


@pytest.mark.parametrize("dies_at", [3, 12])  # among the dataset photos; among the retired version's files
def test_an_erasure_restarted_after_its_worker_died_finishes_and_its_receipt_lists_everything(
        tmp_path, lfw_dir, face_pipeline, dies_at):
    storage = DiesOnce(tmp_path / "store", n=10**9)
    world = build_world(storage, lfw_dir, face_pipeline)
    # This time by a photo of them, not their name: the model names them.
    name, data, _ = photos_of(lfw_dir, ERASED, 13)
    storage.put(f"uploads/{name}", data)
    by_photo = ErasureRequest(None, models=["gallery"], indexes=["archive"], datasets=["people"],
                              photo_keys=[f"uploads/{name}"], redact_results=True)
    storage.deletes_left = dies_at
    with pytest.raises(KeyboardInterrupt):
        erase(storage, face_pipeline, by_photo, "erasure-2", "key admin")
    assert storage.exists("receipts/erasure-2.in-progress.json") and not storage.exists("receipts/erasure-2.json")
    receipt = erase(storage, face_pipeline, by_photo, "erasure-2", "key admin")  # the task run again
    assert receipt["person"] == ERASED and not storage.exists(f"uploads/{name}")
    objects = every_object(storage)
    assert holding(objects, world["needles"]) == []
    assert [key for key in objects if key.startswith("receipts/")] == ["receipts/erasure-2.html",
                                                                       "receipts/erasure-2.json"]
    deleted = {entry["key"]: entry["sha256"] for entry in receipt["deleted"]}
    gone = {key for key in world["originals"] if key not in objects and not key.startswith("indexes/")}
    assert gone - set(deleted) == set()  # every object the erasure removed is listed, with its hash before
    assert deleted.pop(f"uploads/{name}") == hashlib.sha256(data).hexdigest()
    assert all(world["originals"][key] == sha for key, sha in deleted.items())
    assert receipt["models"][0]["retired"] == [world["first"]["version"]]
    assert receipt["counts"]["index_faces_removed"] == len(world["held"])

"""The face index (pipeline.face_index, pipeline.search) on real LFW faces, on local disk and on SeaweedFS:
a chunk's faces are added once however often the chunk runs, an index keeps one embedder's faces, a search
finds the same person's other photos first and honours its filters, the ANN index answers as exact search
does, and a recognition chunk that fails after adding its faces and runs again adds nothing twice (the
Celery tasks, run eagerly in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.face_index import EmbedderMismatch, FaceIndex, IndexNotFound, face_rows, list_indexes
from pipeline.search import face_query, match_threshold, photo_query, search
from pipeline.storage import LocalStorage
from pipeline.thresholds import RateNotMeasurable

REPO = Path(__file__).resolve().parents[1]
PEOPLE = ["Ariel_Sharon", "Colin_Powell", "Hugo_Chavez", "Serena_Williams"]
PHOTOS = 6
S3 = pytest.param("s3", marks=pytest.mark.system)


@pytest.fixture(scope="module")
def found(face_pipeline, lfw_dir):
    """PhotoFaces of PHOTOS photos of each of PEOPLE, by key (person/photo.jpg)."""
    photos = [(f"{person}/{path.name}", path.read_bytes()) for person in PEOPLE
              for path in sorted((lfw_dir / person).glob("*.jpg"))[:PHOTOS]]
    return {photo.key: photo for photo in face_pipeline.process(photos)}


@pytest.fixture(params=["local", S3])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    return request.getfixturevalue("s3_storage")


def chunks(found: dict, size: int = 8) -> list[dict]:
    keys = sorted(found)
    return [{key: found[key] for key in keys[i:i + size]} for i in range(0, len(keys), size)]


def test_a_chunk_added_twice_adds_its_faces_once(storage, found, face_pipeline):
    index = FaceIndex(storage, "archive")
    index.ensure(face_pipeline.embedder_name, None, {"job": "job-1"})
    parts = chunks(found)
    faces = sum(len(photo.faces) for photo in found.values())
    assert faces >= len(found)
    added = [index.add(face_rows("job-1", number, part, face_pipeline.embedder_name))
             for number, part in enumerate(parts)]
    assert sum(added) == faces == index.count()
    # The same chunk again (a redelivery): nothing new.
    assert index.add(face_rows("job-1", 0, parts[0], face_pipeline.embedder_name)) == 0
    assert index.count() == faces
    # Another job's faces of the same photos are other rows.
    assert index.add(face_rows("job-2", 0, parts[0], face_pipeline.embedder_name)) > 0
    assert list_indexes(storage) == ["archive"]


def test_an_index_keeps_one_embedders_faces(storage, found, face_pipeline):
    index = FaceIndex(storage, "mirrored")
    index.ensure(face_pipeline.embedder_name, None, {"job": "j"})
    with pytest.raises(EmbedderMismatch, match="holds .* embeddings, not other-embedder"):
        index.ensure("other-embedder", None, {"job": "k"})
    with pytest.raises(IndexNotFound, match="no face index named 'nothing'"):
        FaceIndex(storage, "nothing").info()
    with pytest.raises(ValueError, match="invalid index name"):
        FaceIndex(storage, "../up")


def test_a_search_finds_the_same_persons_other_photos_first_and_honours_its_filters(storage, found, face_pipeline):
    index = FaceIndex(storage, "people")
    embedder = face_pipeline.embedder_name
    index.ensure(embedder, None, {"job": "a"})
    keys = sorted(found)
    half = len(keys) // 2
    index.add(face_rows("a" * 32, 0, {k: found[k] for k in keys[:half]}, embedder))
    index.add(face_rows("b" * 32, 1, {k: found[k] for k in keys[half:]}, embedder))
    person = "Hugo_Chavez"
    probe = f"{person}/{person}_0001.jpg"
    job = "a" * 32 if probe in keys[:half] else "b" * 32
    query = face_query(index, job, probe, found[probe].main_face)

    answer = search(index, query, k=PHOTOS, threshold=0.9)
    named = [face["key"].split("/")[0] for face in answer["faces"]]
    assert answer["faces"][0]["key"] == probe and answer["faces"][0]["similarity"] == pytest.approx(1, abs=1e-4)
    assert named[:PHOTOS - 1].count(person) >= PHOTOS - 2  # the same person's photos come first
    assert answer["threshold"] == 0.9 and all(face["match"] == (face["similarity"] >= 0.9) for face in answer["faces"])

    only_b = search(index, query, k=50, in_jobs=["b" * 32])["faces"]
    assert only_b and {face["job"] for face in only_b} == {"b" * 32}
    under = search(index, query, k=50, key_prefix="Serena_")["faces"]
    assert under and all(face["key"].startswith("Serena_") for face in under)
    quoted = search(index, query, k=5, key_prefix="it's")["faces"]  # a quote in a filter is a value, not SQL
    assert quoted == []
    with pytest.raises(LookupError, match="holds no face 7 of photo"):
        face_query(index, job, probe, 7)


def test_a_photos_face_is_searched_and_thresholds_come_from_the_calibration(tmp_path, found, face_pipeline):
    storage = LocalStorage(tmp_path / "store")
    record = {"default": 0.93, "genuine": 100, "impostor": 10_000, "lowest_far": 1e-4,
              "table": [{"far": 1e-2, "threshold": 0.90, "frr": 0.0}, {"far": 1e-3, "threshold": 0.92, "frr": 0.01},
                        {"far": 1e-4, "threshold": 0.94, "frr": 0.05}]}
    index = FaceIndex(storage, "calibrated")
    index.ensure(face_pipeline.embedder_name, record, {"job": "j"})
    index.add(face_rows("j", 0, found, face_pipeline.embedder_name))
    photo = found["Serena_Williams/Serena_Williams_0002.jpg"]
    query = photo_query(photo, None)
    assert query.described["face"] == photo.main_face and len(query.described["faces_in_photo"]) == len(photo.faces)
    assert match_threshold(index, query, None, None, None, 0)[0] == 0.93
    assert match_threshold(index, query, 1e-3, None, None, 0)[0] == pytest.approx(0.92)
    # A per-search rate over 100 faces is a per-comparison rate 100 times lower.
    assert match_threshold(index, query, None, 1e-1, None, 100)[0] == pytest.approx(0.92)
    with pytest.raises(RateNotMeasurable):
        match_threshold(index, query, 1e-6, None, None, 0)
    with pytest.raises(ValueError, match="face 9 does not exist"):
        photo_query(photo, 9)


def test_the_ann_index_answers_as_exact_search_does(tmp_path, found, face_pipeline):
    storage = LocalStorage(tmp_path / "store")
    index = FaceIndex(storage, "ann")
    embedder = face_pipeline.embedder_name
    index.ensure(embedder, None, {"job": "j"})
    real = found
    index.add(face_rows("j", 0, real, embedder))
    # Lookalikes of the real faces, so that the ANN index has partitions to search.
    index.add(face_rows("j", 1, lookalikes(real, 3000), embedder))
    assert index.optimize(min_faces=1000)["action"] == "built the ANN index"
    assert {tuple(i.columns) for i in index.table().list_indices()} == {("vector",), ("id",)}
    probe = next(iter(real))
    query = face_query(index, "j", probe, 0)
    ann = [face["key"] for face in search(index, query, k=10)["faces"]]
    exact = [face["key"] for face in search(index, query, k=10, exact=True)["faces"]]
    assert len(set(ann) & set(exact)) >= 9



def lookalikes(found: dict, count: int) -> dict:
    """PhotoFaces of `count` lookalikes of the real faces (bench.scale_faces), one face each."""
    from bench.scale_faces import distractors
    from pipeline.detect import Face
    from pipeline.faces import PhotoFaces

    extra = distractors(np.concatenate([photo.embeddings for photo in found.values()]), count)
    return {f"lookalikes/{i}.jpg": PhotoFaces(key=f"lookalikes/{i}.jpg", size=(100, 100), embeddings=extra[i:i + 1],
                                              faces=[Face((1.0, 1.0, 50.0, 50.0), 0.99, np.zeros((5, 2)))])
            for i in range(len(extra))}


def test_an_index_at_rest_is_searched_through_its_graph_and_faces_added_since_are_never_missed(
        storage, tmp_path, found, face_pipeline):
    index = FaceIndex(storage, "graph", cache_dir=tmp_path / "cache")
    embedder = face_pipeline.embedder_name
    index.ensure(embedder, None, {"job": "j"})
    index.add(face_rows("j", 0, found, embedder))
    index.add(face_rows("j", 1, lookalikes(found, 3000), embedder))
    assert not index.graph_ready()
    built = index.optimize(min_faces=1000, graph_min_faces=1000)
    assert built["graph"]["faces"] == index.count()
    assert index.graph_ready(wait=60)
    probe = next(iter(found))
    query = face_query(index, "j", probe, 0)
    answer = search(index, query, k=10)
    assert answer["searched_with"] == "graph"
    through_graph = answer["faces"]
    exact = search(index, query, k=10, exact=True)["faces"]
    assert through_graph[0] == exact[0] and through_graph[0]["key"] == probe  # its own face, all its columns
    assert len({face["key"] for face in through_graph} & {face["key"] for face in exact}) >= 9

    # A face added after the graph was built: the graph no longer answers, and the new face is found.
    copy = {"copies/probe.jpg": found[probe]}
    index.add(face_rows("later", 0, copy, embedder))
    assert not index.graph_ready()
    answer = search(index, query, k=2)
    assert answer["searched_with"] == "lancedb"
    assert {face["key"] for face in answer["faces"]} == {probe, "copies/probe.jpg"}
    # Optimized again: a new graph holds it, and the old graph's files are gone from storage.
    old = [key for key in storage.list(f"{index.prefix}/graph/")]
    rebuilt = index.optimize(min_faces=1000, graph_min_faces=1000)["graph"]
    assert rebuilt["faces"] == built["graph"]["faces"] + 1
    assert index.graph_ready(wait=60)
    assert {face["key"] for face in search(index, query, k=2)["faces"]} == {probe, "copies/probe.jpg"}
    assert not set(old) & set(storage.list(f"{index.prefix}/graph/"))
    # Filtered searches go to LanceDB and still honour their filter.
    assert {face["job"] for face in search(index, query, k=5, in_jobs=["later"])["faces"]} == {"later"}

EAGER = """
import json, sys
from pathlib import Path
from workers.app import app, runtime
from workers import tasks
from pipeline.face_index import FaceIndex
from pipeline.storage import StorageError

app.conf.task_always_eager = True
jobs, storage = runtime.jobs, runtime.storage
lfw = Path(sys.argv[1])
for person in ("Hugo_Chavez", "Serena_Williams"):
    for path in sorted((lfw / person).glob("*.jpg"))[:8]:
        storage.put(f"datasets/two/{person}/{path.name}", path.read_bytes())
    for path in sorted((lfw / person).glob("*.jpg"))[8:11]:
        storage.put(f"inbox/{path.name}", path.read_bytes())
job, _ = jobs.create("training", {"model": "two", "dataset_prefix": "datasets/two", "model_type": "centroid"})
tasks.train.apply(args=[job["id"]])
assert jobs.get(job["id"])["state"] == "succeeded", jobs.get(job["id"])

# The first write of chunk 0's predictions fails, as when a worker dies after adding the chunk's faces to
# the index: the chunk runs again (a retry) and adds them again.
real_put, failed = storage.put, []
def put(key, data):
    if key.endswith("/predictions/00000.jsonl") and not failed:
        failed.append(key)
        raise StorageError("injected: the worker died here")
    return real_put(key, data)
storage.put = put
job, _ = jobs.create("recognition", {"model": "two", "input_prefix": "inbox", "index": "eager"})
tasks.plan_recognition.apply(args=[job["id"]])


def run_what_was_sent():
    # The tasks the plan and each chunk sent (the chunks, the summary), run here one at a time as a worker would.
    while True:
        with app.connection_for_read() as connection:
            for name in ("gpu", "default"):
                queue = connection.SimpleQueue(name)
                try:
                    message = queue.get(block=False)
                except queue.Empty:
                    queue.close()
                    continue
                app.tasks[message.headers["task"]].apply(args=message.payload[0])
                message.ack()
                queue.close()
                break
            else:
                return


run_what_was_sent()
job = jobs.get(job["id"])
index = FaceIndex(storage, "eager")
table = index.table().to_arrow()
print(json.dumps({"job": job, "failed": failed, "rows": table.num_rows, "ids": len(set(table["id"].to_pylist())),
                  "chunk0": index.count("chunk = 0"), "info": index.info()}))
"""


@pytest.mark.system  # a fresh interpreter
def test_a_recognition_chunk_that_runs_again_after_adding_its_faces_adds_nothing_twice(tmp_path, lfw_dir):
    env = {"PYTHONPATH": str(REPO), "FACEREC_DATA_DIR": str(tmp_path / "data"), "PATH": "",
           "FACEREC_CHUNK_SIZE": "4", "FACEREC_TASK_MAX_RETRIES": "3", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", EAGER, str(lfw_dir)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    job = outcome["job"]
    assert job["state"] == "succeeded", job
    assert outcome["failed"], "the injected failure happened: chunk 0 ran twice"
    assert outcome["rows"] == outcome["ids"] == job["result"]["faces"] >= 6
    assert outcome["chunk0"] >= 4
    info = outcome["info"]
    assert info["created_by"]["model"] == "two" and info["calibration"]["genuine"] > 0

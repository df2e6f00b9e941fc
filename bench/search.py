"""Search: face-index accuracy on LFW, the index at scale on local disk and on SeaweedFS, search through the
API, and thresholds at a stated false-accept rate.

    python -m bench.search [--faces 100000] [--queries 500] [--api-photos 100] [--skip-s3]
    python -m bench.search --faces 1000000     # the full run

Starts the system as processes (bench.system: the API, a worker for interactive,gpu and one for default, on
Redis database FACEREC_BENCH_REDIS_DB, default 7, flushed first, and a fresh SeaweedFS bucket, deleted at the
end), trains a centroid model on 10 photos of each LFW person with at least 20, and indexes all 13,233 LFW
photos into the index "lfw" through one real recognition job. Then:
- accuracy: every LFW photo of a person with at least two, its subject's face searched for; mean average
  precision and recall@10 of that person's other photos, by exact search and by the ANN index over the same
  faces (recall@10 = found among the first 10 / min(10, other photos));
- scale: the LFW faces plus distractors (perturbed copies of real LFW embeddings, bench.scale_faces) up to
  --faces, in a face index on local disk and one on SeaweedFS: build time (rows in, then the ANN index),
  size, one merge-insert of a 256-face chunk (the exactly-once add at that size), and in a fresh process
  per index: --queries searches of LFW subjects' faces one at a time, their p50/p95/p99, recall@10 against
  exact search over the same faces, and the process's peak RSS;
- the API: --api-photos LFW photos searched end to end (multipart POST /v1/search against the SeaweedFS
  index of --faces faces), as a client sees them;
- thresholds: LFW's people split in two by a hash of their name; for each asked rate, the threshold set on
  the validation people's face pairs and the false-accept rate measured on the test people's pairs, with
  its 95% interval (bootstrap over probe people).
The last line printed is the JSON written to bench/results/search.json; the LFW faces are also kept in
var/bench/lfw-faces.npz for bench.vector_stores.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import numpy as np
import requests

from bench.machine import machine_info
from bench.output import publish
from bench.scale_faces import distractors, exact_top_k, unit
from bench.system import API_KEY, S3, BenchSystem, system_env
from bench.vector_stores import FACES_FILE
from config import REPO_ROOT, load_settings
from pipeline.face_index import FaceIndex, face_id, schema
from pipeline.storage import LocalStorage, S3Storage, Storage
from pipeline.thresholds import RateNotMeasurable, far_threshold, rate_from_counts

RESULTS = REPO_ROOT / "bench" / "results" / "search.json"
K = 10
ANN_DEPTH = 100  # how deep the ANN's ranking goes for average precision
FARS = (1e-3, 1e-4, 1e-5)
CHUNK = 256


# -- the LFW job ---------------------------------------------------------------------------------------

def index_lfw(system: BenchSystem, storage: S3Storage, lfw: Path) -> dict:
    """Upload LFW, train a centroid model, run one recognition job with "index": "lfw"; returns timings."""
    photos = sorted(lfw.glob("*/*.jpg"))
    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: storage.put(f"lfw/{p.parent.name}/{p.name}", p.read_bytes()), photos))
    people = [d for d in sorted(lfw.iterdir()) if len(list(d.glob("*.jpg"))) >= 20]
    for person in people:
        for path in sorted(person.glob("*.jpg"))[:10]:
            storage.put(f"datasets/lfw20/{person.name}/{path.name}", path.read_bytes())
    print(f"uploaded {len(photos):,} photos in {time.perf_counter() - started:.0f} s", flush=True)
    job = system.call("POST", "/jobs/training", json={"model": "lfw20", "dataset_prefix": "datasets/lfw20",
                                                      "model_type": "centroid"}).json()
    job = system.wait_for_job(job["id"])
    if job["state"] != "succeeded":
        raise RuntimeError(f"training failed: {job.get('error')}")
    started = time.perf_counter()
    job = system.call("POST", "/jobs/recognition",
                      json={"model": "lfw20", "input_prefix": "lfw", "index": "lfw"}).json()
    job = system.wait_for_job(job["id"], timeout=7200)
    if job["state"] != "succeeded":
        raise RuntimeError(f"recognition failed: {job.get('error')}")
    seconds = time.perf_counter() - started
    print(f"recognised and indexed {job['result']['images']:,} photos, {job['result']['faces']:,} faces in "
          f"{seconds:.0f} s", flush=True)
    return {"photos": job["result"]["images"], "faces": job["result"]["faces"], "job_s": round(seconds, 1),
            "photos_per_s": round(job["result"]["images"] / seconds, 1)}


def lfw_faces(storage: S3Storage) -> dict[str, np.ndarray]:
    """The faces of the index "lfw" as arrays: keys, person (the photo's folder), main, embeddings; also
    written to FACES_FILE."""
    table = FaceIndex(storage, "lfw").table().to_arrow().sort_by([("key", "ascending"), ("face", "ascending")])
    keys = np.array(table["key"].to_pylist())
    faces = {"keys": keys, "person": np.array([k.split("/")[1] for k in keys]),
             "main": np.array(table["main"].to_pylist()),
             "embeddings": np.asarray(table["vector"].to_pylist(), np.float32)}
    FACES_FILE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(FACES_FILE, **faces)
    return faces


# -- accuracy --------------------------------------------------------------------------------------------

def average_precision(ranked_relevant: np.ndarray, relevant: int) -> float:
    """AP of a ranking given whether each ranked item is relevant, with `relevant` relevant items in all
    (those never ranked count as found at no rank: precision 0)."""
    hits = np.flatnonzero(ranked_relevant)
    return float(np.sum((np.arange(len(hits)) + 1) / (hits + 1)) / relevant) if relevant else 0.0


def accuracy(faces: dict[str, np.ndarray], work: Path) -> dict:
    """mAP and recall@10 of every subject's other photos, exact and through an ANN index of the same faces."""
    vectors = unit(faces["embeddings"])
    person, main = faces["person"], faces["main"]
    subjects = np.flatnonzero(main)
    counts = dict(zip(*np.unique(person[subjects], return_counts=True)))
    queries = np.array([i for i in subjects if counts[person[i]] >= 2])

    def relevance(i: int, ranked: np.ndarray) -> tuple[np.ndarray, int]:
        """Whether each ranked face is another photo of i's subject, and how many there are."""
        return (person[ranked] == person[i]) & main[ranked] & (ranked != i), counts[person[i]] - 1

    exact_ap, exact_ap_at_depth, exact_recall, ann_ap, ann_recall = [], [], [], [], []
    for start in range(0, len(queries), 1000):
        block = queries[start:start + 1000]
        for i, similarity in zip(block, vectors[block] @ vectors.T):
            ranked = np.argsort(-similarity)
            relevant, total = relevance(i, ranked[ranked != i])
            exact_ap.append(average_precision(relevant, total))
            exact_ap_at_depth.append(average_precision(relevant[:ANN_DEPTH], total))
            exact_recall.append(relevant[:K].sum() / min(K, total))

    index = FaceIndex(LocalStorage(work / "accuracy"), "lfw")
    index.ensure("lfw", None, {"bench": "search"})
    index.table().add(rows_of(vectors, faces["keys"], main))
    index.optimize(min_faces=1000)
    row_of = {(key, face): n for n, (key, face) in enumerate(zip(faces["keys"].tolist(), face_numbers(faces["keys"])))}
    for i in queries:
        ranked = np.array([row_of[(hit.key, hit.face)] for hit in index.search(vectors[i], ANN_DEPTH + 1)])
        relevant, total = relevance(i, ranked[ranked != i][:ANN_DEPTH])
        ann_ap.append(average_precision(relevant, total))
        ann_recall.append(relevant[:K].sum() / min(K, total))
    return {"queries": int(len(queries)), "people": int(sum(c >= 2 for c in counts.values())),
            "map": round(float(np.mean(exact_ap)), 4),
            # Average precision over the first ANN_DEPTH faces only, exact and ANN alike (a person with more
            # photos than that cannot reach 1).
            "map_at_100_exact": round(float(np.mean(exact_ap_at_depth)), 4),
            "map_at_100_ann": round(float(np.mean(ann_ap)), 4),
            "recall_at_10_exact": round(float(np.mean(exact_recall)), 4),
            "recall_at_10_ann": round(float(np.mean(ann_recall)), 4), "ann_depth_for_map": ANN_DEPTH}


def face_numbers(keys: np.ndarray) -> np.ndarray:
    """Each face's number within its photo, for keys sorted with a photo's faces together and in order."""
    numbers, seen = np.zeros(len(keys), np.int32), {}
    for n, key in enumerate(keys.tolist()):
        numbers[n] = seen.get(key, 0)
        seen[key] = numbers[n] + 1
    return numbers


def rows_of(vectors: np.ndarray, keys: np.ndarray, main: np.ndarray, job: str = "lfw"):
    """Index rows for bare vectors (no photo behind the distractors): what face_rows makes from photos."""
    import pyarrow as pa

    count, faces = len(vectors), face_numbers(keys)
    ids = [face_id(job, key, int(face)) for key, face in zip(keys.tolist(), faces)]
    table = schema()
    return pa.table({
        "id": ids, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), 128),
        "key": keys.tolist(), "face": faces, "box": pa.FixedSizeListArray.from_arrays(
            pa.array(np.tile([10, 10, 100, 120], count).astype(np.float32)), 4),
        "landmarks": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(10 * count, np.float32)), 10),
        "detector_score": np.ones(count, np.float32), "main": main.astype(bool), "job": [job] * count,
        "chunk": np.zeros(count, np.int32), "embedder": ["lfw"] * count}, schema=table)


# -- scale -----------------------------------------------------------------------------------------------

def build_scale_index(storage: Storage, name: str, vectors: np.ndarray, keys: np.ndarray, main: np.ndarray,
                      calibration: dict | None, embedder: str, described: dict) -> dict:
    """A face index of the given faces: rows in by 100,000, then the ANN index, one chunk's merge-insert
    timed (in a fresh process, added and removed again), then the search graph; timings and size."""
    index = FaceIndex(storage, name)
    index.ensure(embedder, calibration, {"bench": "search"})
    started = time.perf_counter()
    for start in range(0, len(vectors), 100_000):
        index.table().add(rows_of(vectors[start:start + 100_000], keys[start:start + 100_000],
                                  main[start:start + 100_000]))
    rows_s = time.perf_counter() - started
    # Old versions' files removed at once (the index as searched); the search graph is built from the result.
    optimized = index.optimize(min_faces=1, graph_min_faces=len(vectors) + 1)
    index.table().optimize(cleanup_older_than=timedelta(0), delete_unverified=True)
    ann_s = time.perf_counter() - started
    # Before the graph: the merge-insert changes the table, and a graph answers only the version it was built
    # from (a job's end optimizes the index again, as here).
    merged = merge_in_fresh_process(described, name)
    started_graph = time.perf_counter()
    graph = index.optimize(min_faces=1)["graph"]
    build_s = ann_s + time.perf_counter() - started_graph
    graph_mb = sum(_sizes(storage, f"{index.prefix}/graph")) / 1e6
    size = sum(_sizes(storage, index.prefix)) / 1e6
    return {"faces": index.count(), "rows_s": round(rows_s, 1), "ann_build_s": round(ann_s, 1),
            "graph_build_s": graph["build_s"], "build_s": round(build_s, 1), "ann": optimized["action"],
            "index_mb": round(size, 1), "graph_mb": round(graph_mb, 1), **merged}


def _sizes(storage: Storage, prefix: str):
    if isinstance(storage, LocalStorage):
        return (p.stat().st_size for p in (storage.root / prefix).rglob("*") if p.is_file())
    pages = storage.client.get_paginator("list_objects_v2").paginate(Bucket=storage.bucket, Prefix=prefix + "/")
    return (item["Size"] for page in pages for item in page.get("Contents", []))


SEARCHER = """
import json, sys, time
from pathlib import Path
import numpy as np
from bench.vector_stores import peak_rss_mb
from pipeline.face_index import FaceIndex
from pipeline.storage import LocalStorage, S3Storage
where, name, queries = json.loads(sys.argv[1]), sys.argv[2], np.load(sys.argv[3])
storage = LocalStorage(where["root"]) if "root" in where else S3Storage(**where)
index = FaceIndex(storage, name, cache_dir=Path(sys.argv[4]))
started = time.perf_counter()
graph = index.graph_ready(wait=900)  # the search graph copied to local disk and opened, in the background
graph_load_s = time.perf_counter() - started
for q in queries[:20]:
    index.search(q, 10)  # warm: the index's structure read once
times, cpu, found, ways = [], [], [], []
for q in queries:
    started, used = time.perf_counter(), time.process_time()
    hits, way = index.find(q, 10)
    times.append((time.perf_counter() - started) * 1000)
    cpu.append((time.process_time() - used) * 1000)
    found.append([hit.key for hit in hits])
    ways.append(way)
print(json.dumps({"times_ms": times, "cpu_ms": cpu, "found": found, "peak_rss_mb": peak_rss_mb(),
                  "graph_load_s": round(graph_load_s, 1), "searched_with": sorted(set(ways))}))
"""


MERGER = """
import json, sys, time
import numpy as np
from bench.search import CHUNK, rows_of
from pipeline.face_index import FaceIndex
from pipeline.storage import LocalStorage, S3Storage
where, name = json.loads(sys.argv[1]), sys.argv[2]
storage = LocalStorage(where["root"]) if "root" in where else S3Storage(**where)
index = FaceIndex(storage, name)
vectors = np.random.default_rng(7).normal(size=(CHUNK, 128)).astype(np.float32)
chunk = rows_of(vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
                np.array([f"new/{n}.jpg" for n in range(CHUNK)]), np.ones(CHUNK, bool), job="new")
started = time.perf_counter()
added = index.add(chunk)
again = index.add(chunk)
milliseconds = (time.perf_counter() - started) * 1000 / 2
index.table().delete("job = 'new'")
print(json.dumps({"chunk_merge_insert_ms": round(milliseconds, 1), "chunk_added_then_again": [added, again]}))
"""


def merge_in_fresh_process(where: dict, name: str) -> dict:
    """One chunk's merge-insert, twice (the second adds nothing), timed in a fresh process as a worker adds it.
    (In the process that had just built the index, the first merge-insert on SeaweedFS never returned.)"""
    done = subprocess.run([sys.executable, "-c", MERGER, json.dumps(where), name], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def search_in_fresh_process(where: dict, name: str, queries: np.ndarray, work: Path) -> dict:
    np.save(work / "queries.npy", queries)
    cache = Path(tempfile.mkdtemp(prefix="searcher-", dir=work))
    command = [sys.executable, "-c", SEARCHER, json.dumps(where), name, str(work / "queries.npy"), str(cache)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def latency(times: list[float]) -> dict:
    return {f"search_p{q}_ms": round(float(np.percentile(times, q)), 2) for q in (50, 95, 99)}


# -- the API ---------------------------------------------------------------------------------------------

def api_searches(system: BenchSystem, photos: list[Path], index: str) -> dict:
    http = requests.Session()
    http.headers["X-API-Key"] = API_KEY
    # The worker copies the index's search graph to its disk in the background after its first search;
    # until then LanceDB answers. Timed from when the graph answers, as an index at rest is searched.
    started, ways = time.perf_counter(), []
    while time.perf_counter() - started < 900:
        response = http.post(f"{system.base}/search", data={"index": index, "k": str(K)}, timeout=60,
                             files={"photo": (photos[0].name, photos[0].read_bytes(), "image/jpeg")})
        ways.append(response.json().get("searched_with") if response.status_code == 200 else response.status_code)
        if ways[-1] == "graph":
            break
        time.sleep(1)  # under gunicorn's keep-alive of 2 s: a connection it closes meanwhile is reset on reuse
    waited = {"graph_wait_s": round(time.perf_counter() - started, 1),
              "searched_with_before": sorted(map(str, set(ways)))}
    times, errors, ways = [], 0, set()
    for n, path in enumerate(photos):
        started = time.perf_counter()
        response = http.post(f"{system.base}/search", files={"photo": (path.name, path.read_bytes(), "image/jpeg")},
                             data={"index": index, "k": str(K)}, timeout=60)
        if n >= 5:  # the first few load the model and open the index
            times.append((time.perf_counter() - started) * 1000)
        errors += response.status_code != 200
        ways.add(response.json().get("searched_with") if response.status_code == 200 else response.status_code)
    return {"photos": len(times), "errors": errors, "searched_with": sorted(map(str, ways)), **waited,
            **{f"p{q}_ms": round(float(np.percentile(times, q)), 1) for q in (50, 95, 99)}}


# -- thresholds ------------------------------------------------------------------------------------------

def thresholds(faces: dict[str, np.ndarray], fars: tuple[float, ...]) -> list[dict]:
    """Per asked rate: the threshold from the validation people's pairs, and the rate measured on the test
    people's pairs with its interval. People go to validation or test by a hash of their name."""
    main = faces["main"]
    vectors, person = unit(faces["embeddings"][main]), faces["person"][main]
    test_side = np.array([int(hashlib.sha256(p.encode()).hexdigest(), 16) % 2 == 1 for p in person])
    out = []
    validation = pair_scores(vectors[~test_side], person[~test_side])
    for far in fars:
        try:
            threshold = far_threshold(validation, far)
        except RateNotMeasurable as err:
            out.append({"asked": far, "error": str(err)})
            continue
        hits, totals = impostors_at(vectors[test_side], person[test_side], threshold)
        measured = rate_from_counts(hits, totals)
        out.append({"asked": far, "threshold": round(threshold, 4), "measured": measured["rate"],
                    "low": measured["interval"][0], "high": measured["interval"][1],
                    "test_comparisons": measured["comparisons"], "test_people": measured["units"],
                    "validation_comparisons": int(len(validation)),
                    "within_interval": measured["interval"][0] <= far <= measured["interval"][1]})
    return out


def pair_scores(vectors: np.ndarray, person: np.ndarray) -> np.ndarray:
    """The similarity of every pair of faces of different people (each pair once)."""
    index = np.unique(person, return_inverse=True)[1]
    scores = []
    for start in range(0, len(vectors), 2000):
        block = vectors[start:start + 2000] @ vectors[start:].T
        rows = np.arange(block.shape[0])[:, None]
        keep = (np.arange(block.shape[1])[None, :] > rows) & (index[start:start + 2000, None] != index[None, start:])
        scores.append(block[keep])
    return np.concatenate(scores)


def impostors_at(vectors: np.ndarray, person: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per probe person: impostor comparisons at or above threshold, and impostor comparisons (each ordered
    pair of faces of different people)."""
    people, index = np.unique(person, return_inverse=True)
    hits, totals = np.zeros(len(people)), np.zeros(len(people))
    for start in range(0, len(vectors), 2000):
        block = vectors[start:start + 2000] @ vectors.T
        other = index[start:start + 2000, None] != index[None, :]
        np.add.at(hits, index[start:start + 2000], ((block >= threshold) & other).sum(axis=1))
        np.add.at(totals, index[start:start + 2000], other.sum(axis=1))
    return hits, totals


def save_partial(summary: dict) -> None:
    """What is measured so far, in case a later stage never ends: a run is long."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.with_suffix(".partial.json").write_text(json.dumps(summary, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=100_000, help="faces in the scale indexes (LFW's and distractors)")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--api-photos", type=int, default=100)
    parser.add_argument("--skip-s3", action="store_true", help="no scale index on SeaweedFS")
    args = parser.parse_args(argv)

    lfw = load_settings().datasets_dir / "lfw-deepfunneled"
    db = int(os.environ.get("FACEREC_BENCH_REDIS_DB", "7"))
    redis_url = f"redis://127.0.0.1:6379/{db}"
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    bucket = f"bench-search-{uuid.uuid4().hex[:8]}"
    storage = S3Storage(bucket, **S3)
    storage.ensure_bucket()
    work = Path(tempfile.mkdtemp(prefix="bench-search-", dir=REPO_ROOT / "var"))
    load_at_start = os.getloadavg()[0]
    system = BenchSystem(system_env(redis_url, bucket, work / "data"), work / "logs", name="search")
    summary: dict = {"benchmark": "search"}
    try:
        system.start_all()
        summary["lfw_job"] = index_lfw(system, storage, lfw)
        save_partial(summary)
        faces = lfw_faces(storage)
        lfw_index = FaceIndex(storage, "lfw").info()
        summary["far"] = thresholds(faces, FARS)
        print("thresholds", summary["far"], flush=True)
        save_partial(summary)

        real = unit(faces["embeddings"])
        extra = max(0, args.faces - len(real))
        vectors = np.vstack([real, distractors(real, extra)]) if extra else real
        keys = np.concatenate([faces["keys"], np.array([f"distractors/{n:07d}.jpg" for n in range(extra)])])
        main = np.concatenate([faces["main"], np.ones(extra, bool)])
        subjects = np.flatnonzero(faces["main"])
        picked = np.random.default_rng(1).choice(subjects, min(args.queries, len(subjects)), replace=False)
        queries = real[picked]
        truth = [[keys[j] for j in row] for row in exact_top_k(vectors, queries, K)]
        scale = {"faces": len(vectors), "lfw_faces": len(real),
                 "distractors": f"{extra:,} perturbed copies of LFW embeddings (bench.scale_faces: Gaussian noise "
                                "with the real faces' covariance, cosine about 0.91 to the source)"}
        places = {"local": (LocalStorage(work / "scale"), {"root": str(work / "scale")})}
        if not args.skip_s3:
            places["seaweedfs"] = (storage, {"bucket": bucket, **S3})
        for place, (where, described) in places.items():
            built = build_scale_index(where, "scale", vectors, keys, main, lfw_index["calibration"],
                                      lfw_index["embedder"], described)
            searched = search_in_fresh_process(described, "scale", queries, work)
            recall = np.mean([len(set(found) & set(true)) / K for found, true in zip(searched["found"], truth)])
            # CPU time per search (all of LanceDB's threads): what it costs with no one else on the machine.
            cpu = {f"search_cpu_p{q}_ms": round(float(np.percentile(searched["cpu_ms"], q)), 2) for q in (50, 95)}
            scale[place] = {**built, **latency(searched["times_ms"]), **cpu,
                            "ann_recall_at_10": round(float(recall), 4), "searched_with": searched["searched_with"],
                            "graph_load_s": searched["graph_load_s"],
                            "peak_rss_mb": round(searched["peak_rss_mb"], 1)}
            print(place, scale[place], flush=True)
            save_partial(summary)
        summary["scale"] = scale
        del vectors
        photos = [p for d in sorted(lfw.iterdir()) for p in sorted(d.glob("*.jpg"))[:1]][::50][:args.api_photos + 5]
        summary["api"] = api_searches(system, photos, "scale" if not args.skip_s3 else "lfw")
        summary["api"]["index_faces"] = scale["faces"] if not args.skip_s3 else len(real)
        print("api", summary["api"], flush=True)
        save_partial(summary)
        summary["accuracy"] = accuracy(faces, work)
        print("accuracy", summary["accuracy"], flush=True)
    except Exception:
        for name in system.log_paths:
            print(f"--- {name} ---\n{system.log_tail(name)}")
        raise
    finally:
        system.stop()
        for key in list(storage.list()):
            storage.delete(key)
        with contextlib.suppress(Exception):
            storage.client.delete_bucket(Bucket=bucket)
        shutil.rmtree(work / "scale", ignore_errors=True)
        shutil.rmtree(work / "accuracy", ignore_errors=True)

    largest = summary["scale"].get("local", {})
    summary.update({
        "faces": summary["scale"]["faces"], "map": summary["accuracy"]["map"],
        "recall_at_10_exact": summary["accuracy"]["recall_at_10_exact"],
        "ann_recall_at_10": largest.get("ann_recall_at_10"),
        **{key: largest.get(key) for key in ("search_p50_ms", "search_p95_ms", "search_p99_ms", "build_s", "index_mb",
                                             "peak_rss_mb")},
        **machine_info(load_at_start),
    })
    publish(summary, RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Interactive: single-photo recognition (POST /v1/recognize) latency on a warm worker over Redis.

    python -m bench.interactive [--photos 200] [--concurrency 4] [--bulk-photos 600] [--no-bulk]

Starts the system as processes (infra.processes): the API (gunicorn, gthread), one Celery worker
for queues interactive,gpu (-c 1) and one for default, on Redis database FACEREC_BENCH_REDIS_DB (default 14,
flushed at the start) and a fresh SeaweedFS bucket (deleted at the end). Uploads a small dataset through
the API (6 LFW people x 12 photos), trains an embedding model, warms the worker with a few requests, then
times --photos single LFW photos (other photos of the trained people, then strangers) end to end as a
client sees them (multipart upload, answer with the faces):
- `sequential`: one after another;
- `concurrent`: --concurrency clients at once;
- `during_bulk`: one after another while a bulk recognition job of --bulk-photos photos runs on the same
  worker (the worker finishes the chunk it is on, then serves the interactive queue first).
The top-level p50_ms, p95_ms, p99_ms and errors are the sequential run's. `errors` counts answers other
than 200 (and exceptions). The last line printed is the JSON written to bench/results/interactive.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import requests

from bench.machine import machine_info
from bench.output import publish
from bench.system import API_KEY, S3, BenchSystem, system_env
from config import REPO_ROOT, load_settings
from infra.processes import wait_for
from pipeline.storage import S3Storage

PEOPLE = 6
TRAIN_PER_PERSON = 12
RESULTS = REPO_ROOT / "bench" / "results" / "interactive.json"


def pick_photos(lfw: Path, count: int) -> tuple[dict[str, list[Path]], list[Path]]:
    """The training photos of PEOPLE people, and count other photos to recognise: the trained people's
    remaining photos, then strangers'."""
    people = sorted((d for d in lfw.iterdir() if d.is_dir() and len(list(d.glob("*.jpg"))) >= 30),
                    key=lambda d: d.name)[:PEOPLE]
    train = {d.name: sorted(d.glob("*.jpg"))[:TRAIN_PER_PERSON] for d in people}
    others = [p for d in people for p in sorted(d.glob("*.jpg"))[TRAIN_PER_PERSON:TRAIN_PER_PERSON + 20]]
    strangers = sorted(p for d in sorted(lfw.iterdir())[:2000] if d not in people for p in d.glob("*.jpg"))
    return train, (others + strangers)[:count]


def one_request(http: requests.Session, base: str, path: Path) -> tuple[float, str | None]:
    started = time.perf_counter()
    try:
        with open(path, "rb") as file:
            response = http.post(f"{base}/recognize", files={"photo": (path.name, file, "image/jpeg")},
                                 data={"model": "bench"}, timeout=60)
        error = None if response.status_code == 200 else f"HTTP {response.status_code}"
    except requests.RequestException as err:
        error = type(err).__name__
    return time.perf_counter() - started, error


def run(base: str, photos: list[Path], concurrency: int) -> dict:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    queue = list(photos)
    lock = threading.Lock()

    def client():
        http = requests.Session()
        http.headers["X-API-Key"] = API_KEY
        while True:
            with lock:
                if not queue:
                    return
                path = queue.pop(0)
            seconds, error = one_request(http, base, path)
            with lock:
                latencies.append(seconds)
                if error:
                    errors[error] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"requests": len(latencies), "concurrency": concurrency,
            **{f"p{q}_ms": round(float(np.percentile(latencies, q)) * 1000, 1) for q in (50, 95, 99)},
            "max_ms": round(max(latencies) * 1000, 1), "errors": sum(errors.values()),
            "errors_by_kind": dict(errors), "photos_per_s": round(len(latencies) / wall, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--bulk-photos", type=int, default=600)
    parser.add_argument("--no-bulk", action="store_true", help="skip the run during a bulk job")
    args = parser.parse_args(argv)

    lfw = load_settings().datasets_dir / "lfw-deepfunneled"
    train, photos = pick_photos(lfw, args.photos)
    db = int(os.environ.get("FACEREC_BENCH_REDIS_DB", "14"))
    redis_url = f"redis://127.0.0.1:6379/{db}"
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    bucket = f"bench-interactive-{uuid.uuid4().hex[:8]}"
    storage = S3Storage(bucket, **S3)
    storage.ensure_bucket()
    work = Path(tempfile.mkdtemp(prefix="bench-interactive-"))
    load_at_start = os.getloadavg()[0]
    system = BenchSystem(system_env(redis_url, bucket, work / "data"), work, name="interactive")
    result: dict = {}
    try:
        system.start_all()
        files = [(person, (p.name, p.read_bytes(), "image/jpeg")) for person, paths in train.items() for p in paths]
        response = system.call("POST", "/datasets/bench", files=files, timeout=120)
        response.raise_for_status()
        job = system.call("POST", "/jobs/training", json={"model": "bench", "dataset_prefix": "datasets/bench"}).json()
        job = system.wait_for_job(job["id"])
        if job["state"] != "succeeded":
            raise RuntimeError(f"training failed: {job.get('error')}")
        print(f"trained bench {job['result']['version']} on {PEOPLE} people", flush=True)
        run(system.base, photos[:10], 1)  # warm: model loaded, TensorFlow's functions traced
        result["sequential"] = run(system.base, photos, 1)
        print("sequential", result["sequential"], flush=True)
        result["concurrent"] = run(system.base, photos, args.concurrency)
        print("concurrent", result["concurrent"], flush=True)
        if not args.no_bulk:
            bulk = [p for d in sorted(lfw.iterdir())[2000:4000] for p in sorted(d.glob("*.jpg"))][:args.bulk_photos]
            for path in bulk:
                storage.put(f"inboxes/bulk/{path.name}", path.read_bytes())
            job = system.call("POST", "/jobs/recognition",
                              json={"model": "bench", "input_prefix": "inboxes/bulk"}).json()
            wait_for(lambda: system.call("GET", f"/jobs/{job['id']}").json()["state"] == "running", 120,
                     "the bulk job to run")
            during = run(system.base, photos[:100], 1)
            bulk_state = system.call("GET", f"/jobs/{job['id']}").json()
            during["bulk_job_state_after"] = bulk_state["state"]
            during["bulk_photos"] = len(bulk)
            during["chunk_size"] = load_settings().chunk_size
            result["during_bulk"] = during
            print("during bulk", during, flush=True)
            system.wait_for_job(job["id"])
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
    sequential = result["sequential"]
    summary = {"benchmark": "interactive", "p50_ms": sequential["p50_ms"], "p95_ms": sequential["p95_ms"],
               "p99_ms": sequential["p99_ms"], "errors": sequential["errors"] + result["concurrent"]["errors"],
               **result, **machine_info(load_at_start),
               "photos": args.photos, "people_trained": PEOPLE}
    publish(summary, RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Interactive: single-photo recognition (POST /v1/recognize) latency on a warm worker over Redis.

    python -m bench.interactive [--photos 200] [--concurrency 4] [--bulk-photos 600] [--no-bulk]

Starts the system as processes, as tests/system.py does: the API (gunicorn, gthread), one Celery worker
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
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import requests

from api.keys import config_entry
from config import REPO_ROOT, load_settings
from pipeline.storage import S3Storage

API_KEY = "frk_bench-interactive-9Qw2Lr7Xc4Vb1Nm8"
S3 = {"endpoint_url": "http://127.0.0.1:8333", "access_key_id": "facerec-dev",
      "secret_access_key": "facerec-dev-secret"}
PEOPLE = 6
TRAIN_PER_PERSON = 12
RESULTS = REPO_ROOT / "bench" / "results" / "interactive.json"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


class System:
    """API (gunicorn) and two Celery workers as processes, each in its own session."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/v1"
        self.processes: dict[str, subprocess.Popen] = {}
        self.http = requests.Session()
        self.http.headers["X-API-Key"] = API_KEY

    def start(self) -> None:
        tag = uuid.uuid4().hex[:6]
        commands = {
            "api": ["-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--worker-class", "gthread",
                    "--workers", "2", "--threads", "16", "--timeout", "60", "api:create_app()"],
            "gpu-worker": ["-m", "celery", "-A", "workers.app", "worker", "-Q", "interactive,gpu", "-c", "1",
                           "--prefetch-multiplier", "1", "-n", f"bench-gpu-{tag}@%h", "--loglevel", "INFO"],
            "default-worker": ["-m", "celery", "-A", "workers.app", "worker", "-Q", "default", "-c", "1",
                               "-n", f"bench-default-{tag}@%h", "--loglevel", "INFO"],
        }
        for name, command in commands.items():
            with open(self.logs / f"{name}.log", "wb") as log:
                self.processes[name] = subprocess.Popen(
                    [sys.executable, *command], cwd=REPO_ROOT, env=self.env, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._api_up, 90, "the API to answer")

    def _api_up(self) -> bool:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; log: {self.logs / (name + '.log')}")
        try:
            return requests.get(f"{self.base}/health", timeout=2).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def wait_for_job(self, job_id: str, timeout: float = 900) -> dict:
        def finished():
            job = self.http.get(f"{self.base}/jobs/{job_id}", timeout=30).json()
            return job if job["state"] in ("succeeded", "failed", "cancelled") else None

        return wait_for(finished, timeout, f"job {job_id}")


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
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "REDIS_URL": redis_url,
           "S3_ENDPOINT_URL": S3["endpoint_url"], "S3_ACCESS_KEY_ID": S3["access_key_id"],
           "S3_SECRET_ACCESS_KEY": S3["secret_access_key"], "S3_BUCKET": bucket,
           "FACEREC_API_KEYS": config_entry("bench", "admin", API_KEY), "FACEREC_DATA_DIR": str(work / "data")}
    system = System(env, work)
    result: dict = {}
    try:
        system.start()
        files = [(person, (p.name, p.read_bytes(), "image/jpeg")) for person, paths in train.items() for p in paths]
        response = system.http.post(f"{system.base}/datasets/bench", files=files, timeout=120)
        response.raise_for_status()
        job = system.http.post(f"{system.base}/jobs/training", json={"model": "bench", "dataset_prefix":
                                                                     "datasets/bench"}, timeout=30).json()
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
            job = system.http.post(f"{system.base}/jobs/recognition", json={"model": "bench", "input_prefix":
                                                                            "inboxes/bulk"}, timeout=30).json()
            wait_for(lambda: system.http.get(f"{system.base}/jobs/{job['id']}", timeout=30).json()["state"]
                     == "running", 120, "the bulk job to run")
            during = run(system.base, photos[:100], 1)
            bulk_state = system.http.get(f"{system.base}/jobs/{job['id']}", timeout=30).json()
            during["bulk_job_state_after"] = bulk_state["state"]
            during["bulk_photos"] = len(bulk)
            during["chunk_size"] = load_settings().chunk_size
            result["during_bulk"] = during
            print("during bulk", during, flush=True)
            system.wait_for_job(job["id"])
    except Exception:
        for name in system.processes:
            log = work / f"{name}.log"
            print(f"--- {name} ---\n" + (log.read_text(errors="replace")[-3000:] if log.exists() else ""))
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
               **result, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
               "photos": args.photos, "people_trained": PEOPLE}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

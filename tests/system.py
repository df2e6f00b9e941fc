"""A running facerec system for tests: the HTTP API and Celery workers as real processes, on
Redis and SeaweedFS, and a small client for its API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import requests

from api.keys import config_entry
from pipeline.storage import S3Storage
from workers.jobs import TERMINAL

REPO = Path(__file__).resolve().parents[1]
# Test keys, long and random-looking like real ones; the API is configured with their hashes only.
API_KEY = "frk_test-all-scopes-3kq8ZxV1b2mWn5pT7yR0"  # every scope: what call() sends by default
ADMIN_KEY = "frk_test-admin-Jd92LmQx7cVb4nHs1aPe"
SUBMIT_KEY = "frk_test-submit-Wc6tYh3kPq0zRf8mNx2L"
READ_KEY = "frk_test-read-Tg5sQe1vBn9kXu4dMj7A"
API_KEY_ENTRIES = ",".join([
    config_entry("tests", "admin", API_KEY),
    config_entry("test-admin", "admin", ADMIN_KEY),
    config_entry("test-submit", "submit", SUBMIT_KEY),
    config_entry("test-read", "read", READ_KEY),
])
JOB_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextmanager
def running_system(tmp_path_factory, redis_url: str, seaweedfs: dict) -> Iterator[dict]:
    """A running system: API server, a GPU-queue worker and a default-queue worker, on Redis and S3."""
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "REDIS_URL": redis_url,
        "S3_ENDPOINT_URL": seaweedfs["endpoint_url"],
        "S3_ACCESS_KEY_ID": seaweedfs["access_key_id"],
        "S3_SECRET_ACCESS_KEY": seaweedfs["secret_access_key"],
        "S3_BUCKET": bucket,
        "FACEREC_API_KEYS": API_KEY_ENTRIES,
        "FACEREC_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "FACEREC_CHUNK_SIZE": "4",  # several chunk tasks for a dozen photos
    }
    storage = S3Storage(bucket, seaweedfs["endpoint_url"], seaweedfs["access_key_id"],
                        seaweedfs["secret_access_key"])
    storage.ensure_bucket()
    logs = tmp_path_factory.mktemp("logs")
    port = free_port()
    commands = {
        "api": [sys.executable, "-m", "flask", "--app", "api:create_app()", "run", "--port", str(port)],
        # Single photos (the interactive queue) before bulk chunks: workers.app orders queues by -Q.
        "gpu-worker": [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "interactive,gpu",
                       "-c", "1",
                       "-n", f"gpu-{bucket}@%h", "--loglevel", "INFO"],
        "default-worker": [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "default",
                           "-c", "1", "-n", f"default-{bucket}@%h", "--loglevel", "INFO"],
    }
    # The GPU worker as on a GPU node: photos decoded in a pool of processes started from its prefork child.
    envs = {"gpu-worker": {**env, "FACEREC_DECODE_PROCESSES": "2", "FACEREC_PHOTO_BATCH": "8"}}
    processes = {}
    for name, command in commands.items():
        with open(logs / f"{name}.log", "wb") as log:
            processes[name] = subprocess.Popen(command, cwd=REPO, env=envs.get(name, env), stdout=log,
                                               stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"

    def api_up():
        try:
            return requests.get(f"{base}/health", timeout=2).ok
        except requests.ConnectionError:
            return False

    try:
        wait_for(api_up, 60, "the API to answer")
        yield {"base": base, "storage": storage, "logs": logs, "redis_url": redis_url}
    finally:
        for process in processes.values():
            process.terminate()
        for name, process in processes.items():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            print(f"--- {name} log tail ---\n" + (logs / f"{name}.log").read_text()[-3000:])
        for key in storage.list():
            storage.delete(key)


def call(system, method: str, path: str, key: str | None = API_KEY, **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if key is not None:
        headers["X-API-Key"] = key
    return requests.request(method, f"{system['base']}{path}", headers=headers, timeout=30, **kwargs)


def wait_for_job(system, job_id: str) -> dict:
    def finished():
        job = call(system, "GET", f"/jobs/{job_id}").json()
        return job if job["state"] in TERMINAL else None

    return wait_for(finished, JOB_TIMEOUT_S, f"job {job_id}")




def upload_photos(storage: S3Storage, lfw_dir: Path, people: Sequence[str], prefix: str, first: int, last: int,
                  by_person: bool = True) -> dict[str, str]:
    """Copy each person's LFW photos number first..last-1 into storage; returns key -> person."""
    keys = {}
    for person in people:
        for path in sorted((lfw_dir / person).glob("*.jpg"))[first:last]:
            key = f"{prefix}/{person}/{path.name}" if by_person else f"{prefix}/{path.name}"
            storage.put(key, path.read_bytes())
            keys[key] = person
    return keys

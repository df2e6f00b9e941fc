"""A running facerec system for tests: the HTTP API and Celery workers as real processes (infra.processes),
on Redis and SeaweedFS, and a small client for its API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import requests

from api.keys import config_entry
from bench.lfw import upload_photos  # noqa: F401 - tests copy LFW photos into storage with it
from config import REPO_ROOT as REPO  # noqa: F401 - re-exported for tests
from infra.processes import Client, Processes, environment, free_port, wait_for  # noqa: F401 - re-exported
from pipeline.storage import S3Storage

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


def s3_settings(seaweedfs: dict, bucket: str) -> dict[str, str]:
    """The environment that points the processes at a bucket of the test SeaweedFS."""
    return {"S3_ENDPOINT_URL": seaweedfs["endpoint_url"], "S3_ACCESS_KEY_ID": seaweedfs["access_key_id"],
            "S3_SECRET_ACCESS_KEY": seaweedfs["secret_access_key"], "S3_BUCKET": bucket}


@contextmanager
def running_system(tmp_path_factory, redis_url: str, seaweedfs: dict) -> Iterator[dict]:
    """A running system: API server, a GPU-queue worker and a default-queue worker, on Redis and S3."""
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    env = environment(REDIS_URL=redis_url, **s3_settings(seaweedfs, bucket), FACEREC_API_KEYS=API_KEY_ENTRIES,
                      FACEREC_DATA_DIR=str(tmp_path_factory.mktemp("data")),
                      FACEREC_CHUNK_SIZE="4")  # several chunk tasks for a dozen photos
    storage = S3Storage(bucket, seaweedfs["endpoint_url"], seaweedfs["access_key_id"],
                        seaweedfs["secret_access_key"])
    storage.ensure_bucket()
    logs = tmp_path_factory.mktemp("logs")
    processes = Processes(env, logs)
    try:
        # Single photos (the interactive queue) before bulk chunks; the GPU worker as on a GPU node: photos
        # decoded in a pool of processes started from its prefork child.
        processes.start_worker("gpu-worker", "interactive,gpu",
                               env={"FACEREC_DECODE_PROCESSES": "2", "FACEREC_PHOTO_BATCH": "8"})
        processes.start_worker("default-worker", "default")
        base = processes.start_api()
        yield {"base": f"{base}/v1", "storage": storage, "logs": logs, "redis_url": redis_url,
               "processes": processes}
    finally:
        processes.stop(timeout=60)
        print(processes.all_logs())
        for key in storage.list():
            storage.delete(key)


def call(system, method: str, path: str, key: str | None = API_KEY, **kwargs) -> requests.Response:
    return Client(system["base"].removesuffix("/v1"), key).call(method, path, **kwargs)


def wait_for_job(system, job_id: str) -> dict:
    return Client(system["base"].removesuffix("/v1"), API_KEY).wait_for_job(job_id, JOB_TIMEOUT_S)


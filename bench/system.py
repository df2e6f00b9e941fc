"""The whole system as processes (infra.processes), for benchmarks that measure it as a client sees it
(bench.load, bench.interactive): the API (gunicorn with threads, or Flask's server), a GPU worker for the
interactive and gpu queues and a CPU worker for default, on Redis and the local SeaweedFS
(infra/scripts/start-seaweedfs.sh), with an admin key made for the run."""

from __future__ import annotations

import os
from pathlib import Path

import requests

from api.keys import config_entry, new_key
from config import load_settings
from infra.processes import Client, Processes, environment

S3 = {  # the local SeaweedFS, as the tests use it
    "endpoint_url": os.environ.get("S3_ENDPOINT_URL") or "http://127.0.0.1:8333",
    "access_key_id": os.environ.get("S3_ACCESS_KEY_ID") or "facerec-dev",
    "secret_access_key": os.environ.get("S3_SECRET_ACCESS_KEY") or "facerec-dev-secret",
}
API_KEY = new_key()  # this run's admin key; the processes are configured with its hash only
API_KEY_ENTRIES = config_entry("bench", "admin", API_KEY)


def system_env(redis_url: str, bucket: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """The processes' environment: this machine's, less any facerec settings, plus the given ones (which may
    replace these, S3_ENDPOINT_URL for one)."""
    return environment(**{
        "REDIS_URL": redis_url, "S3_ENDPOINT_URL": S3["endpoint_url"], "S3_ACCESS_KEY_ID": S3["access_key_id"],
        "S3_SECRET_ACCESS_KEY": S3["secret_access_key"], "S3_BUCKET": bucket, "FACEREC_API_KEYS": API_KEY_ENTRIES,
        "FACEREC_DATA_DIR": str(data_dir),
        # Converted model weights are one-off set-up: keep using the usual cache.
        "FACEREC_CACHE_DIR": str(load_settings().cache_dir),
        "FACEREC_DATASETS": str(load_settings().datasets_dir),
        **settings})


class BenchSystem(Processes):
    """The API and two Celery workers as processes, their logs in one folder."""

    def __init__(self, env: dict[str, str], logs: Path, server: str = "gunicorn", name: str = "bench") -> None:
        super().__init__(env, logs)
        self.server, self.name = server, name
        self.base = ""  # http://127.0.0.1:PORT/v1 once started
        self.client: Client | None = None

    def start_all(self) -> None:
        self.start_worker(f"{self.name}-gpu-worker", "interactive,gpu")
        self.start_worker(f"{self.name}-default-worker", "default")
        root = self.start_api(server=self.server)
        self.base, self.client = f"{root}/v1", Client(root, API_KEY)

    def call(self, method: str, path: str, timeout: float = 30, **kwargs) -> requests.Response:
        return self.client.call(method, path, timeout=timeout, **kwargs)

    def wait_for_job(self, job_id: str, timeout: float = 900) -> dict:
        return self.client.wait_for_job(job_id, timeout)

"""The whole system as processes, for benchmarks that measure it as a client sees it (bench.load,
bench.interactive): the API (gunicorn with threads, or Flask's server), a GPU worker for the
interactive and gpu queues and a CPU worker for default, each in a session of its own, on Redis and the
local SeaweedFS (infra/scripts/start-seaweedfs.sh), with the tests' API key (tests.system)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from config import REPO_ROOT, load_settings
from tests.system import API_KEY, API_KEY_ENTRIES, free_port, wait_for
from workers.jobs import TERMINAL

S3 = {  # the local SeaweedFS, as the tests use it
    "endpoint_url": os.environ.get("S3_ENDPOINT_URL") or "http://127.0.0.1:8333",
    "access_key_id": os.environ.get("S3_ACCESS_KEY_ID") or "facerec-dev",
    "secret_access_key": os.environ.get("S3_SECRET_ACCESS_KEY") or "facerec-dev-secret",
}


def system_env(redis_url: str, bucket: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """The processes' environment: this machine's, less any facerec settings, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "S3_", "FACEREC_"))}
    env.update({
        "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "REDIS_URL": redis_url,
        "S3_ENDPOINT_URL": S3["endpoint_url"], "S3_ACCESS_KEY_ID": S3["access_key_id"],
        "S3_SECRET_ACCESS_KEY": S3["secret_access_key"], "S3_BUCKET": bucket,
        "FACEREC_API_KEYS": API_KEY_ENTRIES, "FACEREC_DATA_DIR": str(data_dir),
        # Converted model weights are one-off set-up: keep using the usual cache.
        "FACEREC_CACHE_DIR": str(load_settings().cache_dir),
        "FACEREC_DATASETS": str(load_settings().datasets_dir),
        **settings,
    })
    return env


class BenchSystem:
    """The API and two Celery workers as processes, their logs in one folder."""

    def __init__(self, env: dict[str, str], logs: Path, server: str = "gunicorn", name: str = "bench") -> None:
        self.env, self.logs, self.server, self.name = env, logs, server, name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/v1"
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        if self.server == "gunicorn":
            # gthread: a connection waits in the selector while idle, threads serve requests.
            api = ["-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--worker-class", "gthread",
                   "--workers", "2", "--threads", "32", "--backlog", "2048", "--timeout", "60", "api:create_app()"]
        else:  # Flask's server, a thread per connection
            api = ["-m", "flask", "--app", "api:create_app()", "run", "--with-threads", "--port", str(self.port)]
        tag = f"{self.name}-{uuid.uuid4().hex[:6]}"
        commands = {
            "api": api,
            "gpu-worker": ["-m", "celery", "-A", "workers.app", "worker", "-Q", "interactive,gpu", "-c", "1",
                           "--prefetch-multiplier", "1", "-n", f"{tag}-gpu@%h", "--loglevel", "INFO"],
            "default-worker": ["-m", "celery", "-A", "workers.app", "worker", "-Q", "default", "-c", "1",
                               "-n", f"{tag}-default@%h", "--loglevel", "INFO"],
        }
        for name, command in commands.items():
            with open(self.logs / f"{name}.log", "wb") as log:
                self.processes[name] = subprocess.Popen(
                    [sys.executable, *command], cwd=REPO_ROOT, env=self.env, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._api_up, 90, "the API to answer")

    def call(self, method: str, path: str, timeout: float = 30, **kwargs) -> requests.Response:
        return requests.request(method, self.base + path, headers={"X-API-Key": API_KEY}, timeout=timeout,
                                **kwargs)

    def wait_for_job(self, job_id: str, timeout: float = 900) -> dict:
        def finished():
            job = self.call("GET", f"/jobs/{job_id}").json()
            return job if job["state"] in TERMINAL else None

        return wait_for(finished, timeout, f"job {job_id}")

    def stop(self) -> None:
        """SIGTERM each process group, then SIGKILL whatever is left after 30 s."""
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):  # the group too: a pool child may outlive its parent
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self.processes.clear()

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def _api_up(self) -> bool:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; log: {self.logs / (name + '.log')}")
        try:
            return requests.get(f"{self.base}/health", timeout=2).ok
        except requests.RequestException:
            return False

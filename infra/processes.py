"""Start and stop the project's processes: the one way tests, benchmarks and the demo run the API and
Celery workers.

Each process runs in a session (process group) of its own, so that stopping or killing it ends its
pool children too, with its output in a log file of a folder. Waiting for the API notices a process that
exited instead of waiting out the timeout. The environment is this machine's without the developer's own
facerec settings (REDIS_URL, S3_*, FACEREC_*), plus the ones given.

    with Processes(environment(REDIS_URL=..., FACEREC_DATA_DIR=...), logs) as processes:
        api = Client(processes.start_api(), key)
        processes.start_worker("gpu-worker", "interactive,gpu")
        job = api.wait_for_job(api.call("POST", "/jobs/training", json=...).json()["id"])
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests

from config import REPO_ROOT

T = TypeVar("T")
TERMINAL = ("succeeded", "failed", "cancelled")  # workers.jobs.TERMINAL, without importing the workers
OWN_SETTINGS = ("REDIS_URL", "S3_", "FACEREC_")
STOP_WAIT_S = 30


def environment(**settings: str) -> dict[str, str]:
    """This machine's environment less any facerec settings of its own, plus the given settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(OWN_SETTINGS)}
    env.update({"PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"})
    env.update(settings)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.5) -> T:
    """The first truthy value of predicate(), called every `every` seconds; AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def api_command(port: int, server: str = "flask") -> list[str]:
    """The API's command line: Flask's server (a thread per connection) or gunicorn with threads."""
    if server == "gunicorn":
        # gthread: a connection waits in the selector while idle, threads serve requests.
        return [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread",
                "--workers", "2", "--threads", "32", "--backlog", "2048", "--timeout", "60", "api:create_app()"]
    return [sys.executable, "-m", "flask", "--app", "api:create_app()", "run", "--with-threads", "--port", str(port)]


def worker_command(name: str, queues: str, concurrency: int = 1) -> list[str]:
    """A Celery worker's command line: the queues in the order it serves them (interactive before gpu)."""
    return [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", queues, "-c", str(concurrency),
            "--prefetch-multiplier", "1", "-n", f"{name}@%h", "--loglevel", "INFO"]


class Processes:
    """The API and workers of one configuration, started, killed and stopped by name."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.running: dict[str, subprocess.Popen] = {}
        self.log_paths: dict[str, Path] = {}
        self._starts = 0

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a command in a session of its own, its output in <logs>/<name>.log (a name started again
        gets <name>-2.log, ...)."""
        if name in self.running:
            raise ValueError(f"{name} is running already")
        self._starts += 1
        path = self.logs / f"{name}.log"
        if path.exists():
            path = self.logs / f"{name}-{self._starts}.log"
        self.log_paths[name] = path
        with open(path, "wb") as log:
            self.running[name] = subprocess.Popen(command, cwd=REPO_ROOT, env={**self.env, **(env or {})},
                                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.running[name]

    def start_api(self, name: str = "api", server: str = "flask", port: int | None = None,
                  timeout: float = 90) -> str:
        """Start the API and wait until it answers; returns its base URL (http://127.0.0.1:PORT)."""
        port = port or free_port()
        self.start(name, api_command(port, server))
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: self._answers(f"{base}/v1/health"), timeout, f"{name} to answer on {base}")
        return base

    def start_worker(self, name: str, queues: str, concurrency: int = 1,
                     env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a Celery worker serving the queues (comma-separated, in the order served)."""
        return self.start(name, worker_command(f"{name}-{os.getpid()}-{self._starts + 1}", queues, concurrency),
                          env)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send sig to the whole process group (a worker and its pool children), as a crash or the OOM
        killer would with SIGKILL, and wait for it."""
        process = self.running.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(timeout=60)

    def kill_children(self, name: str) -> None:
        """SIGKILL only the process's children (a worker's pool processes, which run the tasks)."""
        children = subprocess.run(["pgrep", "-P", str(self.running[name].pid)], capture_output=True, text=True)
        for pid in children.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        """SIGTERM every process group, then SIGKILL what is left after the timeout (a pool child may
        outlive its parent: the group goes too)."""
        for process in self.running.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.running.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self.running.clear()

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_paths.get(name)
        return path.read_text(errors="replace")[-chars:] if path and path.exists() else ""

    def all_logs(self, chars: int = 3000) -> str:
        """The tail of every log, each under its name: for a failing test's output."""
        return "\n".join(f"--- {path.name} ---\n{path.read_text(errors='replace')[-chars:]}"
                         for path in sorted(self.logs.glob("*.log")))

    def _answers(self, url: str) -> bool:
        for name, process in self.running.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")
        try:
            return requests.get(url, timeout=2).ok
        except requests.RequestException:
            return False


class Client:
    """The API over HTTP with one key: calls, and waiting for jobs."""

    def __init__(self, base: str, key: str | None) -> None:
        self.base = base.rstrip("/")
        self.key = key

    def call(self, method: str, path: str, key: str | None = ..., timeout: float = 30,
             **kwargs: Any) -> requests.Response:
        """A request to /v1<path> with the client's key (key=None sends none, key="..." another)."""
        key = self.key if key is ... else key
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["X-API-Key"] = key
        return requests.request(method, f"{self.base}/v1{path}", headers=headers, timeout=timeout, **kwargs)

    def job(self, job_id: str) -> dict:
        return self.call("GET", f"/jobs/{job_id}").json()

    def wait_until(self, job_id: str, predicate: Callable[[dict], bool], what: str, timeout: float = 600,
                   every: float = 0.5) -> dict:
        """The job once predicate holds; polls through an API restart and through 503s (storage or
        broker briefly unavailable: the API's answer is "try again shortly")."""
        def check() -> dict | None:
            try:
                response = self.call("GET", f"/jobs/{job_id}")
            except requests.ConnectionError:
                return None
            if response.status_code == 503:
                return None
            job = response.json()
            return job if predicate(job) else None

        try:
            return wait_for(check, timeout, what, every)
        except AssertionError as err:
            raise AssertionError(f"{err}; job: {self.job(job_id)}") from None

    def wait_for_job(self, job_id: str, timeout: float = 600) -> dict:
        """The job once it has ended."""
        return self.wait_until(job_id, lambda job: job["state"] in TERMINAL, f"job {job_id} to end", timeout)

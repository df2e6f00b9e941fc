"""The HTTP API alone as a real process, for tests of the API itself: on Redis, with local-disk storage
in a temporary folder and the test keys of tests.system, and no workers (submitted jobs stay queued)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.system import API_KEY_ENTRIES, REPO, free_port, wait_for


@contextmanager
def running_api(folder: Path, redis_url: str, api_keys: str = API_KEY_ENTRIES) -> Iterator[dict]:
    """Yields {"base": "http://127.0.0.1:PORT", "log": path of its log, "data_dir": its FACEREC_DATA_DIR}."""
    data_dir, log_path = folder / "data", folder / "api.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("S3_", "FACEREC_"))}
    env.update({"PYTHONPATH": str(REPO), "REDIS_URL": redis_url, "FACEREC_DATA_DIR": str(data_dir),
                "FACEREC_API_KEYS": api_keys})
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "api:create_app()", "run", "--port", str(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def up():
        if process.poll() is not None:
            raise AssertionError(f"the API exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            return requests.get(f"{base}/v1/health", timeout=2).ok
        except requests.ConnectionError:
            return False

    try:
        wait_for(up, 60, "the API to answer")
        yield {"base": base, "log": log_path, "data_dir": data_dir}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

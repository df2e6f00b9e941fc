"""The Celery tasks' own rules, run eagerly in a fresh process on the embedded default: a missing
object fails a job at once (it is not retried as if storage were down), and no job error shows the
server's folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system  # a fresh interpreter

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
from workers.app import app, runtime
from workers import tasks

app.conf.task_always_eager = True
jobs, storage = runtime.jobs, runtime.storage

def recognition_job(**params):
    job, _ = jobs.create("recognition", {"model": "m", **params})
    return job["id"]

# A plan whose first chunk's predictions are missing when the summary is made.
missing = recognition_job(input_prefix="inbox")
storage.put_json(f"jobs/{missing}/plan.json", {"model": "m", "model_version": "v", "images": 1, "chunks": 1,
                                                "chunk_size": 1})
tasks.finish_recognition.apply(args=[missing])

# A manifest named so long that the file system refuses it, and says where it looked.
long_name, _ = jobs.create("training", {"model": "m", "dataset_manifest": "manifests/" + "x" * 300})
long_name = long_name["id"]
tasks.train.apply(args=[long_name])

print(json.dumps({
    "missing": jobs.get(missing),
    "deliveries": jobs.deliveries(missing),
    "long_name": jobs.get(long_name),
}))
"""


def run_eagerly(tmp_path: Path) -> dict:
    env = {"PYTHONPATH": str(REPO), "FACEREC_DATA_DIR": str(tmp_path / "data"), "PATH": "",
           "FACEREC_TASK_MAX_RETRIES": "3"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_missing_object_fails_the_job_at_once_and_no_error_shows_a_server_path(tmp_path):
    outcome = run_eagerly(tmp_path)

    missing = outcome["missing"]
    assert missing["state"] == "failed"
    assert "no such key" in missing["error"]["message"] and "predictions/00000.jsonl" in missing["error"]["message"]
    assert outcome["deliveries"] == 1, "a missing object is permanent: the task ran once, no retries"

    long_name = outcome["long_name"]
    assert long_name["state"] == "failed", long_name
    assert "manifests/xxx" in long_name["error"]["message"]
    assert str(tmp_path) not in json.dumps(long_name), long_name["error"]

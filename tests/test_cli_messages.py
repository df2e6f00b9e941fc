"""What the `facerec` command says at the hard edges: a bad FACEREC_API_URL, no answer in time, a refused
promotion, a failed job, an unknown face, a reader that stops reading, the units of a training's progress.

Fast: the command runs as a real process against a small HTTP server in the test that answers with
canned JSON in the API's shapes (a real HTTP exchange; no workers needed). The whole flow against the
live API is tests/test_cli.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JOB_ID = "0123456789abcdef0123456789abcdef"
REQUEST_ID = "fedcba9876543210fedcba9876543210"


class CannedApi:
    """An HTTP server answering each (method, path) from a list of (status, JSON body, seconds to wait
    first): the next one on each request, the last one again once the list is used up."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], list[tuple[int, object, float]]] = {}
        self.requests: list[tuple[str, str]] = []
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                path = self.path.split("?", 1)[0]
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                canned.requests.append((self.command, path))
                answers = canned.answers.get((self.command, path)) or [(404, {"error": f"no route {path}"}, 0)]
                status, body, delay = answers.pop(0) if len(answers) > 1 else answers[0]
                time.sleep(delay)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def on(self, method: str, path: str, *answers: tuple) -> None:
        self.answers[(method, path)] = [(a + (0,))[:3] for a in answers]


@pytest.fixture
def api() -> Iterator[CannedApi]:
    canned = CannedApi()
    thread = threading.Thread(target=canned.server.serve_forever, daemon=True)
    thread.start()
    yield canned
    canned.server.shutdown()
    canned.server.server_close()


def facerec(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_API")}
    env.update(PYTHONPATH=str(REPO), FACEREC_API_URL=url, FACEREC_API_KEY="frk_test")
    return subprocess.run([sys.executable, "-m", "facerec_cli", *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=REPO)


def job(state: str = "succeeded", **fields) -> dict:
    record = {"id": JOB_ID, "type": "training", "state": state, "params": {"model": "lfw"},
              "progress": {"done": 10, "total": 10}, "created_at": "2025-01-01T00:00:00Z",
              "started_at": "2025-01-01T00:00:01Z", "finished_at": None, "result": None, "error": None}
    return record | fields


def version_result(promotion: dict) -> dict:
    return {"model": "lfw", "version": "20250101T000000Z-abcdef", "model_type": "embedding", "trained": True,
            "metrics": {"accuracy": 0.5}, "promotion": promotion}


FACE = {"box": [10.0, 20.0, 80.0, 90.0], "identity": "unknown", "score": 0.4213, "confidence": 0.61,
        "best_guess": "Colin_Powell"}
ANSWER = {"id": REQUEST_ID, "width": 250, "height": 250, "main_face": 0, "model": "default",
          "model_version": "v1", "threshold": 0.6, "faces": [FACE]}
PENDING = {"id": REQUEST_ID, "state": "pending", "location": f"/v1/recognize/{REQUEST_ID}"}


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"not looked at: the canned API answers without reading it")
    return path


# FACEREC_API_URL

@pytest.mark.parametrize("url", ["127.0.0.1:8000", "localhost:8000", "ftp://127.0.0.1:8000", "http://", "http://h:port"])
def test_an_api_url_that_is_not_an_http_address_is_named_without_a_traceback(url: str) -> None:
    done = facerec(url, "jobs")

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"facerec: FACEREC_API_URL {url!r} ") and done.stderr.count("\n") == 1


def test_an_api_url_ending_in_v1_is_taken_as_the_api(api: CannedApi) -> None:
    api.on("GET", "/v1/jobs", (200, {"jobs": [], "total": 0, "offset": 0, "limit": 20}))

    for url in (api.url + "/v1", api.url + "/v1/"):
        done = facerec(url, "jobs")
        assert done.returncode == 0, done.stderr
        assert "(none of 0)" in done.stdout
    assert api.requests == [("GET", "/v1/jobs")] * 2


# single photos

def test_recognize_waits_as_long_as_asked_in_all_then_says_how_to_fetch_the_answer(api: CannedApi, photo: Path) -> None:
    # No worker: the API waits wait_s, then answers 202; polling answers 202 until the answer is there.
    api.on("POST", "/v1/recognize", (202, PENDING, 2))
    api.on("GET", f"/v1/recognize/{REQUEST_ID}", (202, PENDING))

    started = time.monotonic()
    done = facerec(api.url, "recognize", str(photo), "--wait", "2")
    took = time.monotonic() - started

    assert done.returncode == 1
    assert took < 6, f"asked to wait 2 s, took {took:.1f} s"
    assert "no answer within 2 s" in done.stderr
    assert f"facerec recognition {REQUEST_ID}" in done.stderr

    api.on("GET", f"/v1/recognize/{REQUEST_ID}", (200, ANSWER))
    done = facerec(api.url, "recognition", REQUEST_ID)
    assert done.returncode == 0, done.stderr
    assert "1 face(s), model default v1" in done.stdout


def test_recognize_shows_the_best_guess_of_an_unknown_face(api: CannedApi, photo: Path) -> None:
    api.on("POST", "/v1/recognize", (200, ANSWER))

    done = facerec(api.url, "recognize", str(photo))

    assert done.returncode == 0, done.stderr
    assert "unknown (best guess: Colin_Powell, score 0.42)" in done.stdout


def test_recognize_without_a_model_says_which_model_it_used_and_what_to_do_when_there_is_none(
        api: CannedApi, photo: Path) -> None:
    help_text = facerec(api.url, "recognize", "--help").stdout
    assert "the model named 'default'" in " ".join(help_text.split())

    api.on("POST", "/v1/recognize", (404, {"error": "model default has no current version: train it first"}))
    done = facerec(api.url, "recognize", str(photo))

    assert done.returncode == 1
    assert "model default has no current version" in done.stderr
    assert "--model" in done.stderr and "facerec models" in done.stderr


# jobs

def test_a_training_whose_version_was_not_made_current_says_so_and_why(api: CannedApi) -> None:
    refused = {"promote": False, "reason": "accuracy 0.5000 is worse than the current version's 0.9000"}
    api.on("GET", f"/v1/jobs/{JOB_ID}", (200, job(result=version_result(refused))))

    done = facerec(api.url, "job", JOB_ID, "--watch")

    assert done.returncode == 0, done.stderr
    assert "not made current: accuracy 0.5000 is worse than the current version's 0.9000" in done.stdout
    assert "facerec promote lfw 20250101T000000Z-abcdef" in done.stdout

    made = {"promote": True, "reason": "no current version"}
    api.on("GET", f"/v1/jobs/{JOB_ID}", (200, job(result=version_result(made))))
    done = facerec(api.url, "job", JOB_ID)
    assert "made current: no current version" in done.stdout and "not made current" not in done.stdout


def test_a_failed_job_shows_its_error_message_not_a_dict(api: CannedApi) -> None:
    error = {"message": "no labelled photos under 'datasets/none/'", "type": "ValueError"}
    api.on("GET", f"/v1/jobs/{JOB_ID}", (200, job("failed", error=error)))

    shown = facerec(api.url, "job", JOB_ID)
    watched = facerec(api.url, "job", JOB_ID, "--watch")

    assert shown.returncode == 0 and watched.returncode == 1
    for text in (shown.stdout, watched.stdout, watched.stderr):
        assert "{" not in text, text
    assert "error: no labelled photos under 'datasets/none/'" in shown.stdout
    assert f"facerec: job {JOB_ID} failed" in watched.stderr


def test_the_progress_bar_counts_each_stage_in_its_own_unit(api: CannedApi) -> None:
    api.on("GET", f"/v1/jobs/{JOB_ID}",
           (200, job("running", progress={"done": 5, "total": 10, "stage": "extracting faces"})),
           (200, job("running", progress={"done": 3, "total": 20, "stage": "fitting"})),
           (200, job(result=version_result({"promote": True, "reason": "no current version"}))))

    done = facerec(api.url, "job", JOB_ID, "--watch")

    assert done.returncode == 0, done.stderr
    shown = done.stderr.replace("\r", "\n").splitlines()
    fitting = [line for line in shown if "fitting" in line]
    extracting = [line for line in shown if "extracting faces" in line]
    assert fitting and all("epoch" in line and "photo" not in line for line in fitting), fitting
    assert extracting and all("photo" in line for line in extracting), extracting


# output

def test_a_reader_that_stops_reading_ends_the_command_quietly(api: CannedApi) -> None:
    jobs = [job(id=f"{i:032x}") for i in range(2000)]
    api.on("GET", "/v1/jobs", (200, {"jobs": jobs, "total": len(jobs), "offset": 0, "limit": len(jobs)}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_API")}
    env.update(PYTHONPATH=str(REPO), FACEREC_API_URL=api.url)

    command = subprocess.Popen([sys.executable, "-m", "facerec_cli", "--json", "jobs"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env, cwd=REPO)
    command.stdout.readline()  # as `| head -n 1` does: one line, then the pipe is closed
    command.stdout.close()
    stderr = command.stderr.read().decode()
    command.wait(timeout=60)

    assert stderr == "", stderr
    assert command.returncode == 141  # as any command whose output pipe was closed (128 + SIGPIPE)


# no worker serving a queue

NO_GPU_WORKER = {"status": "ok", "broker": "redis", "storage": "s3",
                 "workers": {"gpu": 0, "default": 1, "interactive": 0},
                 "queues": {"gpu": 3, "default": 0, "interactive": 1},
                 "warnings": ["no worker is serving queue gpu (3 waiting): training, enrolment and bulk-recognition "
                              "chunks wait until one starts",
                              "no worker is serving queue interactive (1 waiting): single photos from the web page and "
                              "`facerec recognize` wait until one starts"]}


def test_status_says_which_queues_no_worker_serves(api: CannedApi) -> None:
    api.on("GET", "/v1/health", (200, NO_GPU_WORKER))
    done = facerec(api.url, "status")
    assert done.returncode == 0, done.stderr
    assert "queue gpu          0 worker(s), 3 task(s) waiting" in done.stdout
    assert "warning: no worker is serving queue gpu (3 waiting)" in done.stdout


def test_a_job_submitted_while_no_worker_serves_its_queue_says_so(api: CannedApi) -> None:
    api.on("GET", "/v1/health", (200, NO_GPU_WORKER))
    api.on("POST", "/v1/jobs/training", (202, {"id": JOB_ID, "type": "training", "state": "queued"}))
    done = facerec(api.url, "train", "lfw", "--dataset", "lfw")
    assert done.returncode == 0, done.stderr
    assert "facerec: warning: no worker is serving queue gpu" in done.stderr


def test_a_photo_not_answered_in_time_says_no_worker_serves_single_photos(api: CannedApi, photo: Path) -> None:
    api.on("GET", "/v1/health", (200, NO_GPU_WORKER))
    api.on("POST", "/v1/recognize", (202, PENDING))
    api.on("GET", f"/v1/recognize/{REQUEST_ID}", (202, PENDING))
    done = facerec(api.url, "recognize", str(photo), "--wait", "1")
    assert done.returncode == 1
    assert "no worker is serving queue interactive" in done.stderr and "facerec recognition" in done.stderr


def test_an_upload_says_which_files_it_skipped_and_why(api: CannedApi, tmp_path: Path, photo: Path) -> None:
    api.on("POST", "/v1/inboxes/press", (201, {"name": "press", "prefix": "inboxes/press", "photos": 1, "bytes": 10,
                                               "skipped": ["readme.txt"], "appended": False,
                                               "skipped_because": "not photos by their names"}))
    done = facerec(api.url, "upload-inbox", "press", str(photo))
    assert done.returncode == 0, done.stderr
    assert "skipped 1 file(s), not photos by their names: readme.txt" in done.stdout

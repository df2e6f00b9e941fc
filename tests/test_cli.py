"""The `facerec` command against the live API: upload a dataset, train, upload an inbox, recognise it,
watch it to completion, download the results, recognise one photo; and its messages when things go wrong.

The command runs as a real process, as a person would run it (the console script of the installed package
when there is one, else `python -m facerec_cli`), configured only through FACEREC_API_URL and FACEREC_API_KEY.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system import API_KEY, READ_KEY, REPO

PEOPLE = ["Colin_Powell", "Donald_Rumsfeld", "Gerhard_Schroeder"]
STRANGER = "Jennifer_Aniston"
COMMANDS = ["upload-dataset", "upload-inbox", "train", "enroll", "recognize-job", "recognize", "recognition", "job",
            "jobs", "cancel", "results", "models", "promote", "rollback", "erase"]


def facerec(system, *args: str, key: str | None = API_KEY, url: str | None = None) -> subprocess.CompletedProcess:
    installed = Path(sys.executable).with_name("facerec")
    command = [str(installed)] if installed.exists() else [sys.executable, "-m", "facerec_cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_API")}
    env.update(PYTHONPATH=str(REPO), FACEREC_API_URL=url or system["base"].removesuffix("/v1"))
    if key is not None:
        env["FACEREC_API_KEY"] = key
    return subprocess.run(command + list(args), capture_output=True, text=True, env=env, timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, lfw_dir):
    """A dataset folder (one sub-folder per person, 8 photos each) and an inbox folder of other photos."""
    root = tmp_path_factory.mktemp("cli")
    for person in PEOPLE:
        (root / "dataset" / person).mkdir(parents=True)
        for path in sorted((lfw_dir / person).glob("*.jpg"))[:8]:
            shutil.copy(path, root / "dataset" / person / path.name)
    (root / "inbox").mkdir()
    for person in PEOPLE + [STRANGER]:
        for path in sorted((lfw_dir / person).glob("*.jpg"))[10:12]:
            shutil.copy(path, root / "inbox" / path.name)
    return root


def test_help_names_every_command(system):
    done = facerec(system, "--help")
    assert done.returncode == 0
    for command in COMMANDS:
        assert f"    {command}" in done.stdout, command


def test_the_whole_flow_from_the_command_line(system, folders, lfw_dir, tmp_path):
    done = facerec(system, "upload-dataset", "trio", str(folders / "dataset"))
    assert done.returncode == 0, done.stderr
    assert "uploaded 24 photos of 3 people to datasets/trio" in done.stdout

    done = facerec(system, "--json", "train", "trio", "--dataset", "trio", "--watch")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "succeeded" and job["result"]["model"] == "trio"
    assert f"training {job['id'][:8]}" in done.stderr and "succeeded" in done.stderr  # the live bar, on stderr

    done = facerec(system, "upload-inbox", "desk", str(folders / "inbox"))
    assert done.returncode == 0 and "uploaded 8 photos to inboxes/desk" in done.stdout, done.stderr

    done = facerec(system, "--json", "recognize-job", "trio", "--inbox", "desk")
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout)["id"]
    done = facerec(system, "job", job_id, "--watch")
    assert done.returncode == 0, done.stderr
    assert f"job {job_id}: recognition, succeeded, 8/8" in done.stdout and "8 photos" in done.stdout

    out = tmp_path / "results.jsonl"
    done = facerec(system, "results", job_id, "-o", str(out), key=READ_KEY)
    assert done.returncode == 0 and f"wrote 8 results to {out}" in done.stdout, done.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    named = {r["key"].rsplit("/", 1)[1].rsplit("_", 1)[0]: r["faces"][r["main_face"]]["identity"] for r in results}
    assert named == {**{person: person for person in PEOPLE}, STRANGER: "unknown"}

    photo = sorted((lfw_dir / "Gerhard_Schroeder").glob("*.jpg"))[20]
    done = facerec(system, "recognize", str(photo), "--model", "trio")
    assert done.returncode == 0, done.stderr
    assert "Gerhard_Schroeder" in done.stdout and "(main face)" in done.stdout
    answer = json.loads(facerec(system, "recognize", str(photo), "--model", "trio", "--json").stdout)
    assert answer["faces"][answer["main_face"]]["identity"] == "Gerhard_Schroeder"
    # Not waiting at all: the command names the request, and `facerec recognition` fetches its answer.
    done = facerec(system, "--json", "recognize", str(photo), "--model", "trio", "--wait", "0")
    assert done.returncode == 1 and "fetch it later with: facerec recognition" in done.stderr, done.stderr
    done = facerec(system, "recognition", json.loads(done.stdout)["id"], "--wait", "120")
    assert done.returncode == 0 and "Gerhard_Schroeder" in done.stdout, done.stderr

    listing = facerec(system, "jobs", "--type", "recognition", "--limit", "5")
    assert listing.returncode == 0 and job_id in listing.stdout
    models = facerec(system, "models", "trio")
    assert models.returncode == 0 and f"* {job['result']['version']}" in models.stdout


def test_failures_say_what_is_wrong_and_exit_non_zero(system, folders, lfw_dir):
    down = facerec(system, "jobs", url="http://127.0.0.1:9")
    assert down.returncode == 3 and "cannot reach the facerec API at http://127.0.0.1:9" in down.stderr

    wrong = facerec(system, "jobs", key="frk_not-a-key")
    assert wrong.returncode == 1 and "the API refused the key: invalid API key" in wrong.stderr
    missing = facerec(system, "jobs", key=None)
    assert missing.returncode == 1 and "set FACEREC_API_KEY" in missing.stderr

    scope = facerec(system, "upload-inbox", "nope", str(folders / "inbox"), key=READ_KEY)
    assert scope.returncode == 1 and "needs scope submit" in scope.stderr
    unknown = facerec(system, "job", "0" * 32)
    assert unknown.returncode == 1 and "404" in unknown.stderr
    assert facerec(system, "upload-dataset", "twice", str(folders / "dataset")).returncode == 0
    again = facerec(system, "upload-dataset", "twice", str(folders / "dataset"))
    assert again.returncode == 1 and "datasets/twice already exists" in again.stderr
    usage = facerec(system, "train")
    assert usage.returncode == 2
    no_model = facerec(system, "recognize", str(sorted((lfw_dir / PEOPLE[0]).glob("*.jpg"))[0]))
    assert no_model.returncode == 1 and "model named 'default'" in no_model.stderr and "--model" in no_model.stderr
    scheme = facerec(system, "jobs", url="127.0.0.1:8000")
    assert scheme.returncode == 2 and "FACEREC_API_URL '127.0.0.1:8000' is not an http://" in scheme.stderr

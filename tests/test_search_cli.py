"""`facerec search` and `facerec search-job` against the live system, run as a person runs them (a real
process, configured by FACEREC_API_URL and FACEREC_API_KEY), mistakes included: nothing to search with, two
things at once, a photo that is not there, a job's face without its number, an index that does not exist."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.system import API_KEY, REPO
from tests.test_search import INBOX, TRAIN, archive  # noqa: F401 - the indexed archive, as a fixture

PERSON = "Serena_Williams"


def facerec(system, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_API")}
    env.update(PYTHONPATH=str(REPO), FACEREC_API_URL=system["base"].removesuffix("/v1"), FACEREC_API_KEY=API_KEY)
    return subprocess.run([sys.executable, "-m", "facerec_cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)


def test_search_a_photo_a_jobs_face_and_a_person_from_the_command_line(system, archive, lfw_dir):  # noqa: F811
    photo = sorted((lfw_dir / PERSON).glob("*.jpg"))[TRAIN + INBOX]
    done = facerec(system, "search", str(photo), "--index", "archive", "-k", "5")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"5 faces in index archive most like the main face of {photo.name}")
    assert all(PERSON in line and " match " in line for line in lines[1:1 + INBOX]), done.stdout

    found = json.loads(facerec(system, "--json", "search", str(photo), "--index", "archive", "-k", "3").stdout)
    first = found["faces"][0]
    done = facerec(system, "search", "--index", "archive", "--job", first["job"], "--key", first["key"],
                   "--face", str(first["face"]), "-k", "2")
    assert done.returncode == 0 and "1.000 match" in done.stdout.splitlines()[1], done.stdout

    done = facerec(system, "search", "--index", "archive", "--model", "album", "--person", PERSON,
                   "--key-prefix", "inboxes/")
    assert done.returncode == 0 and f"{PERSON} of model album" in done.stdout

    done = facerec(system, "search-job", "album", "--index", "archive", "--watch")
    assert done.returncode == 0, done.stderr
    assert "4 of 4 people found in index archive" in done.stdout


def test_search_mistakes_get_a_clear_message_and_exit_status(system, archive, lfw_dir, tmp_path):  # noqa: F811
    nothing = facerec(system, "search", "--index", "archive")
    assert nothing.returncode == 2 and "search with exactly one of: a photo" in nothing.stderr
    photo = sorted((lfw_dir / PERSON).glob("*.jpg"))[0]
    both = facerec(system, "search", str(photo), "--index", "archive", "--model", "album", "--person", PERSON)
    assert both.returncode == 2 and "(got a photo and --model/--person)" in both.stderr
    missing = facerec(system, "search", str(tmp_path / "nope.jpg"), "--index", "archive")
    assert missing.returncode == 2 and "nope.jpg is not a file" in missing.stderr
    no_face = facerec(system, "search", "--index", "archive", "--job", "0" * 32, "--key", "a.jpg")
    assert no_face.returncode == 2 and "--job needs --key" in no_face.stderr
    no_index = facerec(system, "search", str(photo), "--index", "nowhere")
    assert no_index.returncode == 1 and "no face index named 'nowhere'" in no_index.stderr
    no_index_flag = facerec(system, "search", str(photo))
    assert no_index_flag.returncode == 2 and "--index" in no_index_flag.stderr
    two_rules = facerec(system, "search", str(photo), "--index", "archive", "--far", "0.01", "--threshold", "0.9")
    assert two_rules.returncode == 2 and "not allowed with argument" in two_rules.stderr

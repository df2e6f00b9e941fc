"""`make web` (python -m workers.demo --web) on a port that is taken says so and how to choose another,
before it prints an admin key that would never work."""

from __future__ import annotations

import socket
import subprocess
import sys

from config import REPO_ROOT
from infra.processes import environment


def test_a_taken_port_is_named_with_the_way_out_and_no_key_is_printed(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "workers.demo", "--web", "--no-worker", "--port", str(port)],
                              cwd=REPO_ROOT, env=environment(FACEREC_DATA_DIR=str(tmp_path)), capture_output=True,
                              text=True, timeout=120)
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is taken" in done.stderr and f"make web PORT={port + 1}" in done.stderr
    assert "frk_" not in done.stdout + done.stderr

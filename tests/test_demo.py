"""`make web` (python -m workers.demo --web) on a port that is taken says so and how to choose another,
before it prints an admin key that would never work."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from config import REPO_ROOT
from infra.processes import environment, wait_for


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


@pytest.mark.system  # it starts a worker
def test_a_web_demo_stopped_with_sigterm_stops_its_worker_too(tmp_path):
    """Its worker runs in a session of its own (so that Ctrl-C reaches the demo first): a kill must not
    leave it running."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = subprocess.Popen([sys.executable, "-m", "workers.demo", "--web", "--port", str(port)], cwd=REPO_ROOT,
                            env=environment(FACEREC_DATA_DIR=str(tmp_path)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        worker = wait_for(lambda: _worker_of(demo.pid), 60, "the demo's worker to start")
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=90) == 143
        wait_for(lambda: not Path(f"/proc/{worker}").exists() or "zombie" in _state(worker), 60,
                 "the worker to stop")
    finally:
        demo.kill()


def _worker_of(pid: int) -> int | None:
    found = subprocess.run(["pgrep", "-f", f"demo-worker-{pid}-"], capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"

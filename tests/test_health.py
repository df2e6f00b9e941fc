"""GET /v1/health says what a person needs to know before they wait on a job: how many workers serve each
queue, how many tasks wait in each, and a warning naming each queue no worker serves."""

from __future__ import annotations

import os
import time

from api import create_app
from tests.settings import embedded


def health_of(tmp_path):
    settings = embedded(tmp_path, heartbeat_s=1)
    app = create_app(settings, api_keys=[])
    return app, lambda: app.test_client().get("/v1/health").json


def test_with_no_worker_every_queue_is_named_in_a_warning(tmp_path):
    _, health = health_of(tmp_path)
    answer = health()
    assert answer["status"] == "ok" and answer["workers"] == {"gpu": 0, "default": 0, "interactive": 0}
    assert answer["queues"] == {"gpu": 0, "default": 0, "interactive": 0}
    assert sorted(w.split(":")[0] for w in answer["warnings"]) == [
        f"no worker is serving queue {queue}" for queue in ("default", "gpu", "interactive")]


def test_a_worker_that_announces_its_queues_silences_their_warnings_until_it_goes_quiet(tmp_path):
    app, health = health_of(tmp_path)
    presence = app.extensions["facerec"].presence
    presence.announce("gpu-1@node", ["interactive", "gpu"])
    answer = health()
    assert answer["workers"] == {"gpu": 1, "default": 0, "interactive": 1}
    assert [w.split(":")[0] for w in answer["warnings"]] == ["no worker is serving queue default"]

    quiet = time.time() - 10  # three of its 1 s intervals ago and more: gone (killed, machine lost)
    os.utime(tmp_path / "workers" / "gpu-1@node.json", (quiet, quiet))
    assert health()["workers"]["gpu"] == 0
    presence.announce("gpu-1@node", ["gpu"])
    presence.withdraw("gpu-1@node")  # a warm shutdown
    assert health()["workers"]["gpu"] == 0


def test_tasks_waiting_for_a_queue_nobody_serves_are_counted(tmp_path):
    app, health = health_of(tmp_path)
    app.extensions["facerec"].send("facerec.train", ["0" * 32])
    answer = health()
    assert answer["queues"]["gpu"] == 1
    assert any(w.startswith("no worker is serving queue gpu (1 waiting)") for w in answer["warnings"])

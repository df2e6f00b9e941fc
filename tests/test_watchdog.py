"""The watchdog restarts a job nobody works on, and not one a worker holds but has not started yet (its pool
process still loading the models): that was restarted, and failed when no restarts were allowed."""

from __future__ import annotations

import time

from pipeline.storage import LocalStorage
from workers.jobs import FAILED, open_job_store
from workers.watchdog import Watchdog


def stalled_job(tmp_path):
    jobs = open_job_store(LocalStorage(tmp_path / "storage"), lock_dir=tmp_path / "locks")
    job, _ = jobs.create("training", {"model": "m"})
    jobs.update(job["id"], created_at="2000-01-01T00:00:00Z")  # long ago, and no task ever beat for it
    return jobs, job["id"]


def sweep_twice(watchdog: Watchdog) -> list[str]:
    """A stalled job is restarted when seen stalled twice, two beats apart."""
    watchdog.sweep()
    time.sleep(2 * watchdog.heartbeat_s + 0.1)
    return watchdog.sweep()


def test_a_job_nobody_works_on_is_restarted(tmp_path):
    jobs, job_id = stalled_job(tmp_path)
    restarted = []
    watchdog = Watchdog(jobs, lambda: 0, restarted.append, stall_s=6, heartbeat_s=0.2, max_resumes=3)
    assert sweep_twice(watchdog) == [job_id] and [job["id"] for job in restarted] == [job_id]


def test_a_job_whose_task_a_worker_holds_is_not_restarted_nor_failed(tmp_path):
    jobs, job_id = stalled_job(tmp_path)
    restarted = []
    watchdog = Watchdog(jobs, lambda: 0, restarted.append, stall_s=6, heartbeat_s=0.2, max_resumes=0,
                        held=lambda: {job_id})
    assert sweep_twice(watchdog) == [] and restarted == []
    assert jobs.get(job_id)["state"] != FAILED

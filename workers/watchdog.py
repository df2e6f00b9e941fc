"""The watchdog: restarts jobs whose worker vanished.

A task working on a job beats every few seconds (workers.tasks). A job that is queued or running,
whose last beat is older than FACEREC_JOB_STALL_S, while no message waits in any of the queues, has
lost its worker (killed, out of memory, machine gone) or its messages (broker restarted): the
watchdog sends its first task again. That task carries on from what storage holds: a recognition job
plans only the chunks without predictions. After FACEREC_MAX_RESUMES restarts the job fails with an
error that says so, and a user can resume it through the API.

Every worker runs one on a thread of its main process; restarting is a locked step of the job
record, so two watchdogs never restart one job twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from workers.jobs import FAILED, JobStore, timestamp

log = logging.getLogger(__name__)


class Watchdog:
    """Finds stalled jobs and restarts them; `sweep` once, or `start` a thread that sweeps."""

    def __init__(self, jobs: JobStore, waiting_messages: Callable[[], int], restart: Callable[[dict], None],
                 stall_s: float, heartbeat_s: float, max_resumes: int,
                 held: Callable[[], set[str]] = lambda: set()) -> None:
        self.jobs = jobs
        self.waiting_messages = waiting_messages
        self.held = held
        self.restart = restart
        self.stall_s = stall_s
        self.heartbeat_s = heartbeat_s
        self.max_resumes = max_resumes
        self._suspects: dict[str, float] = {}

    def sweep(self) -> list[str]:
        """Restart the jobs that have stalled; returns their ids. A job is restarted only when it was
        seen stalled twice, a few beats apart, so a worker that is merely slow to beat keeps it."""
        for job_id in self.held():
            # Taken from the queue by this worker but not started (its pool process is still loading the
            # models, or busy): held, so not lost, though nothing beats for it yet.
            self.jobs.beat(job_id)
        now = time.time()
        if self.waiting_messages() > 0:  # work is queued: some worker will come to it
            self._suspects.clear()
            return []
        stalled = {job["id"]: job for job in self.jobs.unfinished() if self._stalled(job, now)}
        restarted = []
        for job_id, job in stalled.items():
            first_seen = self._suspects.setdefault(job_id, now)
            if now - first_seen >= 2 * self.heartbeat_s:
                self._suspects.pop(job_id)
                if self._restart(job):
                    restarted.append(job_id)
        for job_id in set(self._suspects) - set(stalled):
            self._suspects.pop(job_id)
        return restarted

    def start(self, every: float | None = None) -> threading.Thread:
        """Sweep on a daemon thread for as long as the process lives."""
        every = every or max(1.0, min(self.heartbeat_s, self.stall_s / 4))

        def loop() -> None:
            while True:
                time.sleep(every)
                try:
                    self.sweep()
                except Exception:  # a broker or storage hiccup: the next sweep tries again
                    log.warning("watchdog sweep failed", exc_info=True)

        thread = threading.Thread(target=loop, name="facerec-watchdog", daemon=True)
        thread.start()
        return thread

    def _stalled(self, job: dict, now: float) -> bool:
        seen = [self.jobs.last_beat(job["id"]) or 0.0, timestamp(job["created_at"])]
        seen += [timestamp(r["at"]) for r in job.get("recoveries", [])]
        return now - max(seen) > self.stall_s

    def _restart(self, job: dict) -> bool:
        seconds = round(time.time() - max(self.jobs.last_beat(job["id"]) or 0.0, timestamp(job["created_at"])))
        reason = f"no worker had worked on the job for {seconds} s (worker lost: killed, crashed or out of memory?)"
        job, again = self.jobs.resume(job["id"], reason, limit=self.max_resumes,
                                      still_stalled=lambda fresh: self._stalled(fresh, time.time()))
        if job["state"] == FAILED:
            log.warning("job %s failed: %s", job["id"], job["error"]["message"])
        if not again:
            return False
        log.warning("restarting job %s: %s", job["id"], reason)
        self.jobs.beat(job["id"])
        self.restart(job)
        return True

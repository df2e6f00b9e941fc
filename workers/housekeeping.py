"""Housekeeping: what the system keeps for a while and nobody reads after that is deleted, by a pass every
FACEREC_HOUSEKEEPING_S on a thread of each worker's main process.

- A single-photo request (``interactive/<id>/``: the photo, request.json, result.json) goes
  FACEREC_INTERACTIVE_TTL_S after it was last written; ``GET /v1/recognize/<id>`` then answers 404.
- A finished job's working files (``jobs/<id>/`` chunks, predictions, stats, deliveries) go
  FACEREC_JOB_FILES_TTL_S after it finished (0, the default: kept for ever). Its record, plan and outputs stay.
  The record says when they went (``working_files_expired_at``), and from then on the job cannot be resumed:
  a resume would look for the chunks and predictions it kept (JobStore.resume refuses it).
- On the embedded default, the broker's rows that a worker of an earlier version took and left behind.

One worker does a pass at a time, and passes come every FACEREC_HOUSEKEEPING_S however many workers there are:
a pass needs the turn, a Redis key that lasts the interval, or on the embedded default a file lock and the time
of the last pass written in it. Listings are streamed (Storage.scan), so memory holds one request's keys at a
time. A pass lists every key under ``jobs/`` (outputs under the default ``jobs/<id>/output/`` too) but reads
the record only of a job that still has working files.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from itertools import chain, groupby
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pipeline.storage import Storage
from workers import embedded_broker
from workers.interactive import PREFIX as INTERACTIVE
from workers.jobs import JOB_ID, JobNotFound, JobStore

if TYPE_CHECKING:
    from redis import Redis

    from workers.runtime import Runtime

log = logging.getLogger(__name__)

WORKING_FOLDERS = ("chunks", "predictions", "stats", "deliveries")  # under jobs/<id>/
REDIS_KEY = "facerec:housekeeping"

# Keeps the turn during a long pass; cheap enough to call for every key.
Keep = Callable[[], None]


class Turn(Protocol):
    def take(self) -> contextlib.AbstractContextManager[Keep | None]:
        """Hold the turn for one pass: yields a function that keeps it while the pass runs, or None when
        another worker's pass runs or one began less than the interval ago."""


class Housekeeper:
    """Deletes expired single-photo requests and finished jobs' working files; `run_pass` once, or `start` a
    thread that does it every every_s seconds."""

    def __init__(self, storage: Storage, jobs: JobStore, turn: Turn, every_s: float, interactive_ttl_s: float,
                 job_files_ttl_s: float, delete_taken_messages: Callable[[], int] | None = None) -> None:
        self.storage = storage
        self.jobs = jobs
        self.turn = turn
        self.every_s = every_s
        self.interactive_ttl_s = interactive_ttl_s
        self.job_files_ttl_s = job_files_ttl_s
        self.delete_taken_messages = delete_taken_messages

    def run_pass(self, now: float | None = None) -> dict[str, int] | None:
        """Delete what has expired by now (default: the present), if this worker has the turn; returns how
        many requests, jobs' working files and broker messages it deleted, or None without the turn."""
        now = time.time() if now is None else now
        with self.turn.take() as keep:
            if keep is None:
                return None
            done = {"requests": self.expire_requests(now, keep), "jobs": self.expire_job_files(now, keep)}
            if self.delete_taken_messages is not None:
                done["broker_messages"] = self.delete_taken_messages()
            return done

    def expire_requests(self, now: float, keep: Keep) -> int:
        """Delete the single-photo requests last written more than interactive_ttl_s before now."""
        if not self.interactive_ttl_s:
            return 0
        expired = 0
        for request_id, listed in groupby(self.storage.scan(INTERACTIVE + "/"), key=lambda item: item[0].split("/")[1]):
            objects = list(listed)  # a photo, request.json, result.json
            if max(written for _, written in objects) < now - self.interactive_ttl_s:
                for key, _ in objects:
                    self.storage.delete(key)
                self.storage.delete_empty_folders(f"{INTERACTIVE}/{request_id}/")
                expired += 1
            keep()
        return expired

    def expire_job_files(self, now: float, keep: Keep) -> int:
        """Delete the working files of the jobs that finished more than job_files_ttl_s before now."""
        if not self.job_files_ttl_s:
            return 0
        expired = 0
        keys = (key for key, _ in self.storage.scan("jobs/"))
        for job_id, of_job in groupby(keys, key=lambda key: key.split("/")[1]):
            working = (key for key in of_job if key.count("/") >= 3 and key.split("/")[2] in WORKING_FOLDERS)
            first = next(working, None)
            if first is None or not self._may_expire(job_id, now - self.job_files_ttl_s):
                continue
            for key in chain([first], working):
                self.storage.delete(key)
                keep()
            for folder in WORKING_FOLDERS:
                self.storage.delete_empty_folders(f"jobs/{job_id}/{folder}/")
            expired += 1
        return expired

    def _may_expire(self, job_id: str, finished_before: float) -> bool:
        if not JOB_ID.fullmatch(job_id):  # not a job's folder: its name would not even make a lock's
            return False
        try:
            return self.jobs.expire_working_files(job_id, finished_before)
        except JobNotFound:  # files without a record (a submit that failed half-way): not ours to judge
            return False

    def start(self) -> threading.Thread:
        """Run a pass every every_s seconds on a daemon thread for as long as the process lives."""

        def loop() -> None:
            while True:
                time.sleep(self.every_s)
                try:
                    done = self.run_pass()
                except Exception:  # storage or Redis away for a moment: the next pass tries again
                    log.warning("housekeeping pass failed", exc_info=True)
                    continue
                if done and any(done.values()):
                    log.info("housekeeping deleted %s", done)

        thread = threading.Thread(target=loop, name="facerec-housekeeping", daemon=True)
        thread.start()
        return thread


class RedisTurn:
    """The turn as a Redis key that lasts every_s seconds, kept while the pass runs and then left to expire."""

    def __init__(self, redis: Redis, every_s: float) -> None:
        self.redis = redis
        self.every_s = every_s

    @contextlib.contextmanager
    def take(self) -> Iterator[Keep | None]:
        owner, ms = uuid.uuid4().hex, int(self.every_s * 1000)
        if not self.redis.set(REDIS_KEY, owner, nx=True, px=ms):
            yield None
            return
        kept = time.monotonic()

        def keep() -> None:
            nonlocal kept
            # A few times per interval, not for every key: a pass may delete a million of them.
            if time.monotonic() - kept > self.every_s / 4 and self.redis.get(REDIS_KEY) == owner.encode():
                self.redis.pexpire(REDIS_KEY, ms)
                kept = time.monotonic()

        yield keep


class FileTurn:
    """The turn as a lock on a file that holds the time the last pass began: for the workers of one host."""

    def __init__(self, path: Path, every_s: float) -> None:
        self.path = path
        self.every_s = every_s

    @contextlib.contextmanager
    def take(self) -> Iterator[Keep | None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            handle.seek(0)
            if time.time() - float(handle.read() or 0) < self.every_s:
                yield None
                return
            handle.truncate(0)
            handle.write(str(time.time()))
            handle.flush()
            yield lambda: None  # a flock lasts as long as the file is open: nothing to renew


def housekeeper(runtime: Runtime) -> Housekeeper:
    """A worker's housekeeper, from its runtime's storage, job store and settings."""
    settings = runtime.settings
    every_s = settings.housekeeping_s
    turn = (RedisTurn(runtime.redis, every_s) if runtime.redis is not None
            else FileTurn(settings.data_dir / "locks" / "housekeeping.lock", every_s))
    delete_taken = (lambda: embedded_broker.delete_taken(settings.broker_url)) if settings.embedded else None
    return Housekeeper(runtime.storage, runtime.jobs, turn, every_s, settings.interactive_ttl_s,
                       settings.job_files_ttl_s, delete_taken)

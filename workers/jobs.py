"""Job records: what was asked, its state and progress, where its results are; and the liveness of
the tasks working on them.

Storage holds the source of truth (``jobs/<id>/job.json``). Every change is a locked
read-modify-write, so concurrent chunk tasks and a cancel never overwrite each other.

A task working on a job beats (``beat``) every few seconds and holds a lease on its piece of work
(``lease``), so that a second delivery of the same message skips it and the watchdog can tell a job
whose worker vanished from one that is merely waiting.

``JobStore`` holds what every deployment shares: the records, idempotency and the jobs' state
machine. Where the locks, beats, leases and the set of unfinished jobs live is up to its two kinds,
chosen by ``open_job_store``: ``RedisJobStore`` keeps them in Redis and mirrors each record there for
fast reads and listing; ``FileJobStore``, the embedded default, keeps them in files under a lock
directory (flock: a dead process releases its lease at once).
"""

from __future__ import annotations

import calendar
import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from itertools import takewhile
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.storage import MissingKey, Storage

if TYPE_CHECKING:
    from redis import Redis

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
TYPES = ("training", "recognition", "enroll", "search")

PUBLISHING = "publishing"  # the progress stage after which a job can no longer be cancelled
JOB_ID = re.compile(r"[0-9a-f]{32}")
REDIS_PREFIX = "facerec:"

# A lease renewer, or None when another live execution holds the lease.
Lease = Callable[[], None] | None


class JobNotFound(LookupError):
    def __str__(self) -> str:
        job_id = str(self.args[0])
        return f"no job with id {job_id[:40] + '...' if len(job_id) > 40 else job_id}"


class IdempotencyConflict(Exception):
    """An Idempotency-Key was sent again with a different request."""


class JobCancelled(Exception):
    """The job was cancelled: the task stops without writing anything more."""


class TooLateToCancel(Exception):
    """The job is publishing its result: a cancel now could leave a version live under a cancelled job."""


class NotResumable(Exception):
    """Only a failed job can be resumed."""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class JobStore(ABC):
    """Create, read, update and list job records (open one with open_job_store)."""

    def __init__(self, storage: Storage, lease_s: float = 30) -> None:
        self.storage = storage
        self.lease_s = lease_s

    # -- what each kind of store does its own way -----------------------------------------------
    @abstractmethod
    def _lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Hold the lock called name, against every process sharing the store."""

    @abstractmethod
    def _newest_first(self) -> list[dict]:
        """Every job record, newest first."""

    @abstractmethod
    def _unfinished_ids(self) -> list[str]:
        """The ids of the jobs last written queued or running (maybe finished since)."""

    @abstractmethod
    def _written(self, job: dict) -> None:
        """Bring what the store keeps beside storage (a mirror, the unfinished set) up to date with a
        record just written; it may raise, and the write then counts as failed."""

    @abstractmethod
    def beat(self, job_id: str) -> None:
        """Say that a task is working on the job now."""

    @abstractmethod
    def last_beat(self, job_id: str) -> float | None:
        """When a task last said it worked on the job (seconds since the epoch), or None."""

    @abstractmethod
    def lease(self, job_id: str, work: str) -> contextlib.AbstractContextManager[Lease]:
        """Hold the lease on one piece of a job's work while it runs: yields a function that renews
        it (call it more often than lease_s), or None when another live execution holds it."""

    # -- reading -----------------------------------------------------------------------------
    def get(self, job_id: str) -> dict:
        try:
            return self.storage.get_json(_job_key(job_id))
        except (MissingKey, ValueError):
            raise JobNotFound(job_id) from None

    def list(self, job_type: str | None = None, state: str | None = None,
             limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
        """Jobs newest first, filtered by type and state; returns (page, total matching)."""
        matching = [j for j in self._newest_first()
                    if (not job_type or j["type"] == job_type) and (not state or j["state"] == state)]
        return matching[offset:offset + limit], len(matching)

    def unfinished(self) -> list[dict]:
        """The jobs queued or running, read without listing every job there ever was."""
        jobs = []
        for job_id in self._unfinished_ids():
            with contextlib.suppress(JobNotFound):
                jobs.append(self.get(job_id))
        return [job for job in jobs if job["state"] not in TERMINAL]

    # -- writing -----------------------------------------------------------------------------
    def create(self, job_type: str, params: dict, idempotency_key: str | None = None, scope: str = "",
               prepare: Callable[[dict], None] = lambda job: None) -> tuple[dict, bool]:
        """Record a new queued job; with an idempotency key seen before in the same scope (the route and
        the client), return that job instead, or raise IdempotencyConflict if the request differs.

        `prepare` runs on the new job before it is recorded (it may raise to refuse it).
        Returns (job, created)."""
        if job_type not in TYPES:
            raise ValueError(f"unknown job type {job_type!r}")
        record_key = _idempotency_key(f"{job_type}\n{scope}\n{idempotency_key}") if idempotency_key else None
        fingerprint = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        with self._lock("idem-" + record_key.rsplit("/", 1)[1]) if record_key else contextlib.nullcontext():
            if record_key:
                existing = self._job_for_key(record_key)
                if existing:
                    if existing[1] != fingerprint:
                        raise IdempotencyConflict(
                            "this Idempotency-Key was already used with a different request: "
                            "send a new key for a new request")
                    return existing[0], False
            job = {
                "id": uuid.uuid4().hex, "type": job_type, "state": QUEUED, "params": params,
                "progress": {"done": 0, "total": None}, "created_at": now(), "started_at": None,
                "finished_at": None, "result": None, "error": None,
            }
            prepare(job)
            try:
                self._write(job)
            except Exception:
                # Not mirrored (Redis down or overloaded): a record only in storage would never be
                # enqueued nor seen by the watchdog, so the submit fails whole.
                self.storage.delete(_job_key(job["id"]))
                raise
            if record_key:
                self.storage.put_json(record_key, {"job_id": job["id"], "request": fingerprint})
            return job, True

    def update(self, job_id: str, **changes) -> dict:
        """Apply changes to the record. A job in a final state is never changed again."""
        return self._change(job_id, lambda job: job.update(changes))

    def start(self, job_id: str, total: int | None = None, **changes) -> dict:
        """Mark the job running (keeping the time it first started), with other changes if given."""
        def run(job: dict) -> None:
            job.update(changes, state=RUNNING)
            if job["started_at"] is None:
                job["started_at"] = now()
            if total is not None:
                job["progress"] = {"done": 0, "total": total}

        return self._change(job_id, run)

    def add_progress(self, job_id: str, done: int) -> dict:
        def advance(job: dict) -> None:
            job["progress"]["done"] += done

        return self._change(job_id, advance)

    def set_progress(self, job_id: str, done: int, total: int, stage: str | None = None) -> dict:
        return self.update(job_id, progress={"done": done, "total": total, **({"stage": stage} if stage else {})})

    def succeed(self, job_id: str, result: dict) -> dict:
        return self.update(job_id, state=SUCCEEDED, result=result, finished_at=now())

    def fail(self, job_id: str, message: str, details: dict | None = None) -> dict:
        return self.update(job_id, state=FAILED, finished_at=now(), error={"message": message, **(details or {})})

    def cancel(self, job_id: str) -> dict:
        def cancel(job: dict) -> None:
            if job["progress"].get("stage") == PUBLISHING:
                raise TooLateToCancel(f"job {job_id} is publishing its result: too late to cancel")
            job.update(state=CANCELLED, finished_at=now())

        return self._change(job_id, cancel)

    def mark_publishing(self, job_id: str) -> None:
        """Enter the publishing stage, after which a cancel is refused; raise JobCancelled if the job
        was cancelled before. One locked step, so a cancel lands either before it or is refused."""
        def publish(job: dict) -> None:
            job["progress"]["stage"] = PUBLISHING

        if self._change(job_id, publish)["state"] == CANCELLED:
            raise JobCancelled(job_id)

    def chunk_done(self, job_id: str, index: int, photos: int, chunks: int) -> bool:
        """Record that a chunk's predictions are written; True for the call that completes the set
        (once, however often a chunk is redelivered)."""
        completed = []

        def record(job: dict) -> None:
            done = job.setdefault("chunks_done", [])
            if index in done:
                return
            done.append(index)
            job["progress"]["done"] += photos
            if len(done) == chunks:
                completed.append(True)

        self._change(job_id, record)
        return bool(completed)

    def resume(self, job_id: str, reason: str, limit: int | None = None,
               still_stalled: Callable[[dict], bool] = lambda job: True) -> tuple[dict, bool]:
        """Restart a job: automatically after its worker was lost (with a `limit` on such restarts,
        past which the job fails instead, and only if `still_stalled` says so of the fresh record), or
        by a user (no limit: only a failed job). Returns (job, whether it is to be run again)."""
        with self._lock(f"job-{job_id}"):
            job = self._read_fresh(job_id)
            if limit is None and job["state"] != FAILED:
                raise NotResumable(f"job {job_id} is {job['state']}: only a failed job can be resumed")
            if limit is not None and (job["state"] in TERMINAL or not still_stalled(job)):
                return job, False
            recoveries = job.setdefault("recoveries", [])
            # Automatic restarts since the last one a user asked for: a user's resume starts the count again.
            automatic = len(list(takewhile(lambda r: r["automatic"], reversed(recoveries))))
            if limit is not None and automatic >= limit:
                job.update(state=FAILED, finished_at=now(), error={
                    "message": f"{reason}; gave up after {limit} automatic restarts. "
                               f"POST /v1/jobs/{job_id}/resume to try again (finished work is kept)"})
                self._write(job)
                return job, False
            recoveries.append({"at": now(), "reason": reason, "automatic": limit is not None})
            job.update(state=RUNNING if job["started_at"] else QUEUED, finished_at=None, error=None)
            self._write(job)
            return job, True

    def count_delivery(self, job_id: str, delivery: str) -> int:
        """Count how often one task message has started, to bound redeliveries of lost tasks."""
        key = f"jobs/{job_id}/deliveries/{hashlib.sha256(delivery.encode()).hexdigest()[:16]}"
        with self._lock(f"job-{job_id}"):
            try:
                count = self.storage.get_json(key)["count"] + 1
            except MissingKey:
                count = 1
            self.storage.put_json(key, {"count": count, "delivery": delivery})
        return count

    # -- internals ---------------------------------------------------------------------------
    def _change(self, job_id: str, change: Callable[[dict], None]) -> dict:
        """Read the record under its lock, change it in place and write it; a job in a final state stays as it is."""
        with self._lock(f"job-{job_id}"):
            job = self._read_fresh(job_id)
            if job["state"] in TERMINAL:
                return job
            change(job)
            self._write(job)
            return job

    def _read_fresh(self, job_id: str) -> dict:
        try:
            return self.storage.get_json(_job_key(job_id))
        except MissingKey:
            raise JobNotFound(job_id) from None

    def _write(self, job: dict) -> None:
        self.storage.put_json(_job_key(job["id"]), job)
        self._written(job)

    def _job_for_key(self, record_key: str) -> tuple[dict, str] | None:
        """The job an idempotency record names and the fingerprint of its request, if recorded."""
        try:
            record = self.storage.get_json(record_key)
        except MissingKey:
            return None
        return self.get(record["job_id"]), record.get("request", "")


class RedisJobStore(JobStore):
    """Locks, beats, leases and the unfinished set in Redis, and each record mirrored there too."""

    def __init__(self, storage: Storage, redis: Redis, lease_s: float = 30) -> None:
        super().__init__(storage, lease_s)
        self.redis = redis

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        with self.redis.lock(f"{REDIS_PREFIX}lock:{name}", timeout=30, blocking_timeout=30):
            yield

    def get(self, job_id: str) -> dict:
        cached = self.redis.get(f"{REDIS_PREFIX}job:{job_id}")
        if cached:
            return json.loads(cached)
        job = super().get(job_id)
        self._mirror(job)
        return job

    def _newest_first(self) -> list[dict]:
        self._ensure_mirror()
        ids = self.redis.zrevrange(f"{REDIS_PREFIX}jobs", 0, -1)
        raw = self.redis.mget([f"{REDIS_PREFIX}job:{i.decode()}" for i in ids]) if ids else []
        return [json.loads(r) for r in raw if r]

    def _unfinished_ids(self) -> list[str]:
        self._ensure_mirror()
        return [i.decode() for i in self.redis.smembers(f"{REDIS_PREFIX}unfinished")]

    def _written(self, job: dict) -> None:
        self._mirror(job)

    def beat(self, job_id: str) -> None:
        self.redis.set(f"{REDIS_PREFIX}beat:{job_id}", time.time(), ex=7 * 24 * 3600)

    def last_beat(self, job_id: str) -> float | None:
        value = self.redis.get(f"{REDIS_PREFIX}beat:{job_id}")
        return float(value) if value else None

    @contextlib.contextmanager
    def lease(self, job_id: str, work: str) -> Iterator[Lease]:
        key, owner = f"{REDIS_PREFIX}lease:{job_id}:{work}", uuid.uuid4().hex
        if not self.redis.set(key, owner, nx=True, px=int(self.lease_s * 1000)):
            yield None
            return
        try:
            yield lambda: self.redis.pexpire(key, int(self.lease_s * 1000))
        finally:
            # Only our own: past lease_s without a renewal another execution may hold it now.
            if self.redis.get(key) == owner.encode():
                self.redis.delete(key)

    def _mirror(self, job: dict) -> None:
        pipe = self.redis.pipeline()
        pipe.set(f"{REDIS_PREFIX}job:{job['id']}", json.dumps(job))
        pipe.zadd(f"{REDIS_PREFIX}jobs", {job["id"]: timestamp(job["created_at"])})
        if job["state"] in TERMINAL:
            pipe.srem(f"{REDIS_PREFIX}unfinished", job["id"])
        else:
            pipe.sadd(f"{REDIS_PREFIX}unfinished", job["id"])
        pipe.execute()

    def _ensure_mirror(self) -> None:
        """Mirror every record from storage into Redis if Redis lost them (a restart: it keeps nothing)."""
        marker = f"{REDIS_PREFIX}mirrored"
        if self.redis.exists(marker):
            return
        with self._lock("mirror"):
            if self.redis.exists(marker):
                return
            for key in self.storage.list("jobs/"):
                if key.endswith("/job.json") and key.count("/") == 2:
                    self._mirror(self.storage.get_json(key))
            self.redis.set(marker, now())


class FileJobStore(JobStore):
    """Locks, beats, leases and the unfinished set in files under lock_dir: for one host, the
    embedded default."""

    def __init__(self, storage: Storage, lock_dir: str | Path, lease_s: float = 30) -> None:
        super().__init__(storage, lease_s)
        self.lock_dir = Path(lock_dir)

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_dir / f"{name}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _newest_first(self) -> list[dict]:
        jobs = [self.storage.get_json(k) for k in self.storage.list("jobs/")
                if k.endswith("/job.json") and k.count("/") == 2]
        jobs.sort(key=lambda j: (j["created_at"], j["id"]), reverse=True)
        return jobs

    def _unfinished_ids(self) -> list[str]:
        return [path.name for path in (self.lock_dir / "unfinished").glob("*")]

    def _written(self, job: dict) -> None:
        # A marker per unfinished job, for the watchdog: it never lists every job there ever was.
        marker = self._state_file("unfinished", job["id"])
        if job["state"] in TERMINAL:
            marker.unlink(missing_ok=True)
        else:
            marker.touch()

    def beat(self, job_id: str) -> None:
        path = self._state_file("beats", job_id)
        path.touch()
        os.utime(path)

    def last_beat(self, job_id: str) -> float | None:
        path = self._state_file("beats", job_id)
        return path.stat().st_mtime if path.exists() else None

    @contextlib.contextmanager
    def lease(self, job_id: str, work: str) -> Iterator[Lease]:
        with open(self._state_file("leases", f"{job_id}-{work}"), "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            yield lambda: None  # a flock lives exactly as long as its process: nothing to renew

    def _state_file(self, kind: str, name: str) -> Path:
        folder = self.lock_dir / kind
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name


def open_job_store(storage: Storage, redis: Redis | None = None, lock_dir: str | Path | None = None,
                   lease_s: float = 30) -> JobStore:
    """The job store over storage: on Redis when a client is given (lock_dir is then unused), else
    on files under lock_dir. A Redis lease lapses lease_s after its last renewal (a file lease when
    its process ends)."""
    if redis is not None:
        return RedisJobStore(storage, redis, lease_s)
    if not lock_dir:
        raise ValueError("JobStore needs Redis or a lock directory to serialise updates")
    return FileJobStore(storage, lock_dir, lease_s)


def _job_key(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id or ""):
        raise JobNotFound(job_id)
    return f"jobs/{job_id}/job.json"


def _idempotency_key(key: str) -> str:
    return f"idempotency/{hashlib.sha256(key.encode()).hexdigest()}.json"


def timestamp(iso: str) -> float:
    """Seconds since the epoch of a time written by now()."""
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))

"""Job records: what was asked, its state and progress, where its results are.

Storage holds the source of truth (``jobs/<id>/job.json``); with Redis configured, each record is
mirrored there for fast reads and listing. Every change is a locked read-modify-write, so concurrent
chunk tasks and a cancel never overwrite each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.storage import MissingKey, Storage

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
TYPES = ("training", "recognition", "enroll")

REDIS_PREFIX = "facerec:"


class JobNotFound(LookupError):
    def __str__(self) -> str:
        return f"no job with id {self.args[0]}"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class JobStore:
    """Create, read, update and list job records."""

    def __init__(self, storage: Storage, redis=None, lock_dir: str | Path | None = None) -> None:
        self.storage = storage
        self.redis = redis
        self.lock_dir = Path(lock_dir) if lock_dir else None
        if self.redis is None and self.lock_dir is None:
            raise ValueError("JobStore needs Redis or a lock directory to serialise updates")

    # -- locking -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        if self.redis is not None:
            with self.redis.lock(f"{REDIS_PREFIX}lock:{name}", timeout=30, blocking_timeout=30):
                yield
            return
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_dir / f"{name}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    # -- reading -----------------------------------------------------------------------------
    def get(self, job_id: str) -> dict:
        if self.redis is not None:
            cached = self.redis.get(f"{REDIS_PREFIX}job:{job_id}")
            if cached:
                return json.loads(cached)
        try:
            job = self.storage.get_json(_job_key(job_id))
        except (MissingKey, ValueError):
            raise JobNotFound(job_id) from None
        self._mirror(job)
        return job

    def list(self, job_type: str | None = None, state: str | None = None,
             limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
        """Jobs newest first, filtered by type and state; returns (page, total matching)."""
        if self.redis is not None:
            ids = self.redis.zrevrange(f"{REDIS_PREFIX}jobs", 0, -1)
            raw = self.redis.mget([f"{REDIS_PREFIX}job:{i.decode()}" for i in ids]) if ids else []
            jobs = [json.loads(r) for r in raw if r]
        else:
            jobs = [self.storage.get_json(k) for k in self.storage.list("jobs/") if k.endswith("/job.json")]
            jobs.sort(key=lambda j: (j["created_at"], j["id"]), reverse=True)
        matching = [j for j in jobs if (not job_type or j["type"] == job_type) and (not state or j["state"] == state)]
        return matching[offset:offset + limit], len(matching)

    # -- writing -----------------------------------------------------------------------------
    def create(self, job_type: str, params: dict, idempotency_key: str | None = None) -> tuple[dict, bool]:
        """Record a new queued job; with an idempotency key seen before, return that job instead.

        Returns (job, created)."""
        if job_type not in TYPES:
            raise ValueError(f"unknown job type {job_type!r}")
        lock_name = "idem-" + hashlib.sha256(idempotency_key.encode()).hexdigest() if idempotency_key else None
        with self._lock(lock_name) if lock_name else contextlib.nullcontext():
            if idempotency_key:
                existing = self._job_for_key(idempotency_key)
                if existing:
                    return existing, False
            job_id = uuid.uuid4().hex
            job = {
                "id": job_id, "type": job_type, "state": QUEUED, "params": params,
                "progress": {"done": 0, "total": None}, "created_at": now(), "started_at": None,
                "finished_at": None, "result": None, "error": None, "idempotency_key": idempotency_key,
            }
            self._write(job)
            if idempotency_key:
                self.storage.put_json(_idempotency_key(idempotency_key), {"job_id": job_id})
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

    def _change(self, job_id: str, change: Callable[[dict], None]) -> dict:
        """Read the record under its lock, change it in place and write it; a job in a final state stays as it is."""
        with self._lock(f"job-{job_id}"):
            job = self._read_fresh(job_id)
            if job["state"] in TERMINAL:
                return job
            change(job)
            self._write(job)
            return job

    def set_progress(self, job_id: str, done: int, total: int, stage: str | None = None) -> dict:
        return self.update(job_id, progress={"done": done, "total": total, **({"stage": stage} if stage else {})})

    def succeed(self, job_id: str, result: dict) -> dict:
        return self.update(job_id, state=SUCCEEDED, result=result, finished_at=now())

    def fail(self, job_id: str, message: str, details: dict | None = None) -> dict:
        return self.update(job_id, state=FAILED, finished_at=now(), error={"message": message, **(details or {})})

    def cancel(self, job_id: str) -> dict:
        return self.update(job_id, state=CANCELLED, finished_at=now())

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
    def _read_fresh(self, job_id: str) -> dict:
        try:
            return self.storage.get_json(_job_key(job_id))
        except MissingKey:
            raise JobNotFound(job_id) from None

    def _write(self, job: dict) -> None:
        self.storage.put_json(_job_key(job["id"]), job)
        self._mirror(job)

    def _mirror(self, job: dict) -> None:
        if self.redis is None:
            return
        pipe = self.redis.pipeline()
        pipe.set(f"{REDIS_PREFIX}job:{job['id']}", json.dumps(job))
        pipe.zadd(f"{REDIS_PREFIX}jobs", {job["id"]: _timestamp(job["created_at"])})
        pipe.execute()

    def _job_for_key(self, idempotency_key: str) -> dict | None:
        try:
            job_id = self.storage.get_json(_idempotency_key(idempotency_key))["job_id"]
        except MissingKey:
            return None
        return self.get(job_id)


def _job_key(job_id: str) -> str:
    if not job_id or not all(c in "0123456789abcdef" for c in job_id):
        raise JobNotFound(job_id)
    return f"jobs/{job_id}/job.json"


def _idempotency_key(key: str) -> str:
    return f"idempotency/{hashlib.sha256(key.encode()).hexdigest()}.json"


def _timestamp(iso: str) -> float:
    return time.mktime(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))

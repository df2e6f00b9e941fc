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
import sqlite3
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from itertools import takewhile
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.storage import MissingKey, Storage, StorageFull
from workers.chunks import ChunkLedger, FileChunkLedger, RedisChunkLedger

if TYPE_CHECKING:
    from redis import Redis

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
TYPES = ("training", "recognition", "enroll", "search", "cluster", "erasure")

PUBLISHING = "publishing"  # the progress stage after which a job can no longer be cancelled
JOB_ID = re.compile(r"[0-9a-f]{32}")
REDIS_PREFIX = "facerec:"
DELIVERIES_KEPT_S = 30 * 24 * 3600

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

    def __init__(self, storage: Storage, chunks: ChunkLedger, lease_s: float = 30) -> None:
        self.storage = storage
        self.chunks = chunks  # a bulk job's chunks as they are sent and finished (workers.chunks)
        self.lease_s = lease_s

    # -- what each kind of store does its own way -----------------------------------------------
    @abstractmethod
    def _lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Hold the lock called name, against every process sharing the store."""

    @abstractmethod
    def _page(self, job_type: str | None, state: str | None, limit: int, offset: int) -> tuple[list[dict], int]:
        """A page of the jobs of a type and state (None: any), newest first, from an index; and how many
        there are in all."""

    @abstractmethod
    def _unfinished_ids(self) -> list[str]:
        """The ids of the jobs last written queued or running (maybe finished since)."""

    @abstractmethod
    def _written(self, job: dict) -> None:
        """Bring what the store keeps beside storage (a mirror, the unfinished set) up to date with a
        record just written; it may raise, and the write then counts as failed."""

    @abstractmethod
    def _forgotten(self, job_id: str) -> None:
        """Remove what the store keeps beside storage of a job whose record was removed."""

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

    @abstractmethod
    def count_delivery(self, job_id: str, delivery: str) -> int:
        """Count how often one task message has started (this start included), to bound redeliveries of
        lost tasks."""

    @abstractmethod
    def deliveries(self, job_id: str) -> int:
        """How many task messages of the job have started at least once."""

    # -- reading -----------------------------------------------------------------------------
    def get(self, job_id: str) -> dict:
        """The job, with a running bulk job's progress as its chunks count it now (the record is brought
        up to date only now and then)."""
        return self._with_live_progress(self._record(job_id))

    def _record(self, job_id: str) -> dict:
        try:
            return self.storage.get_json(_job_key(job_id))
        except (MissingKey, ValueError):
            raise JobNotFound(job_id) from None

    def _with_live_progress(self, job: dict) -> dict:
        if job["type"] == "recognition" and job["state"] == RUNNING:
            counts = self.chunks.counts(job["id"])
            if counts is not None:
                job["progress"]["done"] = counts[1]
        return job

    def list(self, job_type: str | None = None, state: str | None = None,
             limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
        """Jobs newest first, filtered by type and state; returns (page, total matching). Read from an index:
        a page costs the same however many jobs there are."""
        page, total = self._page(job_type, state, limit, offset)
        return [self._with_live_progress(job) for job in page], total

    def unfinished(self) -> list[dict]:
        """The jobs queued or running, read without listing every job there ever was."""
        jobs = []
        for job_id in self._unfinished_ids():
            with contextlib.suppress(JobNotFound):
                jobs.append(self.get(job_id))
        return [job for job in jobs if job["state"] not in TERMINAL]

    # -- writing -----------------------------------------------------------------------------
    def create(self, job_type: str, params: dict, idempotency_key: str | None = None, scope: str = "",
               prepare: Callable[[dict], Callable[[], None] | None] = lambda job: None,
               enqueue: Callable[[dict], None] = lambda job: None) -> tuple[dict, bool]:
        """Record a new queued job and enqueue it; with an idempotency key seen before in the same scope
        (the route and the client), return that job instead, or raise IdempotencyConflict if the request
        differs.

        `prepare` runs on the new job before it is recorded: it may raise to refuse it, and may return a
        function that undoes what it did. `enqueue` sends the job's first task once it is recorded. If
        recording or enqueueing fails (Redis down, a full disk), everything written for the job is removed
        again and prepare undone: a failed submit leaves no record and no message behind.
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
            undo = prepare(job)
            try:
                self._write(job)
                if record_key:
                    self.storage.put_json(record_key, {"job_id": job["id"], "request": fingerprint})
                enqueue(job)
            except BaseException:
                self._discard(job["id"], record_key)
                if undo is not None:
                    undo()
                raise
            return job, True

    def _discard(self, job_id: str, record_key: str | None) -> None:
        """Remove a job that was never enqueued: each part on its own, as far as it goes (a record only in
        storage, never enqueued nor seen by the watchdog, must not stay)."""
        parts = [lambda: self.storage.delete(_job_key(job_id)), lambda: self._forgotten(job_id)]
        if record_key:
            parts.insert(0, lambda: self.storage.delete(record_key))
        for remove in parts:
            with contextlib.suppress(Exception):
                remove()

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

    def save_chunk_progress(self, job_id: str) -> None:
        """Bring a bulk job's record up to date with its chunks' counts (now and then, and at the end: the
        counts are what a reader sees meanwhile)."""
        counts = self.chunks.counts(job_id)
        if counts is not None:
            self._change(job_id, lambda job: job["progress"].update(done=counts[1]))

    def set_progress(self, job_id: str, done: int, total: int, stage: str | None = None) -> dict:
        return self.update(job_id, progress={"done": done, "total": total, **({"stage": stage} if stage else {})})

    def succeed(self, job_id: str, result: dict, progress: dict | None = None) -> dict:
        """Finish the job with its result (and its final progress, if given); its progress no longer names a
        stage (a failed job keeps the stage it failed in)."""
        def done(job: dict) -> None:
            job.update(state=SUCCEEDED, result=result, finished_at=now())
            if progress is not None:
                job["progress"] = dict(progress)
            job["progress"].pop("stage", None)

        return self._change(job_id, done)

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

    def resume(self, job_id: str, reason: str, limit: int | None = None,
               still_stalled: Callable[[dict], bool] = lambda job: True) -> tuple[dict, bool]:
        """Restart a job: automatically after its worker was lost (with a `limit` on such restarts,
        past which the job fails instead, and only if `still_stalled` says so of the fresh record), or
        by a user (no limit: only a failed job). Returns (job, whether it is to be run again)."""
        with self._lock(f"job-{job_id}"):
            job = self._read_fresh(job_id)
            if limit is None and job["state"] != FAILED:
                raise NotResumable(f"job {job_id} is {job['state']}: only a failed job can be resumed")
            if limit is None and job.get("working_files_expired_at"):
                raise NotResumable(f"job {job_id} cannot be resumed: its working files were deleted at "
                                   f"{job['working_files_expired_at']}, FACEREC_JOB_FILES_TTL_S after it finished "
                                   "(submit it again)")
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

    def expire_working_files(self, job_id: str, finished_before: float) -> bool:
        """Whether the job's working files may be deleted: True if it finished before `finished_before`
        (seconds since the epoch), and its record now says they are gone, so that it is never resumed
        without them; False for an unfinished job, or one finished since."""
        with self._lock(f"job-{job_id}"):
            job = self._read_fresh(job_id)
            if job["state"] not in TERMINAL or timestamp(job["finished_at"]) >= finished_before:
                return False
            if not job.get("working_files_expired_at"):
                job["working_files_expired_at"] = now()
                self._write(job)
            return True

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
        super().__init__(storage, RedisChunkLedger(redis), lease_s)
        self.redis = redis

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        with self.redis.lock(f"{REDIS_PREFIX}lock:{name}", timeout=30, blocking_timeout=30):
            yield

    def _record(self, job_id: str) -> dict:
        cached = self.redis.get(f"{REDIS_PREFIX}job:{job_id}")
        if cached:
            return json.loads(cached)
        job = super()._record(job_id)
        self._mirror(job)
        return job

    def _page(self, job_type: str | None, state: str | None, limit: int, offset: int) -> tuple[list[dict], int]:
        self._ensure_mirror()
        index = _index_key(job_type, state)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrevrange(index, offset, offset + limit - 1)
        pipe.zcard(index)
        ids, total = pipe.execute()
        raw = self.redis.mget([f"{REDIS_PREFIX}job:{i.decode()}" for i in ids]) if ids else []
        return [json.loads(r) for r in raw if r], total

    def _unfinished_ids(self) -> list[str]:
        self._ensure_mirror()
        return [i.decode() for i in self.redis.smembers(f"{REDIS_PREFIX}unfinished")]

    def _written(self, job: dict) -> None:
        self._mirror(job)

    def _forgotten(self, job_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(f"{REDIS_PREFIX}job:{job_id}")
        for index in _all_index_keys():
            pipe.zrem(index, job_id)
        pipe.srem(f"{REDIS_PREFIX}unfinished", job_id)
        pipe.execute()

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

    def count_delivery(self, job_id: str, delivery: str) -> int:
        key = f"{REDIS_PREFIX}deliveries:{job_id}"
        pipe = self.redis.pipeline()
        pipe.hincrby(key, delivery, 1)
        pipe.expire(key, DELIVERIES_KEPT_S)
        return pipe.execute()[0]

    def deliveries(self, job_id: str) -> int:
        return self.redis.hlen(f"{REDIS_PREFIX}deliveries:{job_id}")

    def _mirror(self, job: dict) -> None:
        pipe = self.redis.pipeline()
        pipe.set(f"{REDIS_PREFIX}job:{job['id']}", json.dumps(job))
        # The index: every job, and the jobs of each type, state and both, by time of creation.
        created = timestamp(job["created_at"])
        for state in STATES:
            for index in (_index_key(None, state), _index_key(job["type"], state)):
                if state == job["state"]:
                    pipe.zadd(index, {job["id"]: created})
                else:
                    pipe.zrem(index, job["id"])
        for index in (_index_key(None, None), _index_key(job["type"], None)):
            pipe.zadd(index, {job["id"]: created})
        if job["state"] in TERMINAL:
            pipe.srem(f"{REDIS_PREFIX}unfinished", job["id"])
        else:
            pipe.sadd(f"{REDIS_PREFIX}unfinished", job["id"])
        pipe.execute()

    def _ensure_mirror(self) -> None:
        """Mirror every record from storage into Redis if Redis lost them (a restart: it keeps nothing)."""
        marker = f"{REDIS_PREFIX}mirrored:2"  # 2: with the index by type and state
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
        super().__init__(storage, FileChunkLedger(Path(lock_dir) / "chunks"), lease_s)
        self.lock_dir = Path(lock_dir)

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_dir / f"{name}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _page(self, job_type: str | None, state: str | None, limit: int, offset: int) -> tuple[list[dict], int]:
        where = " AND ".join(f"{column} = ?" for column, value in (("type", job_type), ("state", state)) if value)
        values = [value for value in (job_type, state) if value]
        with self._index() as index:
            total = index.execute(f"SELECT count(*) FROM jobs {'WHERE ' + where if where else ''}",
                                  values).fetchone()[0]
            ids = [row[0] for row in index.execute(
                f"SELECT id FROM jobs {'WHERE ' + where if where else ''} ORDER BY created_at DESC, id DESC "
                "LIMIT ? OFFSET ?", [*values, limit, offset])]
        page = []
        for job_id in ids:
            with contextlib.suppress(JobNotFound):
                page.append(self._record(job_id))
        return page, total

    @contextlib.contextmanager
    def _index(self) -> Iterator[sqlite3.Connection]:
        """The jobs' index: a SQLite table (id, created_at, type, state) beside the locks, made from storage
        the first time. A connection per use: nothing is carried across a worker's forks."""
        path = self.lock_dir / "jobs-index.sqlite"
        new = not path.exists()
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with _disk_full_is_storage_full(), contextlib.closing(sqlite3.connect(path, timeout=30)) as index, index:
            index.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created_at TEXT, type TEXT, "
                          "state TEXT)")
            index.execute("CREATE INDEX IF NOT EXISTS newest ON jobs (created_at, id)")
            if new:
                with self._lock("index"):
                    index.executemany("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?)", (
                        (job["id"], job["created_at"], job["type"], job["state"])
                        for job in (self.storage.get_json(key) for key in self.storage.list("jobs/")
                                    if key.endswith("/job.json") and key.count("/") == 2)))
            yield index

    def _unfinished_ids(self) -> list[str]:
        return [path.name for path in (self.lock_dir / "unfinished").glob("*")]

    def _written(self, job: dict) -> None:
        # A marker per unfinished job, for the watchdog: it never lists every job there ever was.
        marker = self._state_file("unfinished", job["id"])
        if job["state"] in TERMINAL:
            marker.unlink(missing_ok=True)
        else:
            marker.touch()
        with self._index() as index:
            index.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?)",
                          (job["id"], job["created_at"], job["type"], job["state"]))

    def _forgotten(self, job_id: str) -> None:
        self._state_file("unfinished", job_id).unlink(missing_ok=True)
        with self._index() as index:
            index.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

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

    def count_delivery(self, job_id: str, delivery: str) -> int:
        # A file per delivery, grown by a byte per start under the job's lock: its size is the count.
        path = self._state_file(f"deliveries/{job_id}", hashlib.sha256(delivery.encode()).hexdigest()[:16])
        with self._lock(f"deliveries-{job_id}"), open(path, "ab") as file:
            file.write(b".")
            return file.tell()

    def deliveries(self, job_id: str) -> int:
        return sum(1 for _ in (self.lock_dir / "deliveries" / job_id).glob("*"))

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


@contextlib.contextmanager
def _disk_full_is_storage_full() -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as err:
        if "database or disk is full" in str(err):
            raise StorageFull("the jobs' index cannot grow: the disk under the lock folder is full") from None
        raise


def _index_key(job_type: str | None, state: str | None) -> str:
    """The sorted set of the jobs of a type and state (None: any), by time of creation."""
    return f"{REDIS_PREFIX}jobs" + (f":type={job_type}" if job_type else "") + (f":state={state}" if state else "")


def _all_index_keys() -> list[str]:
    return [_index_key(job_type, state) for job_type in (None, *TYPES) for state in (None, *STATES)]


def _job_key(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id or ""):
        raise JobNotFound(job_id)
    return f"jobs/{job_id}/job.json"


def _idempotency_key(key: str) -> str:
    return f"idempotency/{hashlib.sha256(key.encode()).hexdigest()}.json"


def timestamp(iso: str) -> float:
    """Seconds since the epoch of a time written by now()."""
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))

"""The chunks of a bulk-recognition job as they are sent and finished, counted without touching the job's
record: which chunks are done, which are released (sent to the queue, not yet done), and the photos done.

Three things rest on it. Exactly once: a chunk counts the first time it finishes, however often it is
redelivered, and the call that finishes the last one is told so (it sends the one summary task). Fair
sharing: a job never has more than `window` chunks released, and each finished chunk releases the next, so
the jobs on a queue take turns instead of the first job's million chunks going first. Cheap progress: one
Redis round trip per finished chunk, where the job record was read and written under a lock.

What storage holds is the truth: a chunk is done when its predictions are written. `open` starts the count
afresh from that (a first plan, a resume, or after Redis lost everything in a restart), so the counts are
never more than a cache of storage. Kept in Redis, or on the embedded default in a locked file per job.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis import Redis

REDIS_PREFIX = "facerec:chunks:"
KEEP_S = 30 * 24 * 3600  # counts of a job nobody finished are dropped after this

# KEYS: done set, released set, the job's hash (next, photos); ARGV: index, photos.
# Returns {1 if the chunk was not counted before, chunks now done}.
_FINISH = """
local added = redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[1])
if added == 1 then redis.call('HINCRBY', KEYS[3], 'photos', ARGV[2]) end
return {added, redis.call('SCARD', KEYS[1])}
"""
# KEYS as above; ARGV: chunks, window. Returns the indexes released now.
_RELEASE = """
local chunks, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local nxt = tonumber(redis.call('HGET', KEYS[3], 'next') or '0')
local released = {}
while redis.call('SCARD', KEYS[2]) < window and nxt < chunks do
  if redis.call('SISMEMBER', KEYS[1], nxt) == 0 then
    redis.call('SADD', KEYS[2], nxt)
    table.insert(released, nxt)
  end
  nxt = nxt + 1
end
redis.call('HSET', KEYS[3], 'next', nxt)
return released
"""


class ChunkLedger(ABC):
    """The counts of each bulk job's chunks (open one with open_chunk_ledger)."""

    @abstractmethod
    def open(self, job_id: str, chunks: int, done: Iterable[int], photos_done: int) -> None:
        """Count the job's chunks afresh: of its `chunks`, these are done (their predictions are in storage),
        holding this many photos; none is released."""

    @abstractmethod
    def finish(self, job_id: str, index: int, photos: int, chunks: int) -> bool:
        """Count chunk index done (once, however often it is redelivered); True for the call that makes
        all chunks done."""

    @abstractmethod
    def release(self, job_id: str, chunks: int, window: int) -> list[int]:
        """The next chunks to send, in order, so that at most window are released and not done; each
        chunk is released once between two opens."""

    @abstractmethod
    def counts(self, job_id: str) -> tuple[int, int] | None:
        """(chunks done, photos done), or None if the job's chunks are not counted here."""

    @abstractmethod
    def waiting(self, job_id: str) -> int:
        """How many of the job's chunks wait for their turn (not yet released): its backlog, which the
        queue's length no longer shows (an autoscaler reads it in GET /v1/health)."""

    @abstractmethod
    def close(self, job_id: str) -> None:
        """Forget the job's counts (its record holds the final ones)."""


class RedisChunkLedger(ChunkLedger):
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._finish = redis.register_script(_FINISH)
        self._release = redis.register_script(_RELEASE)

    def _keys(self, job_id: str) -> list[str]:
        return [f"{REDIS_PREFIX}{job_id}:done", f"{REDIS_PREFIX}{job_id}:released", f"{REDIS_PREFIX}{job_id}"]

    def open(self, job_id: str, chunks: int, done: Iterable[int], photos_done: int) -> None:
        done_key, released_key, counts_key = self._keys(job_id)
        pipe = self.redis.pipeline()  # MULTI/EXEC: no chunk is counted half-way through the reset
        pipe.delete(done_key, released_key, counts_key)
        done = list(done)
        for start in range(0, len(done), 10_000):
            pipe.sadd(done_key, *done[start:start + 10_000])
        pipe.hset(counts_key, mapping={"next": 0, "photos": photos_done, "chunks": chunks})
        for key in (done_key, released_key, counts_key):
            pipe.expire(key, KEEP_S)
        pipe.execute()

    def finish(self, job_id: str, index: int, photos: int, chunks: int) -> bool:
        added, done = self._finish(keys=self._keys(job_id), args=[index, photos])
        return added == 1 and done == chunks

    def release(self, job_id: str, chunks: int, window: int) -> list[int]:
        return [int(index) for index in self._release(keys=self._keys(job_id), args=[chunks, window])]

    def counts(self, job_id: str) -> tuple[int, int] | None:
        done_key, _, counts_key = self._keys(job_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.scard(done_key)
        pipe.hget(counts_key, "photos")
        done, photos = pipe.execute()
        return None if photos is None else (int(done), int(photos))

    def waiting(self, job_id: str) -> int:
        chunks, released = self.redis.hmget(self._keys(job_id)[2], "chunks", "next")
        return max(0, int(chunks or 0) - int(released or 0))

    def close(self, job_id: str) -> None:
        self.redis.delete(*self._keys(job_id))


class FileChunkLedger(ChunkLedger):
    """A JSON file per job under folder, changed under its flock: for one host, the embedded default."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @contextlib.contextmanager
    def _state(self, job_id: str) -> Iterator[dict]:
        """The job's counts, locked while the block runs and written back after it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{job_id}.json", "a+") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            file.seek(0)
            text = file.read()
            state = json.loads(text) if text else {}
            before = dict(state)
            yield state
            if state != before:
                file.seek(0)
                file.truncate()
                file.write(json.dumps(state))

    def open(self, job_id: str, chunks: int, done: Iterable[int], photos_done: int) -> None:
        with self._state(job_id) as state:
            state.clear()
            state.update(done=sorted(set(done)), released=[], next=0, photos=photos_done, chunks=chunks)

    def finish(self, job_id: str, index: int, photos: int, chunks: int) -> bool:
        with self._state(job_id) as state:
            if not state or index in state["done"]:
                return False
            state["done"] = [*state["done"], index]
            state["released"] = [i for i in state["released"] if i != index]
            state["photos"] += photos
            return len(state["done"]) == chunks

    def release(self, job_id: str, chunks: int, window: int) -> list[int]:
        with self._state(job_id) as state:
            if not state:
                return []
            done, released = set(state["done"]), []
            while len(state["released"]) + len(released) < window and state["next"] < chunks:
                if state["next"] not in done:
                    released.append(state["next"])
                state["next"] += 1
            state["released"] = [*state["released"], *released]
            return released

    def counts(self, job_id: str) -> tuple[int, int] | None:
        path = self.folder / f"{job_id}.json"
        if not path.exists():
            return None
        with self._state(job_id) as state:
            return (len(state["done"]), state["photos"]) if state else None

    def waiting(self, job_id: str) -> int:
        if not (self.folder / f"{job_id}.json").exists():
            return 0
        with self._state(job_id) as state:
            return max(0, state.get("chunks", 0) - state.get("next", 0)) if state else 0

    def close(self, job_id: str) -> None:
        (self.folder / f"{job_id}.json").unlink(missing_ok=True)


def open_chunk_ledger(redis: Redis | None, folder: Path) -> ChunkLedger:
    """The ledger in Redis when a client is given, else in files under folder."""
    return RedisChunkLedger(redis) if redis is not None else FileChunkLedger(folder)

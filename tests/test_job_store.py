"""The job store on its own: what a failed submit leaves behind, and the leases that keep one piece of
work from running twice."""

from __future__ import annotations

import pytest
import redis

from pipeline.storage import LocalStorage
from tests.system import free_port
from workers.jobs import FileJobStore, RedisJobStore, open_job_store


def test_a_submit_that_cannot_reach_redis_leaves_no_job_behind(tmp_path):
    # Nothing listens on this port: the record cannot be mirrored, so it must not stay in storage
    # as a queued job that nobody would ever run or watch.
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=1)
    storage = LocalStorage(tmp_path)
    with pytest.raises(redis.ConnectionError):
        open_job_store(storage, redis=unreachable).create("recognition", {"model": "m", "input_prefix": "inbox"})
    assert list(storage.list("jobs/")) == []


@pytest.mark.parametrize("backend", ["redis", "files"])
def test_a_lease_is_held_by_one_execution_at_a_time(tmp_path, redis_url, backend):
    client = redis.Redis.from_url(redis_url) if backend == "redis" else None
    jobs = open_job_store(LocalStorage(tmp_path / "storage"), redis=client, lock_dir=tmp_path / "locks", lease_s=30)
    with jobs.lease("a" * 32, "facerec.train") as first:
        assert first is not None
        with jobs.lease("a" * 32, "facerec.train") as second:
            assert second is None, "a second delivery of the same work must skip it"
        with jobs.lease("a" * 32, "facerec.recognize_chunk:1") as other:
            assert other is not None, "other work of the same job is free"
    with jobs.lease("a" * 32, "facerec.train") as again:
        assert again is not None, "released when the first execution ended"


def test_the_store_kind_follows_what_is_configured(tmp_path, redis_url):
    storage = LocalStorage(tmp_path / "storage")
    assert isinstance(open_job_store(storage, redis=redis.Redis.from_url(redis_url), lock_dir=tmp_path), RedisJobStore)
    assert isinstance(open_job_store(storage, lock_dir=tmp_path / "locks"), FileJobStore)
    with pytest.raises(ValueError, match="Redis or a lock directory"):
        open_job_store(storage)


def test_a_succeeded_job_names_no_stage_and_a_failed_one_the_stage_it_failed_in(tmp_path):
    jobs = open_job_store(LocalStorage(tmp_path / "storage"), lock_dir=tmp_path / "locks")
    published, broken = (jobs.create("training", {"model": "m"})[0]["id"] for _ in range(2))
    for job_id in (published, broken):
        jobs.start(job_id, total=10)
        jobs.set_progress(job_id, 10, 10, "writing the report")
    jobs.mark_publishing(published)
    assert jobs.succeed(published, {"version": "v1"})["progress"] == {"done": 10, "total": 10}
    assert jobs.fail(broken, "the report could not be written")["progress"]["stage"] == "writing the report"


class CountingStorage(LocalStorage):
    """Local storage that counts the objects read."""

    reads = 0

    def get(self, key: str) -> bytes:
        self.reads += 1
        return super().get(key)


@pytest.mark.parametrize("backend", ["files", pytest.param("redis", marks=pytest.mark.system)])
def test_a_page_of_jobs_is_read_from_an_index_not_from_every_record(tmp_path, request, backend):
    storage = CountingStorage(tmp_path / "storage")
    client = redis.Redis.from_url(request.getfixturevalue("redis_scratch_url")) if backend == "redis" else None
    jobs = open_job_store(storage, redis=client, lock_dir=tmp_path / "locks")
    created = []
    for number in range(60):
        job, _ = jobs.create(("training", "recognition", "enroll")[number % 3], {"model": f"m{number}"})
        jobs.update(job["id"], created_at=f"2026-01-01T00:{number // 60:02d}:{number % 60:02d}Z")
        if number % 4 == 0:
            jobs.fail(job["id"], "broken on purpose")
        created.append(jobs.get(job["id"]))
    newest_first = sorted(created, key=lambda j: j["created_at"], reverse=True)

    jobs.list(limit=1)  # the index is made once (on Redis, anew after a restart lost it)
    storage.reads = 0
    page, total = jobs.list(limit=5, offset=10)
    assert [j["id"] for j in page] == [j["id"] for j in newest_first[10:15]] and total == 60
    assert storage.reads <= 5, f"read {storage.reads} records for a page of 5"
    failed_training = [j for j in newest_first if j["type"] == "training" and j["state"] == "failed"]
    page, total = jobs.list("training", "failed", limit=3)
    assert [j["id"] for j in page] == [j["id"] for j in failed_training[:3]] and total == len(failed_training)
    page, total = jobs.list(state="queued", limit=100)
    assert total == 45 and all(j["state"] == "queued" for j in page)

"""A bulk job's chunk counts (workers.chunks), on files and on Redis: each chunk counts once however often it
is redelivered, exactly one finishing call learns that the job is complete even when many finish at once,
a job never has more than its window of chunks released, and a fresh count skips what storage says is done."""

from __future__ import annotations

import threading

import pytest
import redis

from workers.chunks import open_chunk_ledger

JOB = "c" * 32
REDIS = pytest.param("redis", marks=pytest.mark.system)


@pytest.fixture(params=["files", REDIS])
def ledger(request, tmp_path):
    client = redis.Redis.from_url(request.getfixturevalue("redis_url")) if request.param == "redis" else None
    ledger = open_chunk_ledger(client, tmp_path / "chunks")
    yield ledger
    ledger.close(JOB)


def test_a_window_of_chunks_is_released_and_each_finished_one_releases_the_next(ledger):
    ledger.open(JOB, 10, done=[], photos_done=0)
    assert ledger.waiting(JOB) == 10
    assert ledger.release(JOB, chunks=10, window=3) == [0, 1, 2]
    assert ledger.waiting(JOB) == 7
    assert ledger.release(JOB, chunks=10, window=3) == [], "the window is full"
    assert not ledger.finish(JOB, 1, photos=4, chunks=10)
    assert ledger.release(JOB, chunks=10, window=3) == [3]
    assert ledger.counts(JOB) == (1, 4)


def test_a_redelivered_chunk_counts_once_and_the_last_one_completes_the_job_once(ledger):
    ledger.open(JOB, 3, done=[], photos_done=0)
    ledger.release(JOB, chunks=3, window=3)
    assert not ledger.finish(JOB, 0, photos=4, chunks=3)
    assert not ledger.finish(JOB, 0, photos=4, chunks=3), "redelivered: already counted"
    assert not ledger.finish(JOB, 1, photos=4, chunks=3)
    assert ledger.finish(JOB, 2, photos=2, chunks=3)
    assert not ledger.finish(JOB, 2, photos=2, chunks=3), "the summary is sent once"
    assert ledger.counts(JOB) == (3, 10)


def test_of_many_chunks_finishing_at_once_exactly_one_completes_the_job(ledger):
    chunks = 200
    ledger.open(JOB, chunks, done=[], photos_done=0)
    completions = []

    def finish(indexes):
        for index in indexes:
            for _ in range(2):  # each delivered twice
                if ledger.finish(JOB, index, photos=1, chunks=chunks):
                    completions.append(index)

    threads = [threading.Thread(target=finish, args=(range(start, chunks, 8),)) for start in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(completions) == 1 and ledger.counts(JOB) == (chunks, chunks)


def test_a_fresh_count_skips_the_chunks_storage_has_and_releases_the_others(ledger):
    ledger.open(JOB, 6, done=[0, 2, 3], photos_done=12)
    assert ledger.counts(JOB) == (3, 12)
    assert ledger.release(JOB, chunks=6, window=2) == [1, 4]
    assert ledger.finish(JOB, 1, photos=4, chunks=6) is False
    assert ledger.release(JOB, chunks=6, window=2) == [5]
    assert ledger.finish(JOB, 4, photos=4, chunks=6) is False
    assert ledger.finish(JOB, 5, photos=4, chunks=6) is True

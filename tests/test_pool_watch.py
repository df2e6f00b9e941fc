"""The pool watch tells a wedged pool from a busy or slow one (the restart itself: tests/test_faults.py,
a worker whose idle child was killed)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from workers.pool_watch import PoolWatch

TAKE_S, LOST_S = 30.0, 20.0


@dataclass
class Task:
    id: str
    worker_pid: int | None = None


@pytest.fixture
def live_process() -> Iterator[int]:
    """A child of this process that lives through the test, as a pool process would."""
    process = subprocess.Popen(["sleep", "60"])
    yield process.pid
    process.kill()
    process.wait()


@pytest.fixture
def dead_process() -> int:
    """A child of this process that has exited (and been reaped), as a killed pool process."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def watch(tasks: list[Task], processes: int = 1) -> PoolWatch:
    return PoolWatch(lambda: tasks, lambda: processes, take_s=TAKE_S, lost_s=LOST_S)


def test_a_task_taken_by_a_process_that_died_is_wedged_once_the_pools_own_timeout_has_passed(dead_process):
    pool = watch([Task("t1", worker_pid=dead_process)])
    assert pool.check(now=0.0) is None
    assert pool.check(now=LOST_S - 1) is None, "the pool gives a lost task back by itself within its timeout"
    reason = pool.check(now=LOST_S + 1)
    assert reason and "t1" in reason and str(dead_process) in reason


def test_a_task_taken_by_a_live_process_is_never_wedged(live_process):
    pool = watch([Task("t1", worker_pid=live_process)])
    assert pool.check(now=0.0) is None
    assert pool.check(now=100 * (TAKE_S + LOST_S)) is None, "a long training is not a wedge"


def test_a_task_no_process_takes_while_one_is_free_is_wedged_after_the_take_time():
    pool = watch([Task("t1")])
    assert pool.check(now=0.0) is None
    assert pool.check(now=TAKE_S - 1) is None, "a new pool process may still be loading its models"
    reason = pool.check(now=TAKE_S + 1)
    assert reason and "t1" in reason and "1 of 1 pool processes were free" in reason


def test_a_task_waiting_while_every_process_is_busy_is_not_wedged(live_process):
    tasks = [Task("running", worker_pid=live_process), Task("next")]
    assert watch(tasks, processes=1).check(now=0.0) is None
    pool = watch(tasks, processes=1)
    pool.check(now=0.0)
    assert pool.check(now=10 * TAKE_S) is None, "it waits for the one process, which is busy"
    pool = watch(tasks, processes=2)
    pool.check(now=0.0)
    assert pool.check(now=TAKE_S + 1), "one of two processes is free and has not taken it"


def test_a_task_taken_in_time_starts_no_clock():
    tasks = [Task("t1")]
    pool = watch(tasks)
    pool.check(now=0.0)
    tasks.clear()  # taken and done
    assert pool.check(now=TAKE_S - 1) is None
    tasks.append(Task("t2"))
    assert pool.check(now=TAKE_S + 1) is None, "t2 has only just arrived"
    assert pool.check(now=2 * TAKE_S + 2)


def test_the_watch_thread_restarts_a_wedged_worker_until_it_is_stopped_for_shutdown():
    restarts: list[str] = []
    pool = PoolWatch(lambda: [Task("t1")], lambda: 1, take_s=0.05, restart=restarts.append)
    thread = pool.start(every=0.01)
    deadline = time.monotonic() + 10
    while not restarts and time.monotonic() < deadline:
        time.sleep(0.01)
    assert restarts and "t1" in restarts[0]
    pool.stop()  # a worker shutting down lets its pool go
    thread.join(timeout=5)
    assert not thread.is_alive()
    count = len(restarts)
    time.sleep(0.1)
    assert len(restarts) == count

"""The embedded (SQLite) broker survives the forks of Celery's pool: a child forked while its parent polls
the broker can send messages (kombu's own transport: 2 to 10 children of 10 failed with "database is locked"
after SQLite's 5 s, or hung)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import pytest
from kombu import Connection

from config import Settings
from workers import embedded_broker  # noqa: F401 - the transport the embedded broker's URL names

pytestmark = pytest.mark.system  # forked children

CHILDREN = 10


def publish_from_a_child(url: str, number: int) -> int:
    """Fork; the child sends one message and exits 0, or 1 on an error, or dies if it hangs."""
    pid = os.fork()
    if pid:
        return pid
    signal.alarm(30)
    try:
        with Connection(url) as connection:
            connection.SimpleQueue("from-children").put({"child": number})
    except BaseException:  # noqa: BLE001 - any failure is this test's answer
        os._exit(1)
    os._exit(0)


def test_children_forked_while_the_parent_polls_the_broker_can_send_messages(tmp_path):
    url = Settings(data_dir=tmp_path).broker_url
    stop = threading.Event()

    def poll_as_a_worker_does() -> None:
        with Connection(url) as connection:
            queue = connection.SimpleQueue("polled")
            while not stop.is_set():
                with contextlib.suppress(queue.Empty):
                    queue.get(block=False)

    poller = threading.Thread(target=poll_as_a_worker_does)
    poller.start()
    try:
        time.sleep(0.3)
        children = []
        for number in range(CHILDREN):
            time.sleep(0.05)
            children.append(publish_from_a_child(url, number))
        exits = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    finally:
        stop.set()
        poller.join()
    assert exits == [0] * CHILDREN, f"child exit codes (1: an error, -14: hung): {exits}"
    with Connection(url) as connection:
        queue = connection.SimpleQueue("from-children")
        received = sorted(queue.get(timeout=5).payload["child"] for _ in range(CHILDREN))
    assert received == list(range(CHILDREN))

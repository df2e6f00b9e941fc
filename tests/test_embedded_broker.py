"""The embedded (SQLite) broker survives the forks of Celery's pool: a child forked while its parent polls
the broker can send messages (kombu's own transport: 2 to 10 children of 10 failed with "database is locked"
after SQLite's 5 s, or hung). Its table holds only the messages waiting: kombu's transport kept every
message ever taken (10,000 rows after 10,000 messages, and an empty poll took 37 ms instead of 2)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time

import pytest
from kombu import Connection

from config import Settings
from workers import embedded_broker

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


@pytest.mark.system  # forked children
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


def rows(data_dir) -> int:
    with contextlib.closing(sqlite3.connect(data_dir / "broker.sqlite")) as database:
        return database.execute("SELECT count(*) FROM kombu_message").fetchone()[0]


def test_the_broker_table_holds_only_the_messages_waiting(tmp_path):
    url = Settings(data_dir=tmp_path).broker_url
    with Connection(url) as connection:
        queue = connection.SimpleQueue("work")
        for number in range(60):
            queue.put({"number": number})
        assert rows(tmp_path) == 60
        taken = [queue.get_nowait() for _ in range(50)]
        for message in taken:
            message.ack()
        assert rows(tmp_path) == 10, "a message taken (and acknowledged) leaves the table"
        assert [message.payload["number"] for message in taken] == list(range(50)), "oldest first"
        unacknowledged = queue.get(timeout=5)
        assert rows(tmp_path) == 9
    # A connection closed with a message taken but not acknowledged (a worker's warm shutdown) puts it back.
    with Connection(url) as connection:
        queue = connection.SimpleQueue("work")
        numbers = sorted(queue.get(timeout=5).payload["number"] for _ in range(10))
        assert numbers == list(range(50, 60))
        assert unacknowledged.payload["number"] == 50
        assert rows(tmp_path) == 0


def test_messages_left_taken_by_an_earlier_version_are_deleted(tmp_path):
    url = Settings(data_dir=tmp_path).broker_url
    kombus_own = url.replace(f"{embedded_broker.ALIAS}+", "sqla+")  # the transport of workers before this one
    with Connection(kombus_own) as connection:
        queue = connection.SimpleQueue("work")
        for number in range(5):
            queue.put({"number": number})
        for _ in range(3):
            queue.get_nowait().ack()
    assert rows(tmp_path) == 5, "kombu's transport keeps what it hands out"
    assert embedded_broker.delete_taken(url) == 3
    with Connection(url) as connection:
        queue = connection.SimpleQueue("work")
        taken = [queue.get_nowait() for _ in range(2)]
        for message in taken:
            message.ack()
        assert sorted(message.payload["number"] for message in taken) == [3, 4]
    assert rows(tmp_path) == 0

"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, made safe for Celery's forked pool.

A worker on the embedded default polls the SQLite file from its main process (a transaction every tenth of
a second) while its pool forks new children (after a child is killed, or replaced for its memory). A child
forked in the middle of one of those transactions inherits SQLite's record of a lock that no process
holds, and every write it then makes to the broker fails with "database is locked": a chunk task could not
send the job's summary task, and the job failed (SQLite: "do not carry an open database connection across
a fork", https://sqlite.org/howtocorrupt.html section 2.6). Here every use of the database and every fork take
one lock, so that no fork happens mid-transaction, and a child opens connections of its own.

A message leaves the table when it is taken. kombu's transport marks it invisible instead and never reads
nor deletes it again, so the table held every message ever sent, and each poll, which walks past the taken
rows, slowed with it (37 ms for an empty poll after 10,000 messages, against 2 ms). The row is not needed to
redeliver: kombu's virtual channel keeps each unacknowledged message in memory (QoS._delivered) and gives it
back by publishing it again (Channel._restore, a new row) when a task is rejected or requeued and when the
channel closes on a warm shutdown; a process killed outright loses it either way, and the job watchdog
(workers.watchdog) restarts what it held.

Celery finds this transport by its alias: broker URLs ``facerec-sqla+sqlite:///<file>``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from json import loads
from queue import Empty

from kombu import Connection
from kombu.transport import TRANSPORT_ALIASES, sqlalchemy
from kombu.utils.encoding import bytes_to_str
from sqlalchemy import text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from pipeline.storage import StorageFull

ALIAS = "facerec-sqla"
log = logging.getLogger(__name__)

_no_fork_now = threading.Lock()


class Channel(sqlalchemy.Channel):
    """kombu's channel, each of whose reads and writes holds off forks until its transaction ends, and
    leaves its session clean when the database refuses one (kombu's would stay in a failed transaction)."""

    def _get(self, queue):
        # Taking a message is a write too: on a full disk take nothing and look again at the next poll,
        # rather than let kombu reconnect (a new session each time, until its pool runs out).
        with _no_fork_now, _when_disk_full(_nothing_to_take), self._session_rolled_back_on_error():
            return self._take(queue)

    def _take(self, queue: str) -> dict:
        """The queue's oldest message, deleted in the transaction that reads it (kombu's _get, which only
        marks it invisible)."""
        waiting = self._get_or_create(queue)
        self.session.execute(text("BEGIN IMMEDIATE TRANSACTION"))  # the write lock before the read
        try:
            message = (self.session.query(self.message_cls)
                       .filter(self.message_cls.queue_id == waiting.id, self.message_cls.visible.is_(True))
                       .order_by(self.message_cls.sent_at, self.message_cls.id)
                       .first())
            if message is None:
                raise Empty()
            payload = loads(bytes_to_str(message.payload))
            self.session.delete(message)
            return payload
        finally:
            self.session.commit()

    def _put(self, queue, payload, **kwargs):
        # The caller's to report (a submit answers 507), not a broken connection for kombu to retry.
        with _no_fork_now, _when_disk_full(_cannot_take_the_message), self._session_rolled_back_on_error():
            return super()._put(queue, payload, **kwargs)

    def _size(self, queue):
        with _no_fork_now, self._session_rolled_back_on_error():
            return super()._size(queue)

    def _purge(self, queue):
        with _no_fork_now, self._session_rolled_back_on_error():
            return super()._purge(queue)

    def _new_queue(self, queue, **kwargs):
        with _no_fork_now, _when_disk_full(_cannot_take_the_message), self._session_rolled_back_on_error():
            return super()._new_queue(queue, **kwargs)

    @contextlib.contextmanager
    def _session_rolled_back_on_error(self) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError:
            with contextlib.suppress(SQLAlchemyError):
                self.session.rollback()
            raise


@contextlib.contextmanager
def _when_disk_full(instead: Callable[[], Exception]) -> Iterator[None]:
    """SQLite's "database or disk is full" raised as instead() says."""
    try:
        yield
    except OperationalError as err:
        if "database or disk is full" not in str(err):
            raise
        raise instead() from None


def _cannot_take_the_message() -> Exception:
    return StorageFull("the embedded broker cannot take the message: its disk is full")


def _nothing_to_take() -> Exception:
    _log_disk_full()
    return Empty()


_last_disk_full_log = 0.0


def _log_disk_full() -> None:
    global _last_disk_full_log
    if time.monotonic() - _last_disk_full_log > 60:
        _last_disk_full_log = time.monotonic()
        log.error("the embedded broker's disk is full: no task can be taken until space is freed")


def delete_taken(url: str) -> int:
    """Delete the messages left in the table, taken, by a worker of an earlier version (kombu's transport
    kept them, invisible): they slow every poll. Returns how many."""
    with Connection(url) as connection:
        channel = connection.default_channel
        with _no_fork_now, channel._session_rolled_back_on_error():
            deleted = (channel.session.query(channel.message_cls)
                       .filter(channel.message_cls.visible.is_(False))
                       .delete(synchronize_session=False))
            channel.session.commit()
    return deleted


class Transport(sqlalchemy.Transport):
    Channel = Channel
    # The SQLite broker is polled, by default every second, so each hand-over of a job (plan, chunks,
    # summary) waited up to a second.
    polling_interval = 0.1


def _before_fork() -> None:
    _no_fork_now.acquire()


def _after_fork_in_parent() -> None:
    _no_fork_now.release()


def _after_fork_in_child() -> None:
    """The parent's engines hold the parent's connections: the child opens new ones when it needs them."""
    global _no_fork_now
    _no_fork_now = threading.Lock()  # the copy is held (by the thread that forked)
    for engine, _session in Channel._engines.values():
        engine.dispose(close=False)
    Channel._engines.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
TRANSPORT_ALIASES[ALIAS] = f"{__name__}:Transport"

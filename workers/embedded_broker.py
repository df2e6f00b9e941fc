"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, made safe for Celery's forked pool.

A worker on the embedded default polls the SQLite file from its main process (a transaction every tenth of
a second) while its pool forks new children (after a child is killed, or replaced for its memory). A child
forked in the middle of one of those transactions inherits SQLite's record of a lock that no process
holds, and every write it then makes to the broker fails with "database is locked": a chunk task could not
send the job's summary task, and the job failed (SQLite: "do not carry an open database connection across
a fork", https://sqlite.org/howtocorrupt.html section 2.6). Here every use of the database and every fork take
one lock, so that no fork happens mid-transaction, and a child opens connections of its own.

Celery finds this transport by its alias: broker URLs ``facerec-sqla+sqlite:///<file>``.
"""

from __future__ import annotations

import os
import threading

from kombu.transport import TRANSPORT_ALIASES, sqlalchemy

ALIAS = "facerec-sqla"

_no_fork_now = threading.Lock()


class Channel(sqlalchemy.Channel):
    """kombu's channel, each of whose reads and writes holds off forks until its transaction ends."""

    def _get(self, queue):
        with _no_fork_now:
            return super()._get(queue)

    def _put(self, queue, payload, **kwargs):
        with _no_fork_now:
            return super()._put(queue, payload, **kwargs)

    def _size(self, queue):
        with _no_fork_now:
            return super()._size(queue)

    def _purge(self, queue):
        with _no_fork_now:
            return super()._purge(queue)

    def _new_queue(self, queue, **kwargs):
        with _no_fork_now:
            return super()._new_queue(queue, **kwargs)


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

"""How many messages wait in each of the app's queues: for the watchdog (is work queued that some worker
will come to?) and for the API's health answer (what waits, and for whom)."""

from __future__ import annotations

import threading

from celery import Celery


class QueueDepth:
    """Messages waiting per queue, over one broker connection kept for the caller (a connection per
    question exhausts the embedded SQLite broker's connection pool); safe to share between threads."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.queues = sorted({route["queue"] for route in app.conf.task_routes.values()}
                             | {app.conf.task_default_queue})
        self._connection = None
        self._lock = threading.Lock()

    def per_queue(self) -> dict[str, int]:
        with self._lock:
            try:
                if self._connection is None:
                    self._connection = self.app.connection_for_read()
                channel = self._connection.default_channel
                return {queue: channel.queue_declare(queue=queue, passive=False).message_count
                        for queue in self.queues}
            except Exception:
                if self._connection is not None:
                    self._connection.release()
                self._connection = None
                raise

    def __call__(self) -> int:
        """Every message waiting, in all the queues."""
        return sum(self.per_queue().values())

"""Which workers are up and which queues they serve: each worker says so every few seconds, so that the API
can tell a person "no worker is serving queue gpu" instead of leaving their job queued in silence.

A worker's word lasts three of its intervals: one that stops saying it (killed, machine gone) drops out of
what is seen soon after. Kept in Redis (keys that expire), or on the embedded default in a file per worker
under the data folder (its time of last change is the word's age).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

REDIS_PREFIX = "facerec:worker:"


class Presence:
    """Workers' announcements: in Redis when given a client, else as files in folder."""

    def __init__(self, redis=None, folder: Path | None = None, every_s: float = 10) -> None:
        if redis is None and folder is None:
            raise ValueError("Presence needs Redis or a folder")
        self.redis, self.folder, self.every_s = redis, folder, every_s

    def announce(self, worker: str, queues: Iterable[str]) -> None:
        """Say that worker is up and serves these queues, now."""
        record = json.dumps({"worker": worker, "queues": sorted(queues), "at": time.time()})
        if self.redis is not None:
            self.redis.set(REDIS_PREFIX + worker, record, ex=max(1, round(3 * self.every_s)))
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"{worker}.json").write_text(record)

    def withdraw(self, worker: str) -> None:
        """Say that worker has stopped (a warm shutdown)."""
        if self.redis is not None:
            self.redis.delete(REDIS_PREFIX + worker)
        else:
            (self.folder / f"{worker}.json").unlink(missing_ok=True)

    def serving(self) -> dict[str, int]:
        """How many live workers serve each queue (queues nobody serves are absent)."""
        counts: dict[str, int] = {}
        for record in self._live():
            for queue in record["queues"]:
                counts[queue] = counts.get(queue, 0) + 1
        return counts

    def _live(self) -> list[dict]:
        if self.redis is not None:
            keys = list(self.redis.scan_iter(match=REDIS_PREFIX + "*", count=1000))
            return [json.loads(raw) for raw in self.redis.mget(keys) if raw] if keys else []
        if not self.folder.is_dir():
            return []
        oldest = time.time() - 3 * self.every_s
        live = []
        for path in self.folder.glob("*.json"):
            try:
                if path.stat().st_mtime >= oldest:
                    live.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # removed or half-written meanwhile: not live
                continue
        return live

    def start(self, worker: str, queues: Iterable[str]) -> threading.Event:
        """Announce on a daemon thread every every_s seconds until the returned event is set (then withdraw)."""
        stop, queues = threading.Event(), sorted(queues)

        def loop() -> None:
            while True:
                try:
                    self.announce(worker, queues)
                except Exception:  # Redis or the disk away for a moment: say it again next time
                    log.warning("could not announce worker %s", worker, exc_info=True)
                if stop.wait(self.every_s):
                    break
            try:
                self.withdraw(worker)
            except Exception:
                log.warning("could not withdraw worker %s", worker, exc_info=True)

        threading.Thread(target=loop, name="facerec-presence", daemon=True).start()
        return stop

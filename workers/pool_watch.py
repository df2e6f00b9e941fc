"""The pool watch: a worker whose pool of processes has stopped taking tasks replaces itself.

Celery's prefork pool can wedge when one of its processes is killed (the OOM killer, an operator):
- the blocking pool that the embedded (SQLite) broker's workers use has one task queue shared by all
  processes, and an idle process waits for its next task holding that queue's lock: killed then, it takes
  the lock with it, and no process, old or new, ever takes a task again;
- a process killed just after it took a task can leave the task held by the worker for good, without
  the WorkerLostError that would give it back (the pool saw the death before it read the acceptance).
Either way the worker keeps a message it will never run, takes no other (it prefetches one per process),
and the jobs behind it would wait forever.

A thread of the worker's main process looks at the tasks the worker holds. When one has waited longer
than FACEREC_POOL_TAKE_S for a process while a process was free, or was taken by a process that has been
dead for longer than the pool's own lost-process timeout, the worker kills its pool and starts again in
the same process (same command, same pid). What it held is left to the job watchdog
(workers.watchdog), which restarts the job's missing work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn, Protocol

from billiard.pool import LOST_WORKER_TIMEOUT

log = logging.getLogger(__name__)


class HeldTask(Protocol):
    """What the watch reads of a Celery request (celery.worker.request.Request)."""

    id: str
    worker_pid: int | None  # the pool process that took it; None while it waits for one


class PoolWatch:
    """Finds a wedged pool; `check` once, or `start` a thread that restarts the worker when it is."""

    def __init__(self, held: Callable[[], Iterable[HeldTask]], processes: Callable[[], int], take_s: float,
                 lost_s: float = LOST_WORKER_TIMEOUT + 10,
                 restart: Callable[[str], None] | None = None) -> None:
        self.held = held
        self.processes = processes
        self.take_s = take_s
        self.lost_s = lost_s
        self.restart = restart or restart_worker
        self._waiting_since: dict[str, float] = {}
        self._dead_since: dict[str, float] = {}
        self._stopped = threading.Event()

    def check(self, now: float | None = None) -> str | None:
        """Why the pool is wedged, or None while it is not."""
        now = time.monotonic() if now is None else now
        tasks = list(self.held())
        alive = {t.worker_pid for t in tasks if t.worker_pid and _is_child(t.worker_pid)}
        running = [t for t in tasks if t.worker_pid in alive]
        waiting = {t.id: t for t in tasks if not t.worker_pid}
        dead = {t.id: t for t in tasks if t.worker_pid and t.worker_pid not in alive}
        for since, current in ((self._waiting_since, waiting), (self._dead_since, dead)):
            for task_id in set(since) - set(current):
                since.pop(task_id)
            for task_id in current:
                since.setdefault(task_id, now)
        for task_id, task in dead.items():
            if now - self._dead_since[task_id] > self.lost_s:
                return (f"task {task_id} was taken by pool process {task.worker_pid}, dead for "
                        f"{now - self._dead_since[task_id]:.0f} s, and the pool never gave it back")
        processes = self.processes()
        if len(running) < processes:
            for task_id in waiting:
                if now - self._waiting_since[task_id] > self.take_s:
                    return (f"task {task_id} has waited {now - self._waiting_since[task_id]:.0f} s while "
                            f"{processes - len(running)} of {processes} pool processes were free "
                            "(a pool process killed while it held the task queue's lock?)")
        return None

    def start(self, every: float = 1.0) -> threading.Thread:
        """Check on a daemon thread until `stop`."""

        def loop() -> None:
            while not self._stopped.wait(every):
                try:
                    reason = self.check()
                except Exception:  # e.g. the set of held tasks changed while it was read: next time
                    log.debug("pool check failed", exc_info=True)
                    continue
                if reason and not self._stopped.is_set():
                    self.restart(reason)

        thread = threading.Thread(target=loop, name="facerec-pool-watch", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop checking: a worker shutting down lets its pool go, and must not be restarted for it."""
        self._stopped.set()


def restart_worker(reason: str) -> NoReturn:
    """Kill this worker's pool processes and run the worker's command again in this process."""
    log.critical("restarting this worker, its pool has stopped taking tasks: %s", reason)
    for pid in _children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def _children() -> list[int]:
    """The pids of this process's live children: its pool processes."""
    return [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat") if _is_child(int(stat.parent.name))]


def _is_child(pid: int) -> bool:
    """Whether pid is a live (not zombie) child of this process; a dead one's pid may be reused."""
    try:
        # "pid (command) state ppid ...": the command may hold spaces and parentheses.
        state, ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    except (OSError, IndexError):
        return False
    return state != "Z" and int(ppid) == os.getpid()

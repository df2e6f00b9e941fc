"""The worker's Celery app: ``celery -A workers.app worker`` imports this module when the worker starts.

Run a GPU worker with ``celery -A workers.app worker -Q gpu -c 1`` (one process per GPU) and a CPU
worker with ``-Q default``. With no REDIS_URL the broker is a SQLite file under
FACEREC_DATA_DIR, shared by every process on the machine.

Importing this module is starting a worker: it reads the settings from the environment, makes the
worker's runtime and app (workers.celery_config) and connects the worker's signals. Nothing else imports it
but the tasks.
"""

from __future__ import annotations

import os

# Before any TensorFlow import: take GPU memory as needed rather than all of it at start, so that a
# worker's other processes (and a second worker on the same GPU) can run. JAX keeps its own default.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

from celery.concurrency.prefork import TaskPool as PreforkPool  # noqa: E402
from celery.signals import worker_process_init, worker_ready, worker_shutting_down  # noqa: E402
from celery.worker import state as worker_state  # noqa: E402

from config import load_settings  # noqa: E402
from workers import task_names  # noqa: E402
from workers.housekeeping import housekeeper  # noqa: E402
from workers.pool_watch import PoolWatch  # noqa: E402
from workers.queues import QueueDepth  # noqa: E402
from workers.runtime import Runtime  # noqa: E402
from workers.watchdog import Watchdog  # noqa: E402

# The worker's app: `celery -A workers.app worker` imports this module when it starts.
runtime = Runtime(load_settings())
app = runtime.celery


@worker_process_init.connect
def load_models(**_kwargs) -> None:
    """Load the face pipeline in each GPU- or interactive-queue worker child before its first task, not
    during one."""
    consumed = app.amqp.queues.consume_from or {}
    if runtime.settings.queue_gpu in consumed or runtime.settings.queue_interactive in consumed:
        runtime.face_pipeline  # noqa: B018 - built now, before the first task


# The tasks whose first argument is a job id (workers.tasks.JobTask).
JOB_TASKS = {task_names.TRAIN, task_names.ENROLL, task_names.PLAN_RECOGNITION, task_names.RECOGNIZE_CHUNK,
             task_names.FINISH_RECOGNITION}


def held_jobs() -> set[str]:
    """The jobs whose tasks this worker has taken from the queue and not finished."""
    return {request.args[0] for request in list(worker_state.reserved_requests)
            if request.name in JOB_TASKS and request.args}


@worker_ready.connect
def start_watching(sender, **_kwargs) -> None:
    """Every worker says which queues it serves (workers.presence), watches for jobs whose worker
    vanished (workers.watchdog) and takes its turn at deleting what expired (workers.housekeeping), and a
    prefork worker watches for its own pool wedged by a killed process (workers.pool_watch)."""
    settings = runtime.settings
    present = runtime.presence.start(sender.hostname, app.amqp.queues.consume_from or {})
    worker_shutting_down.connect(lambda **_: present.set(), weak=False)
    Watchdog(runtime.jobs, QueueDepth(app),
             restart=lambda job: runtime.send(task_names.ENTRY_TASKS[job["type"]], [job["id"]],
                                              priority=job["params"].get("priority")),
             stall_s=settings.job_stall_s, heartbeat_s=settings.heartbeat_s,
             max_resumes=settings.max_resumes, held=held_jobs).start()
    housekeeper(runtime).start()
    if isinstance(sender.pool, PreforkPool):
        watch = PoolWatch(lambda: worker_state.reserved_requests, lambda: sender.pool.num_processes,
                          take_s=settings.pool_take_s)
        worker_shutting_down.connect(lambda **_: watch.stop(), weak=False)
        watch.start()

"""The Celery app: broker, routing and the settings long GPU tasks need.

Run a GPU worker with ``celery -A workers.app worker -Q gpu -c 1`` (one process per GPU) and a CPU
worker with ``-Q default``. With no REDIS_URL the broker and result backend are SQLite files under
FACEREC_DATA_DIR, shared by every process on the machine.
"""

from __future__ import annotations

import os

# Before any TensorFlow import: take GPU memory as needed rather than all of it at start, so that a
# worker's other processes (and a second worker on the same GPU) can run. JAX keeps its own default.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

from celery import Celery  # noqa: E402
from celery.concurrency.prefork import TaskPool as PreforkPool  # noqa: E402
from celery.signals import worker_process_init, worker_ready, worker_shutting_down  # noqa: E402
from celery.worker import state as worker_state  # noqa: E402

from workers import embedded_broker, runtime  # noqa: E402, F401 - embedded_broker: the SQLite broker's transport
from workers.pool_watch import PoolWatch  # noqa: E402
from workers.watchdog import QueueDepth, Watchdog  # noqa: E402

settings = runtime.settings()
# Single-photo requests (workers.interactive). GPU workers consume it before their bulk queue:
# celery -A workers.app worker -Q interactive,gpu.
QUEUE_INTERACTIVE = settings.queue_interactive
settings.data_dir.mkdir(parents=True, exist_ok=True)

app = Celery("facerec", broker=settings.broker_url, backend=settings.result_backend,
             include=["workers.tasks", "workers.interactive"])
app.conf.update(
    task_default_queue=settings.queue_default,
    task_routes={
        "facerec.train": {"queue": settings.queue_gpu},
        "facerec.enroll": {"queue": settings.queue_gpu},
        "facerec.scheduled_training": {"queue": settings.queue_default},
        "facerec.recognize_chunk": {"queue": settings.queue_gpu},
        "facerec.plan_recognition": {"queue": settings.queue_default},
        "facerec.finish_recognition": {"queue": settings.queue_default},
        "facerec.recognize_photo": {"queue": QUEUE_INTERACTIVE},
    },
    # Long GPU tasks: take one message at a time, acknowledge it only when done, and give it back
    # to the queue if the worker process dies (the tasks bound how often that may happen).
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_max_memory_per_child=settings.worker_max_memory_mb * 1024,
    # Redis redelivers a message not acknowledged within this time. A task still running then is not
    # run twice (its lease is held); a lost one is restarted by the watchdog long before.
    broker_transport_options={} if settings.embedded else {
        # Take from the queues in the order -Q names them, so that a worker started with
        # -Q interactive,gpu serves a waiting single photo before the next bulk chunk
        # (kombu's default round robin would alternate between them).
        "queue_order_strategy": "priority",
        "visibility_timeout": settings.visibility_timeout_s,
        # Look for overdue messages every interval seconds (kombu's default scans every 100 s).
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
        "unacked_restore_throttle": 1,
    },
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=7 * 24 * 3600,
    worker_hijack_root_logger=False,
    # Scheduled retraining keeps its schedules in Redis; one beat holds the lock.
    beat_scheduler="redbeat.RedBeatScheduler",
    redbeat_redis_url=settings.redis_url or None,
)


@worker_process_init.connect
def load_models(**_kwargs) -> None:
    """Load the face pipeline in each GPU- or interactive-queue worker child before its first task, not
    during one."""
    consumed = app.amqp.queues.consume_from or {}
    if settings.queue_gpu in consumed or QUEUE_INTERACTIVE in consumed:
        runtime.face_pipeline()


@worker_ready.connect
def start_watchdog(sender, **_kwargs) -> None:
    """Every worker watches for jobs whose worker vanished (workers.watchdog), and a prefork worker for
    its own pool wedged by a killed process (workers.pool_watch)."""
    from workers.submit import ENTRY_TASKS

    Watchdog(runtime.job_store(), QueueDepth(app),
             restart=lambda job: app.send_task(ENTRY_TASKS[job["type"]], args=[job["id"]]),
             stall_s=settings.job_stall_s, heartbeat_s=settings.heartbeat_s,
             max_resumes=settings.max_resumes).start()
    if isinstance(sender.pool, PreforkPool):
        watch = PoolWatch(lambda: worker_state.reserved_requests, lambda: sender.pool.num_processes,
                          take_s=settings.pool_take_s)
        worker_shutting_down.connect(lambda **_: watch.stop(), weak=False)
        watch.start()

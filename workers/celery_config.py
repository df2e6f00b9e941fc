"""The Celery app's configuration: broker, routing, and the settings long GPU tasks need.

``create_celery`` makes an app for a process's runtime: the API and the demo send tasks with one, and a
worker (workers.app) runs them with one. Making one has no other effect.
"""

from __future__ import annotations

from celery import Celery

from config import Settings
from workers import embedded_broker, task_names  # noqa: F401 - embedded_broker: the SQLite broker's transport
from workers.runtime import Runtime


def celery_config(settings: Settings) -> dict:
    """Celery's settings for ours: where each task runs, and how long tasks are acknowledged and retried."""
    gpu, default, interactive = settings.queue_gpu, settings.queue_default, settings.queue_interactive
    training_limit = settings.training_time_limit_s
    return dict(
        task_default_queue=default,
        task_routes={
            task_names.TRAIN: {"queue": gpu},
            task_names.ENROLL: {"queue": gpu},
            task_names.SCHEDULED_TRAINING: {"queue": default},
            task_names.RECOGNIZE_CHUNK: {"queue": gpu},
            task_names.PLAN_RECOGNITION: {"queue": default},
            task_names.FINISH_RECOGNITION: {"queue": default},
            # Single photos: GPU workers consume it before their bulk queue (-Q interactive,gpu).
            task_names.RECOGNIZE_PHOTO: {"queue": interactive},
            task_names.SEARCH_FACES: {"queue": interactive},  # a photo's embedding, then the index
            task_names.OPTIMIZE_INDEX: {"queue": default},
            task_names.SEARCH_PEOPLE: {"queue": default},  # no network: index searches and thumbnails
            task_names.CLUSTER_FACES: {"queue": default},  # no network: neighbours and Chinese whispers
            task_names.ERASE: {"queue": gpu},  # embeds the person's dataset photos to find their faces
        },
        task_annotations={
            "*": {"max_retries": settings.task_max_retries},
            task_names.TRAIN: {"soft_time_limit": training_limit, "time_limit": training_limit + 60},
            task_names.ENROLL: {"soft_time_limit": training_limit, "time_limit": training_limit + 60},
            task_names.ERASE: {"soft_time_limit": training_limit, "time_limit": training_limit + 60},
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
            # Message priorities (workers.runtime.PRIORITIES) as lists gpu, gpu:3, gpu:6, ...
            "priority_steps": [0, 3, 6, 9],
            "sep": ":",
            "visibility_timeout": settings.visibility_timeout_s,
            # Look for overdue messages every interval seconds (kombu's default scans every 100 s).
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        # Job records in storage say how every task went: no result backend to write (or fill a disk).
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        # Scheduled retraining keeps its schedules in Redis; one beat holds the lock.
        beat_scheduler="redbeat.RedBeatScheduler",
        redbeat_redis_url=settings.redis_url or None,
    )


def create_celery(runtime: Runtime) -> Celery:
    """A Celery app for the runtime's settings; its tasks reach the runtime as ``self.app.runtime``."""
    settings = runtime.settings
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)  # the SQLite broker's folder
    celery = Celery("facerec", broker=settings.broker_url, include=["workers.tasks"])
    celery.conf.update(celery_config(settings))
    celery.runtime = runtime
    return celery

"""What one process builds from its settings and then reuses: storage, Redis, the job store, the Celery app
it sends tasks with, and in a worker the face pipeline and the model versions it used recently.

Nothing here reads the environment: the API builds a Runtime in create_app from the settings it is given,
a worker at start (workers.app), the demo and the benchmarks for themselves. Each part is built when
first used, so the API never loads TensorFlow.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import cached_property
from typing import TYPE_CHECKING

from config import Settings
from pipeline.storage import Storage, storage_from_settings
from workers.jobs import JobStore, open_job_store
from workers.presence import Presence

if TYPE_CHECKING:
    from celery import Celery

    from pipeline.faces import FacePipeline
    from workers.queues import QueueDepth

MODELS_KEPT = 4
# A job's priority as a message priority: kombu's Redis transport takes 0 first, then 3, 6 and 9.
PRIORITIES = {"high": 0, "normal": 3, "low": 6}
REDIS_CONNECTIONS = 64  # per process: more than the API's threads, far more than a worker's


class Runtime:
    """The services and models of one process, built from its settings when first used."""

    def __init__(self, settings: Settings, celery: Celery | None = None) -> None:
        self.settings = settings
        if celery is not None:
            self.celery = celery
        self._models: OrderedDict = OrderedDict()

    @cached_property
    def storage(self) -> Storage:
        return storage_from_settings(self.settings)

    @cached_property
    def redis(self):
        """A Redis client, or None on the embedded default."""
        if not self.settings.redis_url:
            return None
        import redis

        # A blocking pool: under a burst of requests a thread waits a moment for a connection instead of
        # failing at once (redis-py's default pool raises "Too many connections" past 100).
        pool = redis.BlockingConnectionPool.from_url(self.settings.redis_url, max_connections=REDIS_CONNECTIONS,
                                                     timeout=20)
        return redis.Redis(connection_pool=pool)

    @cached_property
    def jobs(self) -> JobStore:
        return open_job_store(self.storage, redis=self.redis, lock_dir=self.settings.data_dir / "locks",
                              lease_s=3 * self.settings.heartbeat_s)

    @cached_property
    def celery(self) -> Celery:
        """The Celery app this process sends tasks with (a worker's own app, given at construction)."""
        from workers.celery_config import create_celery

        return create_celery(self)

    @cached_property
    def presence(self) -> Presence:
        """Which workers are up, serving which queues (workers.presence)."""
        return Presence(self.redis, self.settings.data_dir / "workers", every_s=self.settings.heartbeat_s)

    @cached_property
    def queue_depth(self) -> QueueDepth:
        """How many messages wait in each queue (workers.queues)."""
        from workers.queues import QueueDepth

        return QueueDepth(self.celery)

    @cached_property
    def face_pipeline(self) -> FacePipeline:
        """The face pipeline configured by the settings (device, batch sizes, decoding processes, pyramid,
        precision)."""
        from pipeline.detect import FaceDetector
        from pipeline.face_resnet import ACCURATE, PLAIN, FaceResNetEmbedder
        from pipeline.faces import FacePipeline

        config = self.settings
        device = config.device or None
        crops = ACCURATE if config.accurate_faces else PLAIN
        detector = FaceDetector(min_face_size=config.min_face_size, batch_size=config.detect_batch, device=device,
                                scale_factor=config.pyramid_factor)
        return FacePipeline(detector,
                            FaceResNetEmbedder(config.cache_dir, batch_size=config.embed_batch,
                                               mirror=config.mirror_faces, crops=crops, device=device,
                                               precision=config.precision),
                            batch_size=config.photo_batch, decode_processes=config.decode_processes)

    def model(self, name: str, version: str):
        """A published model version, loaded once and kept while recently used."""
        from pipeline.recognize import load_model

        key = (name, version)
        if key not in self._models:
            self._models[key] = load_model(self.storage, name, version)
            while len(self._models) > MODELS_KEPT:
                self._models.popitem(last=False)
        self._models.move_to_end(key)
        return self._models[key]

    def send(self, task: str, args: list, queue: str | None = None, priority: str | None = None) -> None:
        """Send a task by name (routed by workers.celery_config unless a queue is given), at a job's priority
        (high, normal, low; on Redis a worker takes higher ones first): never imports the task."""
        options = {"queue": queue} if queue else {}
        if priority:
            options["priority"] = PRIORITIES[priority]
        self.celery.send_task(task, args=args, **options)

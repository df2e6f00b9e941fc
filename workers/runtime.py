"""Per-process singletons: settings, storage, the job store, and the models a worker keeps loaded.

The face pipeline and model versions are loaded once per worker process and reused across tasks.
TensorFlow is imported only when a model is first needed, so the API can use this module too.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import cache

from config import Settings, load_settings
from pipeline.storage import Storage, storage_from_settings
from workers.jobs import JobStore, open_job_store

MODELS_KEPT = 4
REDIS_CONNECTIONS = 64  # per process: more than the API's threads, far more than a worker's


@cache
def settings() -> Settings:
    return load_settings()


@cache
def storage() -> Storage:
    return storage_from_settings(settings())


@cache
def redis_client():
    if not settings().redis_url:
        return None
    import redis

    # A blocking pool: under a burst of requests a thread waits a moment for a connection instead of
    # failing at once (redis-py's default pool raises "Too many connections" past 100).
    pool = redis.BlockingConnectionPool.from_url(settings().redis_url, max_connections=REDIS_CONNECTIONS, timeout=20)
    return redis.Redis(connection_pool=pool)


@cache
def job_store() -> JobStore:
    return open_job_store(storage(), redis=redis_client(), lock_dir=settings().data_dir / "locks",
                          lease_s=3 * settings().heartbeat_s)


@cache
def face_pipeline():
    from pipeline.detect import FaceDetector
    from pipeline.face_resnet import ACCURATE, PLAIN, FaceResNetEmbedder
    from pipeline.faces import FacePipeline

    config = settings()
    device = config.device or None
    crops = ACCURATE if config.accurate_faces else PLAIN
    return FacePipeline(FaceDetector(batch_size=config.detect_batch, device=device),
                        FaceResNetEmbedder(config.cache_dir, batch_size=config.embed_batch, mirror=config.mirror_faces,
                                           crops=crops, device=device),
                        batch_size=config.photo_batch, decode_processes=config.decode_processes)


_models: OrderedDict = OrderedDict()


def model(name: str, version: str):
    """A published model version, loaded once and kept while recently used."""
    from pipeline.recognize import load_model

    key = (name, version)
    if key not in _models:
        _models[key] = load_model(storage(), name, version)
        while len(_models) > MODELS_KEPT:
            _models.popitem(last=False)
    _models.move_to_end(key)
    return _models[key]

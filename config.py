"""All configuration, read from environment variables.

With no REDIS_URL the system runs on its embedded default: a SQLite-backed Celery broker under
FACEREC_DATA_DIR, so several processes share one queue without any server.
With no S3_ENDPOINT_URL (and no S3_BUCKET) storage is a local directory under FACEREC_DATA_DIR.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def _env_int(name: str, default: int, minimum: int | None = None) -> int:
    raw = _env(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"environment variable {name} must be at least {minimum}, got {value}")
    return value


def _env_device(name: str) -> str:
    """A device as Keras names them ("gpu:0", "cpu:0"), or "" for the backend's choice."""
    device = _env(name).lower()
    if device and not re.fullmatch(r"(cpu|gpu|tpu)(:\d+)?", device):
        raise ValueError(f"environment variable {name} must be a device such as gpu:0 or cpu:0, got {device!r}")
    return device


def _env_float(name: str, default: float, above: float, below: float) -> float:
    raw = _env(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a number, got {raw!r}") from None
    if not above < value < below:
        raise ValueError(f"environment variable {name} must be between {above} and {below}, got {value}")
    return value


def _env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _env(name, default).lower()
    if value not in choices:
        raise ValueError(f"environment variable {name} must be one of {', '.join(choices)}, got {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    redis_url: str = ""
    s3_endpoint_url: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    s3_bucket: str = "facerec"
    s3_region: str = "us-east-1"
    api_keys: tuple[str, ...] = ()
    data_dir: Path = REPO_ROOT / "var"
    cache_dir: Path = REPO_ROOT / "var" / "cache"
    datasets_dir: Path = REPO_ROOT.parent / "shared" / "datasets"
    queue_gpu: str = "gpu"
    queue_default: str = "default"
    queue_interactive: str = "interactive"
    chunk_size: int = 256
    job_window: int = 4
    # Storage reads a process keeps in flight (Storage.get_many), and S3 connections to match.
    read_threads: int = 32
    worker_max_memory_mb: int = 8192
    task_max_retries: int = 3
    mirror_faces: bool = True
    accurate_faces: bool = False
    # Where and how large the face networks run: device "" is the backend's choice (its first GPU if
    # any); a GPU node wants large batches and decoding spread over its cores (README, GPU workers).
    device: str = ""
    photo_batch: int = 32
    detect_batch: int = 32
    embed_batch: int = 64
    decode_processes: int = 0
    # MTCNN's image pyramid: the smallest face looked for (pixels) and each level's size over the last's.
    min_face_size: int = 20
    pyramid_factor: float = 0.709
    # The face ResNet's arithmetic: "auto" is bfloat16 on a CPU that has it natively, float32 elsewhere.
    precision: str = "auto"
    heartbeat_s: int = 10
    job_stall_s: int = 60
    max_resumes: int = 3
    pool_take_s: int = 300
    training_time_limit_s: int = 6 * 3600
    visibility_timeout_s: int = 2 * 3600
    # Housekeeping (workers.housekeeping): how often, and how long what nobody reads after a while is kept
    # (0: for ever).
    housekeeping_s: int = 300
    interactive_ttl_s: int = 24 * 3600
    job_files_ttl_s: int = 0
    max_upload_mb: int = 2048
    secret_key: str = ""
    session_cookie_secure: bool = True
    session_idle_s: int = 2 * 3600
    session_max_s: int = 12 * 3600

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: Celery runs on the SQLite broker under data_dir."""
        return not self.redis_url

    @property
    def uses_s3(self) -> bool:
        return bool(self.s3_endpoint_url)

    @property
    def broker_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        # kombu's SQLAlchemy transport made safe for forked pools (workers/embedded_broker.py)
        return f"facerec-sqla+sqlite:///{self.data_dir / 'broker.sqlite'}"


def load_settings() -> Settings:
    """Read the settings from the environment (called anew by each process that needs them)."""
    data_dir = Path(_env("FACEREC_DATA_DIR") or REPO_ROOT / "var").resolve()
    return Settings(
        redis_url=_env("REDIS_URL"),
        s3_endpoint_url=_env("S3_ENDPOINT_URL"),
        s3_access_key_id=_env("S3_ACCESS_KEY_ID"),
        s3_secret_access_key=_env("S3_SECRET_ACCESS_KEY"),
        s3_bucket=_env("S3_BUCKET", "facerec"),
        s3_region=_env("S3_REGION", "us-east-1"),
        api_keys=tuple(k.strip() for k in _env("FACEREC_API_KEYS").split(",") if k.strip()),
        data_dir=data_dir,
        cache_dir=Path(_env("FACEREC_CACHE_DIR") or data_dir / "cache").resolve(),
        datasets_dir=Path(_env("FACEREC_DATASETS") or REPO_ROOT.parent / "shared" / "datasets").resolve(),
        queue_gpu=_env("FACEREC_QUEUE_GPU", "gpu"),
        queue_default=_env("FACEREC_QUEUE_DEFAULT", "default"),
        queue_interactive=_env("FACEREC_QUEUE_INTERACTIVE", "interactive"),
        chunk_size=_env_int("FACEREC_CHUNK_SIZE", 256, minimum=1),
        job_window=_env_int("FACEREC_JOB_WINDOW", 4, minimum=1),
        read_threads=_env_int("FACEREC_READ_THREADS", 32, minimum=1),
        worker_max_memory_mb=_env_int("FACEREC_WORKER_MAX_MEMORY_MB", 8192),
        task_max_retries=_env_int("FACEREC_TASK_MAX_RETRIES", 3),
        mirror_faces=_env("FACEREC_MIRROR_FACES", "1") not in ("0", "false", "no"),
        accurate_faces=_env("FACEREC_ACCURATE_FACES", "0") not in ("0", "false", "no"),
        device=_env_device("FACEREC_DEVICE"),
        photo_batch=_env_int("FACEREC_PHOTO_BATCH", 32, minimum=1),
        detect_batch=_env_int("FACEREC_DETECT_BATCH", 32, minimum=1),
        embed_batch=_env_int("FACEREC_EMBED_BATCH", 64, minimum=1),
        decode_processes=_env_int("FACEREC_DECODE_PROCESSES", 0, minimum=0),
        min_face_size=_env_int("FACEREC_MIN_FACE_SIZE", 20, minimum=12),
        pyramid_factor=_env_float("FACEREC_PYRAMID_FACTOR", 0.709, above=0.0, below=1.0),
        precision=_env_choice("FACEREC_PRECISION", "auto", ("auto", "float32", "bfloat16")),
        heartbeat_s=_env_int("FACEREC_HEARTBEAT_S", 10),
        job_stall_s=_env_int("FACEREC_JOB_STALL_S", 60),
        max_resumes=_env_int("FACEREC_MAX_RESUMES", 3),
        pool_take_s=_env_int("FACEREC_POOL_TAKE_S", 300, minimum=1),
        training_time_limit_s=_env_int("FACEREC_TRAINING_TIME_LIMIT_S", 6 * 3600),
        visibility_timeout_s=_env_int("FACEREC_VISIBILITY_TIMEOUT_S", 2 * 3600),
        housekeeping_s=_env_int("FACEREC_HOUSEKEEPING_S", 300, minimum=1),
        interactive_ttl_s=_env_int("FACEREC_INTERACTIVE_TTL_S", 24 * 3600, minimum=0),
        job_files_ttl_s=_env_int("FACEREC_JOB_FILES_TTL_S", 0, minimum=0),
        max_upload_mb=_env_int("FACEREC_MAX_UPLOAD_MB", 2048),
        secret_key=_env("FACEREC_SECRET_KEY"),
        session_cookie_secure=_env("FACEREC_SESSION_COOKIE_SECURE", "1") not in ("0", "false", "no"),
        session_idle_s=_env_int("FACEREC_SESSION_IDLE_S", 2 * 3600, minimum=1),
        session_max_s=_env_int("FACEREC_SESSION_MAX_S", 12 * 3600, minimum=1),
    )

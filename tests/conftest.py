"""Session fixtures shared by every test: the LFW photos, a real SeaweedFS S3, a real Redis, and
one face pipeline (loading TensorFlow and the models is slow, so it is built once per session).

No mocks: services that are not running are started with the scripts in infra/scripts/ and
stopped again at the end, but only when these fixtures started them.

Two tiers: a test that uses a service (Redis, S3, the running system) is marked `system` here; one that
starts a worker, the API, or an interpreter of its own that loads the networks says so itself
(@pytest.mark.system). `make test-fast` runs the rest (-m "not system"): the test process, and at most a
quick command such as `facerec` or `python -m workers.demo` run as a person would.
"""

from __future__ import annotations

import faulthandler
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow

import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import REPO_ROOT, load_settings

SCRIPTS = REPO_ROOT / "infra" / "scripts"

S3_ENDPOINT = "http://127.0.0.1:8333"
S3_ACCESS_KEY_ID = "facerec-dev"
S3_SECRET_ACCESS_KEY = "facerec-dev-secret"

# Separate databases let several test sessions run at once (each flushes its own at the start): under
# pytest-xdist, worker gwN takes the database N below FACEREC_TEST_REDIS_DB, so that no worker's processes
# take another's tasks.
REDIS_TEST_DB = int(os.environ.get("FACEREC_TEST_REDIS_DB", "15")) - int(
    os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))

# Seconds the test process may take to exit after the last test.
EXIT_WITHIN_S = 120


# Fixtures that need a service: a test using any of them, directly or through another fixture, is a system test.
SERVICE_FIXTURES = {"system", "seaweedfs", "s3_storage", "redis_url", "redis_scratch_url"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.system)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A thread still waiting after the last test (a pool's reader, a client's connection) keeps the
    interpreter from exiting, and CI would then run out its time in silence: past EXIT_WITHIN_S, print
    every thread's stack and exit with a failure."""
    faulthandler.dump_traceback_later(EXIT_WITHIN_S, exit=True, file=sys.__stderr__)


def _run_script(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPTS / name), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def _s3_answers(endpoint: str = S3_ENDPOINT) -> bool:
    """Whether anything answers HTTP on the endpoint (a 403 for an anonymous request counts)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        opener.open(endpoint + "/", timeout=2)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def lfw_dir() -> Path:
    """The LFW deep-funneled photos, one folder per person (read in place, never copied)."""
    path = load_settings().datasets_dir / "lfw-deepfunneled"
    if not path.is_dir() or not any(path.glob("*/*.jpg")):
        pytest.fail(f"LFW deep-funneled photos not found: looked in {path} "
                    "(set FACEREC_DATASETS to the folder that holds lfw-deepfunneled/)")
    return path


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real S3 server on 127.0.0.1:8333: the one already running, else a SeaweedFS started
    for this session (and stopped at its end)."""
    data_dir = None
    if not _s3_answers():
        data_dir = tmp_path_factory.mktemp("seaweedfs")
        started = _run_script("start-seaweedfs.sh", str(data_dir))
        if started.returncode != 0 or not _s3_answers():
            pytest.fail(f"could not start SeaweedFS on {S3_ENDPOINT} with infra/scripts/start-seaweedfs.sh:\n"
                        f"{started.stdout}{started.stderr}")
    try:
        yield {
            "endpoint_url": S3_ENDPOINT,
            "access_key_id": S3_ACCESS_KEY_ID,
            "secret_access_key": S3_SECRET_ACCESS_KEY,
        }
    finally:
        if data_dir is not None:
            _run_script("stop-seaweedfs.sh", str(data_dir))


@pytest.fixture
def s3_storage(seaweedfs: dict[str, str]):
    """An S3Storage on a fresh, uniquely named bucket; its objects (and the bucket) are removed afterwards."""
    from pipeline.storage import S3Storage

    storage = S3Storage(f"test-{uuid.uuid4().hex[:16]}", **seaweedfs)
    storage.ensure_bucket()
    yield storage
    for key in list(storage.list()):
        storage.delete(key)
    storage.client.delete_bucket(Bucket=storage.bucket)


def _redis_pings(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis URL on a database reserved for tests (/15, or FACEREC_TEST_REDIS_DB), flushed at the start
    of the session.

    Uses REDIS_URL's server (default 127.0.0.1:6379); if nothing answers there, starts one with
    infra/scripts/start-redis.sh and stops it again at the end.
    """
    import redis

    base = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    parts = urllib.parse.urlsplit(base)
    url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{REDIS_TEST_DB}", parts.query, ""))

    data_dir = None
    if not _redis_pings(url):
        data_dir = tmp_path_factory.mktemp("redis")
        port = str(parts.port or 6379)
        started = _run_script("start-redis.sh", str(data_dir), env={"REDIS_PORT": port})
        if not _redis_pings(url):
            pytest.fail(f"Redis does not answer at {base}, and infra/scripts/start-redis.sh did not "
                        f"bring one up:\n{started.stdout}{started.stderr}")
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    try:
        yield url
    finally:
        if data_dir is not None:
            _run_script("stop-redis.sh", str(data_dir), env={"REDIS_PORT": str(parts.port or 6379)})


@pytest.fixture
def redis_scratch_url(redis_url: str) -> Iterator[str]:
    """A Redis database of this test's own, emptied before and after: for tests that need a store with
    nothing else in it (the session's running system keeps its state in redis_url's database). Eight below
    the session's, one per pytest-xdist worker."""
    import redis

    parts = urllib.parse.urlsplit(redis_url)
    url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{REDIS_TEST_DB - 8}", parts.query, ""))
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def face_resnet_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder for the converted Keras weights, shared by the session (converting takes a few seconds)."""
    return tmp_path_factory.mktemp("face-resnet-cache")


@pytest.fixture(scope="session")
def face_pipeline(face_resnet_cache: Path):
    """One FacePipeline (MTCNN detector, dlib's ResNet in Keras) shared by the whole session."""
    from pipeline.detect import FaceDetector
    from pipeline.face_resnet import FaceResNetEmbedder
    from pipeline.faces import FacePipeline

    return FacePipeline(FaceDetector(), FaceResNetEmbedder(face_resnet_cache))


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory, redis_url: str, seaweedfs: dict[str, str]):
    """The whole system running for the session: API server and Celery workers on Redis and SeaweedFS."""
    from tests.system import running_system

    with running_system(tmp_path_factory, redis_url, seaweedfs) as running:
        yield running

"""Faults: workers killed mid-job, the broker restarted, the API restarted. In every case the job
ends within a bounded time, every input photo appears exactly once in its results, and chunks that
were finished before the fault are not computed again.

Each test runs its own processes (API and Celery workers, on the embedded default or on a Redis of
its own), with fast heartbeats so that a lost worker is noticed in seconds rather than a minute.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import requests

from infra.processes import Client, Processes, environment, free_port
from pipeline.storage import LocalStorage, S3Storage, Storage
from tests.disk import fill, small_disk
from tests.system import API_KEY, API_KEY_ENTRIES, REPO, upload_photos
from workers.jobs import timestamp

PEOPLE = ["Colin_Powell", "Donald_Rumsfeld", "Tony_Blair", "Gerhard_Schroeder"]
PHOTOS_PER_PERSON = 40  # 160 photos in chunks of 8: 20 chunk tasks, time to kill a worker among them
pytestmark = pytest.mark.system  # the API and workers as processes

JOB_END_S = 300  # a job must end within this, faults included
FAST_LIVENESS = {"FACEREC_HEARTBEAT_S": "1", "FACEREC_JOB_STALL_S": "6", "FACEREC_CHUNK_SIZE": "8",
                 "FACEREC_POOL_TAKE_S": "30"}


class Cluster(Processes):
    """The API and Celery workers of one configuration, to be killed and started again, and a client."""

    def __init__(self, env: dict[str, str], storage: Storage, logs: Path) -> None:
        super().__init__(env, logs)
        self.storage = storage
        self.port = free_port()
        self.client = Client(f"http://127.0.0.1:{self.port}", API_KEY)

    def start_node(self, name: str) -> None:
        """Start `api`, or a worker named worker-* serving every queue with one child."""
        if name == "api":
            self.start_api(port=self.port)
        else:
            self.start_worker(name, "interactive,gpu,default")

    def chunk_in_progress(self, job_id: str) -> bool:
        """Whether a worker holds the lease of one of the job's chunks whose predictions are not written yet (read
        without touching it: Redis keys, or the kernel's table of file locks on the embedded default). A chunk
        whose predictions are written still holds its lease while it counts itself done and sends the next: a
        worker killed then leaves nothing to recover."""
        if self.env.get("REDIS_URL"):
            client = redis.Redis.from_url(self.env["REDIS_URL"])
            leased = {key.decode().rsplit(":", 1)[1]
                      for key in client.keys(f"facerec:lease:{job_id}:facerec.recognize_chunk:*")}
        else:
            leases = Path(self.env["FACEREC_DATA_DIR"]) / "locks" / "leases"
            files = {(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino): path.name.rsplit(":", 1)[1]
                     for path in leases.glob(f"{job_id}-facerec.recognize_chunk:*") for st in [path.stat()]}
            # Lines read "1: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF", the device in hex (waiters
            # add a "->"). The device counts: the same inode number on another file system is another file.
            held = {(int(major, 16), int(minor, 16), int(inode)) for major, minor, inode
                    in re.findall(r" ([0-9a-f]+):([0-9a-f]+):(\d+) ", Path("/proc/locks").read_text())}
            leased = {index for lock, index in files.items() if lock in held}
        predictions = self.storage.list(f"jobs/{job_id}/predictions/")
        finished = {int(key.rsplit("/", 1)[1].split(".")[0]) for key in predictions}
        return any(int(index) not in finished for index in leased)

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.client.call(method, path, **kwargs)

    def job(self, job_id: str) -> dict:
        return self.client.job(job_id)

    def wait_until(self, job_id: str, predicate, what: str, timeout: float = JOB_END_S) -> dict:
        return self.client.wait_until(job_id, predicate, what, timeout, every=0.2)


def base_env(data_dir: Path) -> dict[str, str]:
    return environment(**FAST_LIVENESS, FACEREC_DATA_DIR=str(data_dir), FACEREC_API_KEYS=API_KEY_ENTRIES,
                       FACEREC_DATASETS=os.environ.get("FACEREC_DATASETS", str(REPO.parent / "shared" / "datasets")))


@contextmanager
def cluster(env: dict[str, str], storage: Storage, logs: Path, lfw_dir: Path) -> Iterator[Cluster]:
    """A running API and one worker, a centroid model trained on 4 people, and an inbox of 160 photos."""
    running = Cluster(env, storage, logs)
    try:
        running.start_node("api")
        running.start_node("worker")
        upload_photos(storage, lfw_dir, PEOPLE, "faults/people", 0, 5)
        upload_photos(storage, lfw_dir, PEOPLE, "faults/inbox", 5, 5 + PHOTOS_PER_PERSON, by_person=False)
        response = running.call("POST", "/jobs/training", json={
            "model": "faults", "dataset_prefix": "faults/people", "model_type": "centroid"})
        assert response.status_code == 202, response.text
        job = running.wait_until(response.json()["id"], lambda j: j["state"] in ("succeeded", "failed"),
                                 "the training job")
        assert job["state"] == "succeeded", job
        yield running
    finally:
        running.stop(timeout=0)
        print(running.all_logs(2500))


def submit_bulk_job(running: Cluster) -> str:
    response = running.call("POST", "/jobs/recognition", json={"model": "faults", "input_prefix": "faults/inbox"})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def finished_chunks(storage: Storage, job_id: str) -> dict[str, bytes]:
    return {key: storage.get(key) for key in storage.list(f"jobs/{job_id}/predictions/")}


def assert_every_photo_exactly_once(running: Cluster, job: dict) -> None:
    assert job["state"] == "succeeded", job
    lines = [json.loads(line) for line in running.storage.get(job["result"]["results"]).decode().splitlines()]
    inbox = sorted(running.storage.list("faults/inbox/"))
    assert sorted(r["key"] for r in lines) == inbox, "every input photo exactly once"
    assert not [r for r in lines if "error" in r]
    assert job["progress"] == {"done": len(inbox), "total": len(inbox)}


def kill_worker_midway_and_recover(running: Cluster, whole: bool) -> dict:
    """Run a bulk job, SIGKILL the worker when some chunks are done, start a new one; returns the ended job."""
    job_id = submit_bulk_job(running)
    running.wait_until(job_id, lambda j: j["progress"]["done"] >= 16 and running.chunk_in_progress(job_id),
                       "two chunks done and a third in progress", timeout=120)
    if whole:
        running.kill("worker")
    else:
        running.kill_children("worker")
    before = finished_chunks(running.storage, job_id)
    assert 0 < len(before) < 20, "killed midway"
    if whole:
        running.start_node("worker")
    job = running.wait_until(job_id, lambda j: j["state"] in ("succeeded", "failed", "cancelled"), "the job to end")
    assert_every_photo_exactly_once(running, job)
    after = finished_chunks(running.storage, job_id)
    assert {k: after[k] for k in before} == before, "chunks finished before the kill are kept as they were"
    return job


@pytest.fixture
def embedded(tmp_path, lfw_dir):
    env = base_env(tmp_path / "data")
    (tmp_path / "logs").mkdir()
    with cluster(env, LocalStorage(tmp_path / "data" / "storage"), tmp_path / "logs", lfw_dir) as running:
        yield running


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of this test's own, on a free port, that the test may restart (it keeps nothing on disk)."""
    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()
    scripts, env = REPO / "infra" / "scripts", {**os.environ, "REDIS_PORT": str(port)}

    def start():
        subprocess.run(["bash", scripts / "start-redis.sh", str(data)], env=env, check=True, capture_output=True)

    def stop():
        subprocess.run(["bash", scripts / "stop-redis.sh", str(data)], env=env, check=True, capture_output=True)

    start()
    yield {"url": f"redis://127.0.0.1:{port}/0", "start": start, "stop": stop}
    stop()


@pytest.fixture
def on_redis(tmp_path, lfw_dir, own_redis, seaweedfs):
    bucket = f"faults-{uuid.uuid4().hex[:12]}"
    storage = S3Storage(bucket, seaweedfs["endpoint_url"], seaweedfs["access_key_id"], seaweedfs["secret_access_key"])
    storage.ensure_bucket()
    env = {**base_env(tmp_path / "data"), "REDIS_URL": own_redis["url"], "S3_ENDPOINT_URL": seaweedfs["endpoint_url"],
           "S3_ACCESS_KEY_ID": seaweedfs["access_key_id"], "S3_SECRET_ACCESS_KEY": seaweedfs["secret_access_key"],
           "S3_BUCKET": bucket}
    (tmp_path / "logs").mkdir()
    with cluster(env, storage, tmp_path / "logs", lfw_dir) as running:
        running.redis = own_redis
        yield running
    for key in list(storage.list()):
        storage.delete(key)


def test_embedded_a_worker_killed_whole_midway_is_replaced_and_the_job_resumes(embedded):
    job = kill_worker_midway_and_recover(embedded, whole=True)
    assert job["recoveries"] and "worker lost" in job["recoveries"][0]["reason"]


def test_embedded_a_killed_worker_child_is_replaced_and_its_task_redelivered(embedded):
    kill_worker_midway_and_recover(embedded, whole=False)


def test_embedded_a_worker_whose_idle_child_was_killed_still_runs_jobs(embedded):
    """An idle pool child waits for its next task holding the lock of the pool's shared task queue (the
    embedded broker's worker uses billiard's blocking pool). Killed then, as the OOM killer may kill an
    idle child that holds the models, it takes the lock with it and no new child can ever take a task:
    the worker notices that its pool has stopped taking tasks and starts afresh."""
    embedded.kill_children("worker")  # idle: the training is done and no job runs
    job_id = submit_bulk_job(embedded)
    job = embedded.wait_until(job_id, lambda j: j["state"] in ("succeeded", "failed", "cancelled"), "the job to end")
    assert_every_photo_exactly_once(embedded, job)


def test_embedded_a_job_past_its_restarts_fails_saying_why_and_resumes_through_the_api(tmp_path, lfw_dir):
    env = {**base_env(tmp_path / "data"), "FACEREC_MAX_RESUMES": "0"}
    (tmp_path / "logs").mkdir()
    with cluster(env, LocalStorage(tmp_path / "data" / "storage"), tmp_path / "logs", lfw_dir) as running:
        job_id = submit_bulk_job(running)
        running.wait_until(job_id, lambda j: j["progress"]["done"] >= 16 and running.chunk_in_progress(job_id),
                           "two chunks done and a third in progress", timeout=120)
        running.kill("worker")
        running.start_node("worker")
        failed = running.wait_until(job_id, lambda j: j["state"] != "running", "the job to give up")
        assert failed["state"] == "failed" and "worker lost" in failed["error"]["message"]
        assert "/resume" in failed["error"]["message"]
        # The API restarts while a user polls: nothing is lost, the poll goes on.
        running.kill("api")
        running.start_node("api")
        resumed = running.call("POST", f"/jobs/{job_id}/resume")
        assert resumed.status_code == 202, resumed.text
        job = running.wait_until(job_id, lambda j: j["state"] in ("succeeded", "failed"), "the resumed job")
        assert_every_photo_exactly_once(running, job)


def test_embedded_a_disk_that_fills_mid_job_and_frees_again_leaves_the_worker_up_and_every_photo_once(tmp_path,
                                                                                                     lfw_dir):
    """The data disk fills while chunks run: the worker can write neither predictions nor the broker's
    bookkeeping. It stays up, takes nothing while the disk is full, and the job ends once space is freed
    (the chunk whose retry could not be queued is restarted by the watchdog)."""
    with small_disk(tmp_path / "disk", megabytes=48) as disk:
        # The converted weights (about 100 MB) live elsewhere: only the data fills up.
        env = {**base_env(disk / "data"), "FACEREC_CACHE_DIR": str(tmp_path / "cache")}
        (tmp_path / "logs").mkdir()
        with cluster(env, LocalStorage(disk / "data" / "storage"), tmp_path / "logs", lfw_dir) as running:
            job_id = submit_bulk_job(running)
            running.wait_until(job_id, lambda j: j["progress"]["done"] >= 16, "two chunks done", timeout=120)
            filler = fill(disk)
            time.sleep(15)
            assert running.running["worker"].poll() is None, "the worker survives a full disk"
            assert running.job(job_id)["state"] == "running", "the disk filled while the job ran"
            filler.unlink()
            job = running.wait_until(job_id, lambda j: j["state"] in ("succeeded", "failed", "cancelled"),
                                     "the job to end")
            assert_every_photo_exactly_once(running, job)
            assert running.running["worker"].poll() is None


def test_redis_a_worker_killed_whole_midway_is_replaced_and_the_job_resumes(on_redis):
    job = kill_worker_midway_and_recover(on_redis, whole=True)
    assert job["recoveries"], "the unacknowledged message waits hours for Redis to redeliver it: the watchdog acts"


def test_redis_restarted_mid_job_loses_the_queue_and_the_job_still_ends(on_redis):
    job_id = submit_bulk_job(on_redis)
    on_redis.wait_until(job_id, lambda j: j["progress"]["done"] >= 16, "two chunks done", timeout=120)
    on_redis.redis["stop"]()
    time.sleep(2)
    on_redis.redis["start"]()  # empty: the queued chunk messages and the job mirror are gone
    job = on_redis.wait_until(job_id, lambda j: j["state"] in ("succeeded", "failed", "cancelled"), "the job to end")
    assert_every_photo_exactly_once(on_redis, job)


@pytest.fixture
def own_seaweedfs(tmp_path, seaweedfs):
    """A SeaweedFS of this test's own, on a free port, that the test may stop and start again."""
    port, data = free_port(), tmp_path / "seaweedfs"
    scripts, env = REPO / "infra" / "scripts", {**os.environ, "SEAWEEDFS_S3_PORT": str(port)}

    def start():
        subprocess.run(["bash", scripts / "start-seaweedfs.sh", str(data)], env=env, check=True, capture_output=True)

    def stop():
        subprocess.run(["bash", scripts / "stop-seaweedfs.sh", str(data)], env=env, check=True, capture_output=True)

    start()
    yield {**seaweedfs, "endpoint_url": f"http://127.0.0.1:{port}", "start": start, "stop": stop}
    stop()


def test_seaweedfs_stopped_for_10_s_mid_job_and_the_job_still_ends(tmp_path, lfw_dir, own_seaweedfs):
    s3 = own_seaweedfs
    storage = S3Storage("faults", s3["endpoint_url"], s3["access_key_id"], s3["secret_access_key"])
    storage.ensure_bucket()
    env = {**base_env(tmp_path / "data"), "S3_ENDPOINT_URL": s3["endpoint_url"], "S3_BUCKET": "faults",
           "S3_ACCESS_KEY_ID": s3["access_key_id"], "S3_SECRET_ACCESS_KEY": s3["secret_access_key"]}
    (tmp_path / "logs").mkdir()
    with cluster(env, storage, tmp_path / "logs", lfw_dir) as running:
        job_id = submit_bulk_job(running)
        running.wait_until(job_id, lambda j: j["progress"]["done"] >= 8, "a chunk done", timeout=120)
        outage = time.time()
        s3["stop"]()
        time.sleep(10)
        s3["start"]()
        job = running.wait_until(job_id, lambda j: j["state"] in ("succeeded", "failed", "cancelled"),
                                 "the job to end")
        if job["state"] == "failed":  # allowed, if it says why and can be resumed
            assert "storage" in job["error"]["message"].lower() or "s3" in job["error"]["message"].lower(), job
            assert running.call("POST", f"/jobs/{job_id}/resume").status_code == 202
            job = running.wait_until(job_id, lambda j: j["state"] in ("succeeded", "failed"), "the resumed job")
        assert_every_photo_exactly_once(running, job)
        assert timestamp(job["finished_at"]) > outage + 10, "the outage struck while the job ran"


def test_a_training_longer_than_the_visibility_timeout_runs_once(tmp_path, lfw_dir, own_redis, seaweedfs):
    """Redis hands an unacknowledged message to another worker after the visibility timeout, while the
    first worker is still training: the second delivery finds the work's lease held and skips it."""
    bucket = f"faults-{uuid.uuid4().hex[:12]}"
    storage = S3Storage(bucket, seaweedfs["endpoint_url"], seaweedfs["access_key_id"], seaweedfs["secret_access_key"])
    storage.ensure_bucket()
    env = {**base_env(tmp_path / "data"), "REDIS_URL": own_redis["url"], "S3_ENDPOINT_URL": seaweedfs["endpoint_url"],
           "S3_ACCESS_KEY_ID": seaweedfs["access_key_id"], "S3_SECRET_ACCESS_KEY": seaweedfs["secret_access_key"],
           "S3_BUCKET": bucket, "FACEREC_VISIBILITY_TIMEOUT_S": "4"}
    (tmp_path / "logs").mkdir()
    with cluster(env, storage, tmp_path / "logs", lfw_dir) as running:
        running.start_node("second-worker")
        # Fine-tuning the ResNet's last blocks takes far longer than 4 s on a CPU.
        response = running.call("POST", "/jobs/training", json={
            "model": "long", "dataset_prefix": "faults/people", "model_type": "finetune",
            "model_params": {"epochs": 4, "patience": 4}})
        assert response.status_code == 202, response.text
        job = running.wait_until(response.json()["id"], lambda j: j["state"] in ("succeeded", "failed"), "training")
        assert job["state"] == "succeeded", job
        versions = running.call("GET", "/models/long").json()["versions"]
        assert [v["version"] for v in versions] == [job["result"]["version"]], "trained once, published once"
        logs = "".join(log.read_text(errors="replace") for log in (tmp_path / "logs").glob("*worker*.log"))
        assert "running elsewhere: this delivery skips it" in logs, "Redis redelivered the message meanwhile"
    for key in list(storage.list()):
        storage.delete(key)

"""Load: job-status polls and small submits against the real system while a bulk job runs.

    python -m bench.load [--seconds 30] [--pollers 200] [--submitters 20] [--bulk-photos 300]

Starts the system as processes (infra.processes): the API (gunicorn when installed, else
`flask run`, threaded), one Celery worker for queue gpu and one for queue default, on Redis database 11
(flushed at the start and the end) and a fresh SeaweedFS bucket (deleted at the end). Trains a small
centroid model through the API (3 LFW people x 6 photos), submits a bulk recognition job over
--bulk-photos other LFW photos (the trained people's, then strangers') and, once it runs, for
--seconds (and at most --max-polls per poller):
- --pollers clients, each a thread with its own requests.Session, GET /v1/jobs/<bulk id> in a loop,
  one poll every --poll-interval seconds (0: back to back);
- --submitters clients each submit --jobs-per-submitter small recognition jobs of --photos-per-job
  photos, spread evenly over the window.
Every request is timed. `errors`: answers other than 2xx and exceptions (timeouts, refused or reset
connections), counted by kind. Afterwards every accepted job (202) and the bulk job must reach a final
state within --drain-s seconds and be known to GET /v1/jobs/<id>; those that are not are `jobs_lost`.
Jobs that end failed or cancelled, or succeed with fewer photos than they were given, are counted too,
and so are job records in storage that no client was given an id for (a submit answered 5xx after
recording its job).
Loopback only; everything started is stopped, also on failure or Ctrl-C.
The last line printed is the JSON written to bench/results/load.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from bench.lfw import upload_photos
from bench.machine import cpu_model, machine_info
from bench.system import API_KEY, S3, BenchSystem, system_env
from config import load_settings
from infra.processes import wait_for
from pipeline.storage import S3Storage
from workers.jobs import TERMINAL, timestamp

RESULTS = Path(__file__).resolve().parent / "results" / "load.json"
REDIS_URL = "redis://127.0.0.1:6379/11"  # a database of its own, flushed at the start and the end
TRAIN_PEOPLE = ["George_W_Bush", "Colin_Powell", "Tony_Blair"]
TRAIN_PHOTOS = 6  # per person, photos 0..5
SMALL_PEOPLE = ["Donald_Rumsfeld", "Gerhard_Schroeder"]  # the small jobs' photos, not in the bulk job
REQUEST_TIMEOUT_S = 30
TRAINING_TIMEOUT_S = 900


def bulk_photos(lfw: Path, count: int) -> list[Path]:
    """The bulk job's photos: the trained people's other photos first, then other people's (strangers),
    people with the most photos first; never a training photo or one of the small jobs' people."""
    people = sorted((p for p in lfw.iterdir() if p.is_dir() and p.name not in SMALL_PEOPLE),
                    key=lambda p: (p.name not in TRAIN_PEOPLE, -len(list(p.glob("*.jpg"))), p.name))
    chosen: list[Path] = []
    for person in people:
        photos = sorted(person.glob("*.jpg"))
        chosen += photos[TRAIN_PHOTOS:] if person.name in TRAIN_PEOPLE else photos
        if len(chosen) >= count:
            break
    return chosen[:count]


def put_photos(storage: S3Storage, paths: list[Path], prefix: str) -> dict[str, str]:
    """Copy photos into storage under prefix, several at a time; returns key -> person."""
    keys = {f"{prefix}/{path.name}": path for path in paths}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: storage.put(item[0], item[1].read_bytes()), keys.items()))
    return {key: path.parent.name for key, path in keys.items()}


def percentile_ms(seconds: list[float], q: float) -> float | None:
    return round(float(np.percentile(seconds, q)) * 1000, 1) if seconds else None


class Recorder:
    """Latencies and errors of one kind of request, from many threads (appends are atomic under the GIL)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.lock = threading.Lock()

    def error(self, kind: str, detail: str) -> None:
        with self.lock:
            self.errors[kind] += 1
            self.examples.setdefault(kind, detail[:300])


def poller(base: str, job_id: str, stop: threading.Event, deadline: float, interval: float, max_polls: int,
           record: Recorder) -> None:
    session = requests.Session()
    session.headers["X-API-Key"] = API_KEY
    url = f"{base}/jobs/{job_id}"
    time.sleep(random.uniform(0, interval or 0.2))  # spread the clients over the interval
    next_at = time.monotonic()
    for _ in range(max_polls):
        if stop.is_set() or time.monotonic() >= deadline:
            break
        started = time.perf_counter()
        try:
            response = session.get(url, timeout=REQUEST_TIMEOUT_S)
            elapsed = time.perf_counter() - started
            if 200 <= response.status_code < 300:
                response.json()
                record.latencies.append(elapsed)
            else:
                record.error(f"status GET {response.status_code}", response.text)
        except (requests.RequestException, ValueError) as err:
            record.error(f"status GET {type(err).__name__}", str(err))
        next_at += interval
        pause = next_at - time.monotonic()
        if pause > 0:
            stop.wait(pause)
        else:
            next_at = time.monotonic()  # behind: poll again at once, do not catch up in a burst
    session.close()


def submitter(base: str, index: int, clients: int, prefixes: list[str], jobs: int, window_s: float,
              started: float, stop: threading.Event, record: Recorder, accepted: list[dict]) -> None:
    session = requests.Session()
    session.headers["X-API-Key"] = API_KEY
    spacing = window_s / jobs
    for k in range(jobs):
        # Job k of every client falls in slot k of the window, the clients staggered within it.
        at = started + spacing * (k + (index + 0.5) / clients)
        if stop.wait(max(0.0, at - time.monotonic())):
            break
        prefix = prefixes[(index * jobs + k) % len(prefixes)]
        t0 = time.perf_counter()
        try:
            response = session.post(f"{base}/jobs/recognition", json={"model": "load", "input_prefix": prefix},
                                    timeout=REQUEST_TIMEOUT_S)
            elapsed = time.perf_counter() - t0
            if response.status_code == 202:
                record.latencies.append(elapsed)
                accepted.append({"id": response.json()["id"], "prefix": prefix})
            else:
                record.error(f"submit POST {response.status_code}", response.text)
        except (requests.RequestException, ValueError, KeyError) as err:
            record.error(f"submit POST {type(err).__name__}", str(err))
    session.close()


def drain(system: BenchSystem, expected: dict[str, int], deadline_s: float) -> dict[str, dict | None]:
    """Poll each job until it is final or the deadline passes; the last record seen of each (None: unknown)."""
    last: dict[str, dict | None] = {job_id: None for job_id in expected}
    pending = set(expected)
    deadline = time.monotonic() + deadline_s
    while pending and time.monotonic() < deadline:
        for job_id in sorted(pending):
            try:
                response = system.call("GET", f"/jobs/{job_id}")
            except requests.RequestException:
                continue
            if response.status_code == 404:
                last[job_id] = None
                pending.discard(job_id)  # unknown to the API: lost, no point waiting
                continue
            if response.ok:
                last[job_id] = response.json()
                if last[job_id]["state"] in TERMINAL:
                    pending.discard(job_id)
        if pending:
            time.sleep(2)
    return last


def interrupted(signum, frame) -> None:
    """SIGTERM stops the benchmark as Ctrl-C does, so that everything it started is stopped too."""
    raise KeyboardInterrupt


def delete_bucket(storage: S3Storage) -> None:
    keys = list(storage.list())
    for start in range(0, len(keys), 1000):
        storage.client.delete_objects(Bucket=storage.bucket, Delete={
            "Objects": [{"Key": key} for key in keys[start:start + 1000]], "Quiet": True})
    storage.client.delete_bucket(Bucket=storage.bucket)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30, help="length of the load window")
    parser.add_argument("--pollers", type=int, default=200, help="clients polling the bulk job's status")
    parser.add_argument("--poll-interval", type=float, default=0.5,
                        help="seconds from one poll of a client to its next (0: back to back)")
    parser.add_argument("--max-polls", type=int, default=10_000, help="most polls per client")
    parser.add_argument("--submitters", type=int, default=20, help="clients submitting small jobs")
    parser.add_argument("--jobs-per-submitter", type=int, default=3)
    parser.add_argument("--photos-per-job", type=int, default=2)
    parser.add_argument("--bulk-photos", type=int, default=1200,
                        help="photos in the bulk job: enough to keep it running through the window")
    parser.add_argument("--chunk-size", type=int, default=32, help="FACEREC_CHUNK_SIZE of the workers")
    parser.add_argument("--drain-s", type=float, default=900,
                        help="how long every job may take to end after the load stops")
    parser.add_argument("--server", choices=["auto", "flask", "gunicorn"], default="auto",
                        help="the API's server; auto: gunicorn if installed, else flask run")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.pollers < 0 or args.submitters < 0 or args.jobs_per_submitter < 1:
        parser.error("--seconds must be positive, clients not negative, --jobs-per-submitter at least 1")

    server = args.server
    if server == "auto":
        server = "gunicorn" if importlib.util.find_spec("gunicorn") else "flask"
    lfw = load_settings().datasets_dir / "lfw-deepfunneled"
    if not lfw.is_dir():
        print(f"LFW not found in {lfw}: run `make data` or set FACEREC_DATASETS", file=sys.stderr)
        return 2
    bulk_paths = bulk_photos(lfw, args.bulk_photos)
    if len(bulk_paths) < args.bulk_photos:
        parser.error(f"--bulk-photos: LFW has {len(bulk_paths)} photos to offer")

    bench_started = time.perf_counter()
    import redis

    load_at_start = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}; load average at start {load_at_start:.1f}", flush=True)
    redis_client = redis.Redis.from_url(REDIS_URL)
    redis_client.flushdb()
    bucket = f"load-{uuid.uuid4().hex[:12]}"
    storage = S3Storage(bucket, **S3)
    storage.ensure_bucket()
    work = Path(tempfile.mkdtemp(prefix="facerec-load-"))
    logs = work / "logs"
    logs.mkdir()
    env = system_env(REDIS_URL, bucket, work / "data", FACEREC_CHUNK_SIZE=str(args.chunk_size))
    system = BenchSystem(env, logs, server, name="load")
    stop = threading.Event()
    previous_sigterm = signal.signal(signal.SIGTERM, interrupted)
    failed = True
    try:
        print(f"starting the API ({server}) and two workers on {REDIS_URL} and bucket {bucket}; logs in {logs}",
              flush=True)
        system.start_all()
        upload_photos(storage, lfw, TRAIN_PEOPLE, "load/people", 0, TRAIN_PHOTOS)
        bulk_keys = put_photos(storage, bulk_paths, "load/inbox")
        prefixes = []
        small_photos = [p for person in SMALL_PEOPLE for p in sorted((lfw / person).glob("*.jpg"))]
        for i in range(max(1, args.submitters)):
            prefix = f"load/small/{i:03d}"
            for n in range(args.photos_per_job):
                path = small_photos[(i * args.photos_per_job + n) % len(small_photos)]
                storage.put(f"{prefix}/{path.name}", path.read_bytes())
            prefixes.append(prefix)

        print(f"training job: centroid model `load` on {len(TRAIN_PEOPLE)} people x {TRAIN_PHOTOS} photos ...",
              flush=True)
        t0 = time.perf_counter()
        response = system.call("POST", "/jobs/training", json={
            "model": "load", "dataset_prefix": "load/people", "model_type": "centroid"})
        if response.status_code != 202:
            raise RuntimeError(f"training submit: {response.status_code} {response.text}")
        training_id = response.json()["id"]
        job = wait_for(lambda: (lambda j: j if j["state"] in TERMINAL else None)(
            system.call("GET", f"/jobs/{training_id}").json()), TRAINING_TIMEOUT_S, "the training job")
        if job["state"] != "succeeded":
            raise RuntimeError(f"training job {job['state']}: {job.get('error')}")
        print(f"training job succeeded in {time.perf_counter() - t0:.1f} s", flush=True)

        response = system.call("POST", "/jobs/recognition", json={"model": "load", "input_prefix": "load/inbox"})
        if response.status_code != 202:
            raise RuntimeError(f"bulk submit: {response.status_code} {response.text}")
        bulk_id = response.json()["id"]
        print(f"bulk job {bulk_id}: {len(bulk_keys)} photos in chunks of {args.chunk_size}; waiting for it to run",
              flush=True)
        wait_for(lambda: system.call("GET", f"/jobs/{bulk_id}").json()["state"] != "queued", 120,
                 "the bulk job to start")

        polls, submits = Recorder(), Recorder()
        accepted: list[dict] = []
        print(f"load: {args.pollers} pollers (every {args.poll_interval} s), {args.submitters} submitters x "
              f"{args.jobs_per_submitter} jobs of {args.photos_per_job} photos, for {args.seconds:.0f} s",
              flush=True)
        load_started = time.monotonic()
        deadline = load_started + args.seconds
        threads = [threading.Thread(target=poller, daemon=True, name=f"poller-{i}",
                                    args=(system.base, bulk_id, stop, deadline, args.poll_interval,
                                          args.max_polls, polls))
                   for i in range(args.pollers)]
        threads += [threading.Thread(target=submitter, daemon=True, name=f"submitter-{i}",
                                     args=(system.base, i, args.submitters, prefixes, args.jobs_per_submitter,
                                           args.seconds, load_started, stop, submits, accepted))
                    for i in range(args.submitters)]
        for thread in threads:
            thread.start()
        bulk_states = Counter()  # what the bulk job was, sampled once a second through the window
        bulk_done = []  # its photos done at each sample
        while time.monotonic() < deadline:
            time.sleep(max(0.0, min(1.0, deadline - time.monotonic())))
            try:
                sample = system.call("GET", f"/jobs/{bulk_id}").json()
                bulk_states[sample["state"]] += 1
                bulk_done.append(sample["progress"]["done"])
            except (requests.RequestException, ValueError, KeyError):
                bulk_states["(no answer)"] += 1
        stop.set()
        for thread in threads:
            thread.join(REQUEST_TIMEOUT_S + 5)
        load_s = time.monotonic() - load_started
        stragglers = sum(thread.is_alive() for thread in threads)
        print(f"load stopped after {load_s:.1f} s ({stragglers} clients still in a request); bulk job states "
              f"seen once a second: {dict(bulk_states)}", flush=True)

        expected = {bulk_id: len(bulk_keys), **{job["id"]: args.photos_per_job for job in accepted}}
        print(f"waiting up to {args.drain_s:.0f} s for the bulk job and {len(accepted)} small jobs to end ...",
              flush=True)
        drain_started = time.perf_counter()
        final = drain(system, expected, args.drain_s)
        drain_s = time.perf_counter() - drain_started
        lost = {job_id: (job["state"] if job else "unknown to the API") for job_id, job in final.items()
                if job is None or job["state"] not in TERMINAL}
        not_succeeded = {job_id: f"{job['state']}: {(job.get('error') or {}).get('message', '')}"[:200]
                         for job_id, job in final.items() if job and job["state"] in ("failed", "cancelled")}
        short = {job_id: f"{job['result'].get('images')} of {expected[job_id]} photos"
                 for job_id, job in final.items()
                 if job and job["state"] == "succeeded" and (job.get("result") or {}).get("images") != expected[job_id]}
        bulk = final[bulk_id]
        # Job records in storage that no client was given (a submit answered 5xx after writing its record).
        known = {training_id, *expected}
        unacknowledged = {}
        for key in storage.list("jobs/"):
            if key.endswith("/job.json") and key.count("/") == 2 and key.split("/")[1] not in known:
                unacknowledged[key.split("/")[1]] = storage.get_json(key)["state"]
        bulk_s = (timestamp(bulk["finished_at"]) - timestamp(bulk["created_at"])
                  if bulk and bulk.get("finished_at") else None)  # whole seconds, as the record keeps them
        if bulk_states.get("running", 0) < sum(bulk_states.values()):
            print(f"note: the bulk job was not running through the whole window (states seen: {dict(bulk_states)}); "
                  "more --bulk-photos keep it busy longer", flush=True)

        errors = polls.errors + submits.errors
        figures = {
            "status_p50_ms": percentile_ms(polls.latencies, 50),
            "status_p99_ms": percentile_ms(polls.latencies, 99),
            "submit_p99_ms": percentile_ms(submits.latencies, 99),
            "errors": sum(errors.values()),
            "jobs_lost": len(lost),
            "status_p90_ms": percentile_ms(polls.latencies, 90),
            "status_max_ms": percentile_ms(polls.latencies, 100),
            "submit_p50_ms": percentile_ms(submits.latencies, 50),
            "submit_max_ms": percentile_ms(submits.latencies, 100),
            "status_requests": len(polls.latencies),
            "status_per_s": round(len(polls.latencies) / load_s, 1),
            "submits_accepted": len(submits.latencies),
            "submits_per_s": round(len(submits.latencies) / load_s, 2),
            "errors_by_kind": dict(errors),
            "jobs_failed": len(not_succeeded),
            "jobs_short_of_photos": len(short),
            "jobs_unacknowledged": len(unacknowledged),
            "bulk_photos": len(bulk_keys),
            "bulk_faces": bulk["result"].get("faces") if bulk and bulk.get("result") else None,
            "bulk_photo_errors": bulk["result"].get("errors") if bulk and bulk.get("result") else None,
            "bulk_state": bulk["state"] if bulk else None,
            "bulk_states_during_load": dict(bulk_states),
            "bulk_photos_done_during_load": (bulk_done[-1] - bulk_done[0]) if bulk_done else None,
            "bulk_s": bulk_s,
            "drain_s": round(drain_s, 1),
            "pollers": args.pollers,
            "poll_interval_s": args.poll_interval,
            "submitters": args.submitters,
            "jobs_per_submitter": args.jobs_per_submitter,
            "photos_per_job": args.photos_per_job,
            "load_s": round(load_s, 1),
            "server": server,
            **machine_info(load_at_start),
            "bench_s": round(time.perf_counter() - bench_started, 1),
        }

        print(f"status GET:  {figures['status_requests']} answered, {figures['status_per_s']}/s "
              f"(offered about {args.pollers / args.poll_interval:.0f}/s)" if args.poll_interval else
              f"status GET:  {figures['status_requests']} answered, {figures['status_per_s']}/s (back to back)")
        print(f"             p50 {figures['status_p50_ms']} ms, p90 {figures['status_p90_ms']} ms, "
              f"p99 {figures['status_p99_ms']} ms, max {figures['status_max_ms']} ms")
        print(f"submit POST: {figures['submits_accepted']} accepted, p50 {figures['submit_p50_ms']} ms, "
              f"p99 {figures['submit_p99_ms']} ms, max {figures['submit_max_ms']} ms")
        print(f"errors: {figures['errors']}")
        for kind, count in sorted(errors.items()):
            example = (polls.examples | submits.examples)[kind]
            print(f"  {count:6d} x {kind}: {example}")
        print(f"jobs: bulk {figures['bulk_state']} ({len(bulk_keys)} photos"
              + (f", {bulk_s:.0f} s from submit to end" if bulk_s is not None else "")
              + (f", {figures['bulk_faces']} faces, {figures['bulk_photo_errors']} photo errors"
                 if figures["bulk_faces"] is not None else "") + f"); "
              f"{len(accepted)} small jobs; all ended within {drain_s:.0f} s of the load's end: {not lost}")
        for job_id, what in lost.items():
            print(f"  lost: {job_id} ({what})")
        for job_id, what in not_succeeded.items():
            print(f"  not succeeded: {job_id} {what}")
        for job_id, what in short.items():
            print(f"  short of photos: {job_id} {what}")
        for job_id, state in unacknowledged.items():
            print(f"  recorded but never acknowledged to its client: {job_id} ({state})")
        if figures["errors"] or lost or not_succeeded or short or unacknowledged:
            print(f"logs kept in {logs}")
        print(f"bench wall time: {figures['bench_s']:.0f} s")

        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(figures)
        RESULTS.write_text(line + "\n")
        print(line)
        failed = bool(figures["errors"] or lost or not_succeeded or short or unacknowledged)
        return 1 if failed else 0
    except KeyboardInterrupt:
        print("interrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        stop.set()
        signal.signal(signal.SIGTERM, previous_sigterm)
        system.stop()
        if failed:
            print(system.all_logs(1500), file=sys.stderr)
        try:
            delete_bucket(storage)
        except Exception as err:  # keep going: the rest must be cleaned up as well
            print(f"could not delete bucket {bucket}: {err}", file=sys.stderr)
        try:
            redis_client.flushdb()
            redis_client.close()
        except redis.RedisError as err:
            print(f"could not flush {REDIS_URL}: {err}", file=sys.stderr)
        shutil.rmtree(work / "data", ignore_errors=True)
        if not failed:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""The main job, end to end: train on LFW, bulk-recognise held-out photos, print where everything is.

    python -m workers.demo [--min-photos 20] [--holdout 0.2]

Takes the LFW people with at least --min-photos photos from the shared datasets folder, copies them
into storage (a training prefix with one folder per person, and an inbox of held-out photos),
starts a Celery worker unless --no-worker, and submits both jobs through the same path as the API.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from tqdm import tqdm

from config import load_settings
from infra.processes import Processes
from pipeline.dataset import Item, stratified_split
from workers.jobs import SUCCEEDED, TERMINAL, JobStore
from workers.runtime import Runtime
from workers.schemas import RecognitionRequest, TrainingRequest
from workers.submit import submit_recognition, submit_training

LFW_HOME = "http://vis-www.cs.umass.edu/lfw/"


def lfw_people(lfw: Path, min_photos: int) -> list[Item]:
    items = []
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.jpg"))
        if len(photos) >= min_photos:
            items.extend(Item(str(photo), person.name) for photo in photos)
    return items


def copy_into_storage(storage, items: list[Item], prefix: str, by_person: bool) -> dict[str, str]:
    """Copy photos into storage (skipping those already there); returns storage key -> person."""
    keys = {}
    for item in tqdm(items, desc=f"copying to {prefix}", unit="photo", leave=False):
        name = Path(item.key).name
        key = f"{prefix}/{item.label}/{name}" if by_person else f"{prefix}/{name}"
        if not storage.exists(key):
            storage.put(key, Path(item.key).read_bytes())
        keys[key] = item.label
    return keys


# What a stage's progress counts; the others count photos.
STAGE_UNITS = {"fitting": "epoch"}


def wait(jobs: JobStore, job: dict, description: str) -> dict:
    """Poll a job until it finishes, showing its progress in its stage's unit."""
    with tqdm(desc=description, unit="photo") as bar:
        while True:
            job = jobs.get(job["id"])
            progress, stage = job["progress"], job["progress"].get("stage")
            if stage and job["state"] not in TERMINAL:
                bar.set_description(f"{description}: {stage}")
                bar.unit = STAGE_UNITS.get(stage, "photo")
            if progress["total"]:
                bar.total = progress["total"]
                bar.n = progress["done"]
                bar.refresh()
            if job["state"] in TERMINAL:
                bar.set_description(f"{description}: {job['state']}")
                return job
            time.sleep(1)


def start_worker(runtime: Runtime) -> Processes:
    """A worker for every queue, in this process's environment (its settings are the demo's); its log is
    under the data folder's logs/."""
    settings = runtime.settings
    processes = Processes(dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), settings.data_dir / "logs")
    # Single photos from the web page first, then training and bulk chunks, then the rest.
    processes.start_worker("demo-worker", f"{settings.queue_interactive},{settings.queue_gpu},{settings.queue_default}")
    return processes


WEB_HOST, WEB_PORT = "127.0.0.1", 8000


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((WEB_HOST, port))
        except OSError:
            return False
    return True


def serve_web(runtime: Runtime, no_worker: bool, port: int = WEB_PORT) -> int:
    """The API and its web pages on loopback, for the data the demo left, with a fresh admin key."""
    from api import create_app
    from api.keys import config_entry, new_key

    if not port_free(port):  # say so before printing a key that would never work
        print(f"port {port} on {WEB_HOST} is taken (another `make web`?): choose another, e.g. "
              f"make web PORT={port + 1}", file=sys.stderr)
        return 2
    key = new_key()
    entries = [config_entry("demo", "admin", key)]
    entries += [e for e in os.environ.get("FACEREC_API_KEYS", "").split(",") if e.strip()]
    print(f"log in at http://{WEB_HOST}:{port}/login with this API key (shown once, valid while this runs):\n"
          f"    {key}\nthe CLI:  FACEREC_API_URL=http://{WEB_HOST}:{port} FACEREC_API_KEY=<the key> facerec --help",
          flush=True)
    worker = None if no_worker else start_worker(runtime)
    try:
        create_app(runtime.settings, entries).run(host=WEB_HOST, port=port, threaded=True)
    finally:
        if worker is not None:
            worker.stop(timeout=60)
    return 0


def bulk_accuracy(storage, results_key: str, truth: dict[str, str], answer: str = "identity") -> float:
    """Share of photos whose subject (main face) was named as the right person. answer="identity"
    counts `unknown` as wrong; answer="best_guess" scores the closed-set answer (the best person)."""
    correct = 0
    for line in storage.get(results_key).decode().splitlines():
        result = json.loads(line)
        if result.get("main_face") is not None:
            correct += result["faces"][result["main_face"]][answer] == truth[result["key"]]
    return correct / len(truth)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-photos", type=int, default=20, help="people with at least this many photos")
    parser.add_argument("--holdout", type=float, default=0.2, help="share of each person's photos kept aside")
    parser.add_argument("--model", default="lfw")
    parser.add_argument("--no-worker", action="store_true", help="use workers that are already running")
    parser.add_argument("--web", action="store_true",
                        help=f"serve the web pages and the API on http://{WEB_HOST}:PORT/ with a worker, "
                             "printing a new admin key to log in with (Ctrl-C stops both)")
    parser.add_argument("--port", type=int, default=WEB_PORT, help=f"the port of --web (default {WEB_PORT})")
    args = parser.parse_args()
    # A SIGTERM (kill, a closed terminal's supervisor) ends the demo as Ctrl-C does: its worker, in a session
    # of its own, is stopped by the `finally` blocks instead of being left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runtime = Runtime(load_settings())
    if args.web:
        return serve_web(runtime, args.no_worker, args.port)

    settings = runtime.settings
    lfw = settings.datasets_dir / "lfw-deepfunneled"
    if not lfw.is_dir():
        print(f"LFW not found: looked in {lfw}.\nGet it with `make data` (needs internet; from {LFW_HOME}) "
              "or set FACEREC_DATASETS to the folder that holds lfw-deepfunneled/.", file=sys.stderr)
        return 2
    storage, jobs = runtime.storage, runtime.jobs
    print(f"storage: {storage.describe()}   broker: {'embedded (SQLite)' if settings.embedded else 'Redis'}")

    items = lfw_people(lfw, args.min_photos)
    train_items, aside, _ = stratified_split(items, args.holdout, seed=0)
    print(f"LFW people with at least {args.min_photos} photos: {len({i.label for i in items})} people, "
          f"{len(items)} photos; training on {len(train_items)}, {len(aside)} kept aside for the bulk job")
    dataset_prefix, inbox_prefix = f"datasets/lfw{args.min_photos}", f"inbox/lfw{args.min_photos}"
    copy_into_storage(storage, train_items, dataset_prefix, by_person=True)
    truth = copy_into_storage(storage, aside, inbox_prefix, by_person=False)

    worker = None if args.no_worker else start_worker(runtime)
    try:
        started = time.perf_counter()
        job, _ = submit_training(runtime, TrainingRequest(model=args.model, dataset_prefix=dataset_prefix))
        job = wait(jobs, job, "training")
        if job["state"] != SUCCEEDED:
            print(f"training job {job['id']} {job['state']}: {job['error']}", file=sys.stderr)
            return 1
        trained = job["result"]
        print(f"trained model {trained['model']} version {trained['version']} "
              f"in {time.perf_counter() - started:.0f} s")
        metrics = trained["metrics"]
        low, high = metrics["accuracy_interval"]
        print(f"evaluation on {metrics['images']} test photos (nothing was fitted or tuned on them): "
              f"accuracy {metrics['accuracy']:.4f} (95% interval {low:.4f}-{high:.4f}), "
              f"macro precision {metrics['macro_precision']:.4f}, recall {metrics['macro_recall']:.4f}, "
              f"F1 {metrics['macro_f1']:.4f}")

        started = time.perf_counter()
        job, _ = submit_recognition(runtime, RecognitionRequest(model=args.model, input_prefix=inbox_prefix))
        job = wait(jobs, job, "bulk recognition")
        if job["state"] != SUCCEEDED:
            print(f"recognition job {job['id']} {job['state']}: {job['error']}", file=sys.stderr)
            return 1
        result = job["result"]
        seconds = time.perf_counter() - started
        print(f"bulk job {job['id']}: {result['images']} photos in {seconds:.0f} s "
              f"({result['images'] / seconds:.1f} photos/s), {result['faces']} faces, "
              f"{result['unknown_faces']} unknown, {result['errors']} errors")
        print(f"bulk accuracy (main face named correctly): {bulk_accuracy(storage, result['results'], truth):.4f}")
        where = storage.describe()
        print(f"evaluation report: {where}/{trained['report_html']} (and report.json beside it)")
        print(f"predictions:       {where}/{result['results']}")
        print(f"summary:           {where}/{result['summary']}")
        print(f"web page:          http://{WEB_HOST}:{WEB_PORT}/   (start it with: make web, or "
              f"{sys.executable} -m workers.demo --web)")
        return 0
    finally:
        if worker is not None:
            worker.stop(timeout=60)


if __name__ == "__main__":
    sys.exit(main())

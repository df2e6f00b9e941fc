"""End to end on LFW: our training and bulk-recognition jobs against the face_recognition pipeline.

    python -m bench.e2e [--min-photos 20] [--limit-people N]

Takes the LFW people with at least --min-photos photos and keeps 20% of each person's photos aside,
as the demo does. Ours: a Celery worker on the embedded broker and local storage in a fresh temporary
data folder; a training job on the rest, then a recognition job over the photos kept aside, timed
from submit to success. Baseline, in the same run: the face_recognition pipeline (bench.baseline, one
process per core, as our TensorFlow uses every core) describes the same photos and a linear SVM is
fitted on the training descriptors.
Top-1 counts a photo as right only when its subject (detect.main_face's rule, for both pipelines)
is named as the right person; no face and errors count as wrong.
`ours_top1` scores our closed-set answer (the best person), as the baseline's SVM has no other;
`ours_top1_with_unknown` also counts our open-set `unknown` answers as wrong.
The last line printed is the JSON written to bench/results/e2e.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.svm import LinearSVC

from bench.baseline import BaselineEncoder
from bench.machine import machine_info
from config import load_settings
from pipeline.dataset import Item, stratified_split

HOLDOUT = 0.2  # the demo's split: stratified_split(items, 0.2, seed=0)
POLL_S = 0.2  # job polling interval; small next to the recognition job's wall time
RESULTS = Path(__file__).resolve().parent / "results" / "e2e.json"


def use_fresh_data_dir() -> Path:
    """Point this process and the worker it starts at an empty data folder on the embedded default.

    The worker it starts reads its settings from this environment.
    """
    # Converted model weights are one-off set-up, not per-job work: keep using the usual cache.
    os.environ.setdefault("FACEREC_CACHE_DIR", str(load_settings().cache_dir))
    data_dir = Path(tempfile.mkdtemp(prefix="facerec-e2e-"))
    os.environ["FACEREC_DATA_DIR"] = str(data_dir)
    # The benchmark is defined on the embedded broker and local storage, whatever this shell points at.
    for name in ("REDIS_URL", "S3_ENDPOINT_URL"):
        os.environ.pop(name, None)
    return data_dir


def wait_for(jobs, job: dict) -> dict:
    """Poll a job until it finishes (finer than the demo's one-second poll, since we time it)."""
    from workers.jobs import TERMINAL

    while job["state"] not in TERMINAL:
        time.sleep(POLL_S)
        job = jobs.get(job["id"])
    return job


def run_job(jobs, submit: Callable[[], tuple[dict, bool]]) -> tuple[dict, float]:
    """Submit a job and wait for its success: the finished job and its seconds from submit to success."""
    from workers.jobs import SUCCEEDED

    started = time.perf_counter()
    job = wait_for(jobs, submit()[0])
    seconds = time.perf_counter() - started
    if job["state"] != SUCCEEDED:
        raise RuntimeError(f"{job['type']} job {job['id']} {job['state']}: {job['error']}")
    return job, seconds


def run_ours(train_items: list[Item], aside: list[Item]) -> dict:
    """Train and bulk-recognise through the job system, as a user of the API would."""
    from workers.demo import bulk_accuracy, copy_into_storage, start_worker
    from workers.runtime import Runtime
    from workers.schemas import RecognitionRequest, TrainingRequest
    from workers.submit import submit_recognition, submit_training

    runtime = Runtime(load_settings())
    storage, jobs = runtime.storage, runtime.jobs
    # Start the worker first so that it boots while the photos are copied.
    worker = start_worker(runtime)
    try:
        copy_into_storage(storage, train_items, "datasets/e2e", by_person=True)
        truth = copy_into_storage(storage, aside, "inbox/e2e", by_person=False)

        print(f"ours: training job on {len(train_items)} photos ...", flush=True)
        _, training_s = run_job(jobs, lambda: submit_training(
            runtime, TrainingRequest(model="e2e", dataset_prefix="datasets/e2e")))
        print(f"ours: recognition job on {len(aside)} photos ...", flush=True)
        job, recognition_s = run_job(jobs, lambda: submit_recognition(
            runtime, RecognitionRequest(model="e2e", input_prefix="inbox/e2e")))
    finally:
        worker.stop(timeout=60)

    result = job["result"]
    summary = storage.get_json(result["summary"])
    return {
        "training_s": training_s,
        "recognition_s": recognition_s,
        # Closed set, like the baseline's SVM: the best person, even when the answer is `unknown`.
        "top1": bulk_accuracy(storage, result["results"], truth, answer="best_guess"),
        "top1_with_unknown": bulk_accuracy(storage, result["results"], truth),
        "no_face": summary["images_without_face"],
        "errors": summary["errors"],
        "stage_ms": summary["timings_ms"],
    }


def run_baseline(train_items: list[Item], aside: list[Item]) -> dict:
    """The face_recognition pipeline and a linear SVM on its descriptors, on the same split."""
    with BaselineEncoder() as encoder:
        print(f"baseline: describing {len(train_items)} training photos ...", flush=True)
        train = encoder.encode([item.key for item in train_items])
        print(f"baseline: describing {len(aside)} held-out photos ...", flush=True)
        held_out = encoder.encode([item.key for item in aside])

    faces = [(d, item.label) for d, item in zip(train.descriptors, train_items) if d is not None]
    classifier = LinearSVC().fit(np.stack([d for d, _ in faces]), [label for _, label in faces])

    # Prediction is part of recognising the held-out photos, so it counts towards their time.
    started = time.perf_counter()
    found = [(d, item.label) for d, item in zip(held_out.descriptors, aside) if d is not None]
    predicted = classifier.predict(np.stack([d for d, _ in found])) if found else []
    seconds = held_out.seconds + time.perf_counter() - started

    correct = sum(p == label for p, (_, label) in zip(predicted, found))  # no face: counted wrong
    return {
        "recognition_s": seconds,
        "top1": correct / len(aside),
        "no_face": held_out.no_face,
        "train_no_face": train.no_face,
        "train_images_per_s": train.images_per_s,
        "processes": encoder.processes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-photos", type=int, default=20, help="people with at least this many photos")
    parser.add_argument("--limit-people", type=int, help="only the first N of those people (quick runs)")
    args = parser.parse_args(argv)

    bench_started = time.perf_counter()
    data_dir = use_fresh_data_dir()
    from workers.demo import lfw_people

    lfw = load_settings().datasets_dir / "lfw-deepfunneled"
    if not lfw.is_dir():
        print(f"LFW not found in {lfw}: run `make data` or set FACEREC_DATASETS", file=sys.stderr)
        return 2
    items = lfw_people(lfw, args.min_photos)
    if args.limit_people:
        people = sorted({item.label for item in items})[:args.limit_people]
        items = [item for item in items if item.label in people]
    train_items, aside, _ = stratified_split(items, HOLDOUT, seed=0)
    people = len({item.label for item in items})
    print(f"LFW people with at least {args.min_photos} photos: {people} people, {len(items)} photos; "
          f"{len(train_items)} to train on, {len(aside)} held out")
    # Other work on the machine slows both sides; the load average says how busy it was.
    load_at_start = os.getloadavg()[0]
    print(f"load average at start: {load_at_start:.1f} on {os.cpu_count()} cores")

    try:
        ours = run_ours(train_items, aside)
    except Exception:
        print(f"ours failed; its data and worker log are kept in {data_dir}", file=sys.stderr)
        raise
    shutil.rmtree(data_dir, ignore_errors=True)
    baseline = run_baseline(train_items, aside)

    images = len(aside)
    figures = {
        "images": images,
        "train_images": len(train_items),
        "people": people,
        "ours_images_per_s": round(images / ours["recognition_s"], 2),
        "baseline_images_per_s": round(images / baseline["recognition_s"], 2),
        "speedup": round(baseline["recognition_s"] / ours["recognition_s"], 2),
        "ours_top1": round(ours["top1"], 4),
        "baseline_top1": round(baseline["top1"], 4),
        "ours_top1_with_unknown": round(ours["top1_with_unknown"], 4),
        "ours_training_s": round(ours["training_s"], 1),
        "ours_recognition_s": round(ours["recognition_s"], 2),
        "baseline_recognition_s": round(baseline["recognition_s"], 2),
        "ours_no_face": ours["no_face"],
        "ours_errors": ours["errors"],
        "baseline_no_face": baseline["no_face"],
        "baseline_train_no_face": baseline["train_no_face"],
        "ours_stage_ms": ours["stage_ms"],
        "baseline_processes": baseline["processes"],
        **machine_info(load_at_start),
        "bench_s": round(time.perf_counter() - bench_started, 1),
    }

    print(f"held-out photos:        {images} ({people} people; trained on {len(train_items)})")
    print(f"ours:     {figures['ours_images_per_s']:6.2f} images/s  top-1 {figures['ours_top1']:.4f} "
          f"(with `unknown` counted wrong: {figures['ours_top1_with_unknown']:.4f})  "
          f"({ours['recognition_s']:.1f} s submit to success, {ours['no_face']} without a face, "
          f"{ours['errors']} errors)")
    print(f"baseline: {figures['baseline_images_per_s']:6.2f} images/s  top-1 {figures['baseline_top1']:.4f}  "
          f"({baseline['recognition_s']:.1f} s with {baseline['processes']} processes, "
          f"{baseline['no_face']} without a face)")
    print(f"speedup (ours / baseline images/s): {figures['speedup']:.2f}x")
    print(f"ours training job: {figures['ours_training_s']:.1f} s submit to success; baseline described the "
          f"training photos at {baseline['train_images_per_s']:.2f} images/s "
          f"({baseline['train_no_face']} without a face)")
    stages = ", ".join(f"{stage} {ms / images:.1f}" for stage, ms in ours["stage_ms"].items())
    print(f"ours recognition stages, ms per photo: {stages}")
    print(f"bench wall time: {figures['bench_s']:.0f} s")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(figures)
    RESULTS.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

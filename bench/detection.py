"""Photos per second: our batched MTCNN against the `mtcnn` package's default per-photo call, on LFW.

Run as `python -m bench.detection [--count N]`. Both sides get the same decoded photos (decoding is
not timed) and are timed after a warm-up call. Ours runs at several batch sizes; the best counts.
Then the image pyramid's cost: ours at other smallest face sizes and scale factors (FACEREC_MIN_FACE_SIZE,
FACEREC_PYRAMID_FACTOR), with the faces each finds of the default's.
`host_ms_per_photo` is what a GPU worker's process does on its host core per photo, whatever the GPU:
detection at 128 photos a batch and the chips cut on the device (align.ChipCutter), under cProfile with
the thread's CPU time as its clock (a shared machine's other work does not count), less the time inside
TensorFlow's op and function calls; `host_ms` has it for the other ways in HOST_RUNS.
The package's candidates with equal scores are kept in the order they came, as ours
(package_with_stable_ties).
The last line printed is a JSON summary, also written to bench/results/detection.json.
The machine may be shared: compare the two sides of one run, not numbers across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from bench.machine import machine_info
from bench.output import publish
from config import load_settings
from pipeline.align import ChipCutter, align_faces
from pipeline.decode import decode_image
from pipeline.detect import SCALE_FACTOR, Face, FaceDetector

BATCH_SIZES = (16, 32, 64)
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "detection.json"
KEYPOINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# A face of ours and one of the package's are the same face when their boxes overlap this much.
MATCH_IOU = 0.5
# Photos on which the package's unrounded output (output_type="numpy") is compared too, untimed.
UNROUNDED_PHOTOS = 100
# (smallest face size, scale factor) of the pyramids timed beside the default (20, 0.709).
PYRAMIDS = ((40, SCALE_FACTOR), (80, SCALE_FACTOR), (20, 0.6), (20, 0.8))
# The calls inside which TensorFlow runs ops (eagerly or a compiled function's): not host work.
BACKEND_CALLS = ("TFE_Py_Execute", "TFE_Py_FastPathExecute")
# The host work per photo is timed as (name, detection batch, one graph call per batch, chips cut on the
# device): a GPU worker's (FACEREC_DETECT_BATCH=128 in docker-compose.yml and infra/k8s), the same at
# the CPU's default batch, the networks one by one with NumPy between (as under JAX, and as before
# issue 19's graph), and a CPU worker's (Pillow cuts the chips).
HOST_RUNS = (("gpu_worker", 128, True, True), ("batch_32", 32, True, True),
             ("numpy_stages", 128, False, True), ("pillow_chips", 128, True, False))


@contextlib.contextmanager
def package_with_stable_ties() -> Iterator[None]:
    """The `mtcnn` package with its candidates' equal scores kept in the order they came, as ours
    (detect._suppress_per_image). Its own NumPy sort is unstable, and its order for equal scores depends
    on the CPU's instructions, so that its faces differ from one CPU to another on about 1% of LFW photos."""
    from mtcnn.utils import bboxes

    def sort_by_scores(tensor: np.ndarray, scores: np.ndarray, ascending: bool = True) -> np.ndarray:
        return tensor[np.argsort(scores if ascending else -scores, kind="stable")]

    original = bboxes.sort_by_scores
    bboxes.sort_by_scores = sort_by_scores
    try:
        yield
    finally:
        bboxes.sort_by_scores = original


def lfw_photos(count: int) -> list[np.ndarray]:
    """`count` LFW photos spread across people: every k-th of the sorted list, decoded to RGB."""
    files = sorted((load_settings().datasets_dir / "lfw-deepfunneled").glob("*/*.jpg"))
    chosen = files[::max(1, len(files) // count)][:count]
    return [decode_image(path.read_bytes()) for path in chosen]


def timed(run: Callable[[], list]) -> tuple[list, float]:
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x, y, width, height) boxes."""
    width = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    intersection = width * height
    return intersection / (a[2] * a[3] + b[2] * b[3] - intersection)


def landmark_distances(ours: list[list[Face]], theirs: list[list[tuple[np.ndarray, np.ndarray]]]) -> list[float]:
    """Mean distance of the 5 landmarks, for each of our faces whose box matches one of the package's
    (box, landmarks) pairs."""
    distances = []
    for our_faces, their_faces in zip(ours, theirs):
        for face in our_faces:
            overlaps = [iou(np.asarray(face.box), box) for box, _ in their_faces]
            if overlaps and max(overlaps) >= MATCH_IOU:
                points = their_faces[int(np.argmax(overlaps))][1]
                distances.append(float(np.linalg.norm(face.landmarks - points, axis=1).mean()))
    return distances


def from_json(faces: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(box, landmarks) of the package's default output, whose coordinates are whole pixels."""
    return [(np.asarray(f["box"], float), np.asarray([f["keypoints"][k] for k in KEYPOINTS], float)) for f in faces]


def from_rows(rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(box, landmarks) of the package's numpy rows: image, box, score, the 5 landmarks' x, then their y."""
    return [(row[1:5], row[6:16].reshape(2, 5).T) for row in np.asarray(rows).reshape(-1, 16)]


def same_faces(found: list[list[Face]], reference: list[list[Face]]) -> float:
    """Share of the reference's faces that found has too (boxes overlapping by MATCH_IOU)."""
    matched = [any(iou(np.asarray(face.box), np.asarray(other.box)) >= MATCH_IOU for other in ours)
               for ours, theirs in zip(found, reference) for face in theirs]
    return sum(matched) / max(1, len(matched))


def host_ms_per_photo(detector: FaceDetector, photos: list[np.ndarray], on_device: bool) -> float:
    """Host milliseconds per photo of detecting and aligning photos in the detector's batches: thread CPU
    time under cProfile outside BACKEND_CALLS. Chips cut by ChipCutter when on_device, else by Pillow."""
    cutter = ChipCutter(device=detector.device)

    def detect_and_align(some: list[np.ndarray]) -> None:
        found = detector.detect(some)
        points = [np.asarray([face.landmarks for face in faces]).reshape(-1, 5, 2) for faces in found]
        if on_device:
            cutter.cut(some, points)
        else:
            for photo, landmarks in zip(some, points):
                align_faces(photo, list(landmarks))

    batches = [photos[i:i + detector.batch_size] for i in range(0, len(photos), detector.batch_size)]
    # Warm-up: two batch sizes, after which TensorFlow's functions take any size without tracing again.
    detect_and_align(batches[0])
    detect_and_align(batches[0][:3])
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    for batch in batches:
        detect_and_align(batch)
    profile.disable()
    stats = pstats.Stats(profile).stats
    backend = sum(tottime for (_, _, name), (_, _, tottime, _, _) in stats.items()
                  if any(call in name for call in BACKEND_CALLS))
    total = sum(tottime for _, _, tottime, _, _ in stats.values())
    return 1000 * (total - backend) / len(photos)


def recall(detections: list[list]) -> float:
    """Share of photos with at least one face."""
    return sum(bool(faces) for faces in detections) / len(detections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="LFW photos (every k-th of the sorted list)")
    args = parser.parse_args()

    load_at_start = os.getloadavg()[0]
    photos = lfw_photos(args.count)
    print(f"{len(photos)} LFW photos, {photos[0].shape[1]}x{photos[0].shape[0]}")

    detector = FaceDetector()
    speeds = {}
    for batch_size in BATCH_SIZES:
        detector.batch_size = batch_size
        detector.detect(photos[:batch_size])  # warm-up
        ours, seconds = timed(lambda: detector.detect(photos))
        speeds[batch_size] = len(photos) / seconds
        print(f"ours, batch {batch_size:2d}: {speeds[batch_size]:.1f} photos/s "
              f"({1000 / speeds[batch_size]:.1f} ms/photo), a face in {recall(ours):.1%} of photos")
    best_batch_size = max(speeds, key=speeds.get)
    detector.batch_size = best_batch_size
    stages = FaceDetector(batch_size=best_batch_size, graph=False)
    stages.detect(photos[:best_batch_size])  # warm-up
    one_by_one, seconds = timed(lambda: stages.detect(photos))
    stages_speed = len(photos) / seconds
    print(f"ours, networks one by one with NumPy between (as under JAX), batch {best_batch_size}: "
          f"{stages_speed:.1f} photos/s, {same_faces(one_by_one, ours):.1%} of the one graph's faces")

    pyramids = {}
    for min_face_size, scale_factor in PYRAMIDS:
        other = FaceDetector(min_face_size=min_face_size, scale_factor=scale_factor, batch_size=best_batch_size)
        other.detect(photos[:best_batch_size])  # warm-up
        found, seconds = timed(lambda detector=other: detector.detect(photos))
        pyramids[f"{min_face_size}px_{scale_factor}"] = entry = {
            "photos_per_s": round(len(photos) / seconds, 2), "recall": round(recall(found), 4),
            "faces": sum(map(len, found)), "default_faces_found": round(same_faces(found, ours), 4)}
        print(f"ours, smallest face {min_face_size} px, scale factor {scale_factor}: {entry['photos_per_s']:.1f} "
              f"photos/s, a face in {recall(found):.1%} of photos, {entry['default_faces_found']:.1%} of the "
              "default's faces")

    host = {}
    for name, batch_size, graph, on_device in HOST_RUNS:
        host_detector = FaceDetector(batch_size=batch_size, graph=graph)
        host[name] = round(host_ms_per_photo(host_detector, photos, on_device=on_device), 3)
        print(f"host work per photo, {name}: {host[name]:.2f} ms")

    from mtcnn import MTCNN

    package = MTCNN()
    package.detect_faces(photos[0])  # warm-up
    with package_with_stable_ties():
        theirs, seconds = timed(lambda: [package.detect_faces(photo) for photo in photos])
    package_speed = len(photos) / seconds
    print(f"package, one photo per call: {package_speed:.1f} photos/s ({1000 / package_speed:.1f} ms/photo), "
          f"a face in {recall(theirs):.1%} of photos")

    distances = landmark_distances(ours, [from_json(faces) for faces in theirs])
    print(f"{len(distances)} of our {sum(map(len, ours))} faces match one of the package's "
          f"{sum(map(len, theirs))}; mean landmark distance {np.mean(distances):.3f} px "
          "(its default output is rounded to whole pixels)")
    subset = photos[:UNROUNDED_PHOTOS]
    with package_with_stable_ties():
        unrounded = landmark_distances(ours, [from_rows(package.detect_faces(photo, output_type="numpy"))
                                              for photo in subset])
    print(f"against its unrounded output on {len(subset)} photos: mean landmark distance {np.mean(unrounded):.2e} px, "
          f"largest {np.max(unrounded):.2e} px")

    summary = {
        "photos": len(photos),
        "ours_photos_per_s": round(speeds[best_batch_size], 2),
        "ours_numpy_stages_photos_per_s": round(stages_speed, 2),
        "package_photos_per_s": round(package_speed, 2),
        "speedup": round(speeds[best_batch_size] / package_speed, 2),
        "ours_recall": round(recall(ours), 4),
        "package_recall": round(recall(theirs), 4),
        "best_batch_size": best_batch_size,
        "mean_landmark_diff_px": round(float(np.mean(distances)), 4),
        "mean_landmark_diff_unrounded_px": float(np.mean(unrounded)),
        "pyramids": pyramids,
        "host_ms_per_photo": host["gpu_worker"],
        "host_ms": host,
        **machine_info(load_at_start),
    }
    publish(summary, RESULTS_PATH)


if __name__ == "__main__":
    main()

"""Photos per second: our batched MTCNN against the `mtcnn` package's default per-photo call, on LFW.

Run as `python -m bench.detection [--count N]`. Both sides get the same decoded photos (decoding is
not timed) and are timed after a warm-up call. Ours runs at several batch sizes; the best counts.
The last line printed is a JSON summary, also written to bench/results/detection.json.
The machine may be shared: compare the two sides of one run, not numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.machine import machine_info
from config import load_settings
from pipeline.decode import decode_image
from pipeline.detect import Face, FaceDetector

BATCH_SIZES = (16, 32, 64)
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "detection.json"
KEYPOINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# A face of ours and one of the package's are the same face when their boxes overlap this much.
MATCH_IOU = 0.5
# Photos on which the package's unrounded output (output_type="numpy") is compared too, untimed.
UNROUNDED_PHOTOS = 100


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

    from mtcnn import MTCNN

    package = MTCNN()
    package.detect_faces(photos[0])  # warm-up
    theirs, seconds = timed(lambda: [package.detect_faces(photo) for photo in photos])
    package_speed = len(photos) / seconds
    print(f"package, one photo per call: {package_speed:.1f} photos/s ({1000 / package_speed:.1f} ms/photo), "
          f"a face in {recall(theirs):.1%} of photos")

    distances = landmark_distances(ours, [from_json(faces) for faces in theirs])
    print(f"{len(distances)} of our {sum(map(len, ours))} faces match one of the package's "
          f"{sum(map(len, theirs))}; mean landmark distance {np.mean(distances):.3f} px "
          "(its default output is rounded to whole pixels)")
    subset = photos[:UNROUNDED_PHOTOS]
    unrounded = landmark_distances(ours, [from_rows(package.detect_faces(photo, output_type="numpy"))
                                          for photo in subset])
    print(f"against its unrounded output on {len(subset)} photos: mean landmark distance {np.mean(unrounded):.2e} px, "
          f"largest {np.max(unrounded):.2e} px")

    summary = {
        "photos": len(photos),
        "ours_photos_per_s": round(speeds[best_batch_size], 2),
        "package_photos_per_s": round(package_speed, 2),
        "speedup": round(speeds[best_batch_size] / package_speed, 2),
        "ours_recall": round(recall(ours), 4),
        "package_recall": round(recall(theirs), 4),
        "best_batch_size": best_batch_size,
        "mean_landmark_diff_px": round(float(np.mean(distances)), 4),
        "mean_landmark_diff_unrounded_px": float(np.mean(unrounded)),
        **machine_info(load_at_start),
    }
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""How the face-quality rule's thresholds (pipeline/quality.py) were chosen, on LFW photos pairs.txt does not use.

    python -m bench.quality_tuning [--degraded-pairs N] [--limit N]

Tuning photos: the 5,532 LFW photos that no pair of pairs.txt uses, so that bench.quality measures the
rule on photos it was not chosen on. Tuning pairs: consecutive photos of each person with two or more
(same person) and as many random pairs of two people (seed 0), scored by the cosine distance of the
subjects' embeddings at the distance threshold most accurate on all of them. Their error is the base error;
a threshold marks where the error reaches ERROR_FACTOR times it:
- MIN_INTEROCULAR_PX: DEGRADED_PAIRS pairs (half same, half different people) with their second photo
  shrunk until the face's interocular distance is each of SIZES (pasted on mid grey at the photo's size, so
  the face is small in an ordinary photo; a copy where no face is found is an error): the smallest size
  from which on every larger one stays under the limit.
- MIN_SHARPNESS: the same pairs with the second photo blurred (Gaussian, each of SIGMAS pixels): between
  the median sharpness of the last blur under the limit and that of the first over it (geometric mean).
- MAX_YAW, MAX_PITCH, MIN_CONFIDENCE: the tuning pairs as they are (nothing degrades pose), by the pair's
  worse face: the smallest edge of EDGES whose tail (pairs at least that turned, or that unsure) holds at
  least MIN_TAIL_PAIRS pairs and reaches the limit; None when no edge does (the constant then keeps its
  reason, given in pipeline/quality.py).
The last line printed is the JSON also written to bench/results/quality_tuning.json.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from bench.lfw import read_pairs
from bench.lfw_faces import Subjects, cosine_distances, describe, face_pipeline
from bench.lfw_pairs import best_threshold
from bench.machine import machine_info
from bench.output import publish
from config import load_settings
from pipeline import quality

RESULTS = Path(__file__).resolve().parent / "results" / "quality_tuning.json"
ERROR_FACTOR = 2.0
DEGRADED_PAIRS = 600
SIZES = (6, 8, 10, 12, 14, 16, 20, 24)  # interocular distance in pixels after shrinking
SIGMAS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)  # Gaussian blur radius in pixels
MIN_TAIL_PAIRS = 25
EDGES = {"yaw": range(10, 60, 5), "pitch": range(10, 60, 5), "confidence": (0.8, 0.85, 0.9, 0.95, 0.98, 0.99)}
SEED = 0


def tuning_pairs(keys: list[str], found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pairs of indices into keys, same person?): consecutive photos of each person, and as many random
    pairs of different people; only photos with a face."""
    by_person: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        if found[i]:
            by_person[key.split("/")[0]].append(i)
    same = [(a, b) for photos in by_person.values() for a, b in zip(photos[:-1], photos[1:])]
    rng = np.random.default_rng(SEED)
    people = sorted(by_person)
    different = []
    while len(different) < len(same):
        first, second = rng.choice(len(people), 2, replace=False)
        different.append((rng.choice(by_person[people[first]]), rng.choice(by_person[people[second]])))
    return np.array(same + different), np.r_[np.ones(len(same), bool), np.zeros(len(different), bool)]


def shrunk(data: bytes, interocular: float, target: float) -> bytes:
    """The photo with everything shrunk so the face's interocular distance becomes target, centred on mid grey
    at the photo's own size."""
    photo = Image.open(io.BytesIO(data)).convert("RGB")
    factor = target / interocular
    small = photo.resize((max(1, round(photo.width * factor)), max(1, round(photo.height * factor))),
                         Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", photo.size, (128, 128, 128))
    canvas.paste(small, ((photo.width - small.width) // 2, (photo.height - small.height) // 2))
    return _jpeg(canvas)


def blurred(data: bytes, sigma: float) -> bytes:
    return _jpeg(Image.open(io.BytesIO(data)).convert("RGB").filter(ImageFilter.GaussianBlur(sigma)))


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    return out.getvalue()


def tail_threshold(values: np.ndarray, correct: np.ndarray, edges, base: float, above: bool) -> dict:
    """The smallest edge (largest, for a tail below it) whose tail holds MIN_TAIL_PAIRS pairs and has an
    error of at least ERROR_FACTOR * base; with each edge's tail."""
    tails, chosen = [], None
    for edge in (edges if above else sorted(edges, reverse=True)):
        tail = values >= edge if above else values < edge
        error = float(1 - correct[tail].mean()) if tail.any() else None
        tails.append({"edge": edge, "pairs": int(tail.sum()), "error": error})
        if chosen is None and tail.sum() >= MIN_TAIL_PAIRS and error >= ERROR_FACTOR * base:
            chosen = edge
    return {"threshold": chosen, "tails": tails}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--degraded-pairs", type=int, default=DEGRADED_PAIRS)
    parser.add_argument("--limit", type=int, help="only the first N tuning photos (quick runs; not written)")
    args = parser.parse_args(argv)
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    datasets = load_settings().datasets_dir
    lfw = datasets / "lfw-deepfunneled"
    measured = {name for pair in read_pairs(datasets / "lfw-meta" / "pairs.txt") for name in (pair.first, pair.second)}
    keys = sorted(str(path.relative_to(lfw)) for path in lfw.glob("*/*.jpg"))
    keys = [key for key in keys if key not in measured][:args.limit]
    print(f"tuning photos: {len(keys)} LFW photos that pairs.txt does not use; load average {load_at_start:.1f}")

    pipeline = face_pipeline()
    subjects = describe(pipeline, ((key, (lfw / key).read_bytes()) for key in keys), len(keys), "tuning photos")
    pairs, same = tuning_pairs(keys, subjects.found)
    distances = cosine_distances(subjects.embeddings[pairs[:, 0]], subjects.embeddings[pairs[:, 1]])
    threshold = best_threshold(distances, same)
    correct = (distances <= threshold) == same
    base = float(1 - correct.mean())
    limit = ERROR_FACTOR * base
    print(f"tuning pairs: {len(pairs)} ({same.sum()} same person), cosine distance threshold {threshold:.4f}, "
          f"error {base:.4f}: a threshold marks an error of {limit:.4f}")

    def part(name: str) -> np.ndarray:
        return np.array([getattr(q, name) if q else np.nan for q in subjects.quality])

    natural = {}
    for name, above in (("yaw", True), ("pitch", True), ("confidence", False)):
        values = np.abs(part(name)) if above else part(name)
        worse = (np.maximum if above else np.minimum)(values[pairs[:, 0]], values[pairs[:, 1]])
        natural[name] = tail_threshold(worse, correct, EDGES[name], base, above)
        print(f"{name}: threshold {natural[name]['threshold']}; tails {natural[name]['tails']}")

    # Degraded copies of the second photo of half same-person, half different-people pairs.
    rng = np.random.default_rng(SEED)
    half = args.degraded_pairs // 2
    chosen = np.r_[rng.choice(np.flatnonzero(same), half, replace=False),
                   rng.choice(np.flatnonzero(~same), half, replace=False)]
    firsts, seconds = pairs[chosen, 0], pairs[chosen, 1]
    interocular = part("interocular_px")

    def degraded_error(label: str, degrade) -> tuple[float, Subjects]:
        copies = describe(pipeline, ((keys[i], degrade((lfw / keys[i]).read_bytes(), i)) for i in seconds),
                          len(seconds), label)
        distance = cosine_distances(subjects.embeddings[firsts], copies.embeddings)
        right = copies.found & ((distance <= threshold) == same[chosen])
        return float(1 - right.mean()), copies

    sizes = []
    for size in SIZES:
        error, copies = degraded_error(f"shrunk to {size} px",
                                       lambda data, i, size=size: shrunk(data, interocular[i], size))
        found = [q for q in copies.quality if q]
        sizes.append({"interocular_px": size, "error": error, "no_face": int((~copies.found).sum()),
                      "median_measured_interocular_px": float(np.median([q.interocular_px for q in found]))})
        print(f"  shrunk to {size} px: error {error:.4f}", flush=True)
    passing = [row["interocular_px"] for row in sizes if all(r["error"] < limit for r in sizes
                                                              if r["interocular_px"] >= row["interocular_px"])]
    min_interocular = min(passing) if passing else None

    blurs = []
    for sigma in SIGMAS:
        error, copies = degraded_error(f"blurred {sigma} px", lambda data, i, sigma=sigma: blurred(data, sigma))
        blurs.append({"sigma": sigma, "error": error, "no_face": int((~copies.found).sum()),
                      "median_sharpness": float(np.median([q.sharpness for q in copies.quality if q]))})
        print(f"  blurred {sigma} px: error {error:.4f}, median sharpness {blurs[-1]['median_sharpness']:.4f}",
              flush=True)
    first_over = next((i for i, row in enumerate(blurs) if row["error"] >= limit), None)
    min_sharpness = None
    if first_over:
        last_under, first = blurs[first_over - 1]["median_sharpness"], blurs[first_over]["median_sharpness"]
        min_sharpness = float(np.sqrt(last_under * first))

    chosen_thresholds = {"MIN_INTEROCULAR_PX": min_interocular, "MIN_SHARPNESS": min_sharpness,
                         "MAX_YAW": natural["yaw"]["threshold"], "MAX_PITCH": natural["pitch"]["threshold"],
                         "MIN_CONFIDENCE": natural["confidence"]["threshold"]}
    in_use = {name: getattr(quality, name) for name in chosen_thresholds}
    distribution = {name: np.round(np.nanpercentile(part(name), [1, 5, 25, 50, 75, 95, 99]), 4).tolist()
                    for name in ("interocular_px", "sharpness", "yaw", "pitch", "confidence", "score")}
    verdicts = {verdict: sum(q is not None and q.verdict == verdict for q in subjects.quality)
                for verdict in quality.VERDICTS}
    summary = {
        "tuning_photos": len(keys), "tuning_photos_no_face": int((~subjects.found).sum()),
        "tuning_pairs": len(pairs), "same_person_pairs": int(same.sum()),
        "distance": "cosine", "distance_threshold": threshold, "base_error": base,
        "error_factor": ERROR_FACTOR, "error_limit": limit,
        "chosen": chosen_thresholds, "in_pipeline_quality": in_use,
        "shrunk": sizes, "blurred": blurs, "degraded_pairs": len(chosen), "natural": natural,
        "min_tail_pairs": MIN_TAIL_PAIRS,
        "tuning_photo_percentiles": {"percentiles": [1, 5, 25, 50, 75, 95, 99], **distribution},
        "tuning_photo_verdicts": verdicts,
        **machine_info(load_at_start), "bench_s": round(time.perf_counter() - started, 1),
    }
    publish(summary, RESULTS if not args.limit else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""LFW verification (pairs.txt, 10 folds) for our pipeline and the face_recognition pipeline.

    python -m bench.lfw_pairs [--limit-folds N] [--distance euclidean|cosine]

Each pipeline describes every photo the pairs use once, the photo's subject only: ours through
FacePipeline (MTCNN, our alignment, the Keras port of dlib's ResNet; the subject is `.main_face`),
the baseline through bench.baseline (dlib's HOG detector, 5-point landmarks and ResNet; the subject
by main_face's rule on dlib's boxes). Ours is scored with and without test-time mirroring (the
descriptor of the subject's chip averaged with that of its horizontal mirror, embedded by the same
embedder); `ours_accuracy` is the product's setting (FACEREC_MIRROR_FACES, on by default),
`ours_unmirrored_accuracy` and `ours_mirrored_accuracy` both.

LFW's unrestricted protocol: for each fold, the distance threshold that maximises accuracy on the
other folds is applied to this fold. Accuracy is the mean over folds, ± the sample standard deviation
(ddof=1, LFW's definition of sigma); the standard error is sigma / sqrt(folds). A pair with a photo in
which no face was found counts as wrong in every fold and stays in the denominator. Both distances,
Euclidean (dlib's convention) and cosine, are scored; --distance picks the one the JSON reports:
cosine by default, the similarity our models accept faces by.
The last line printed is the JSON also written to bench/results/lfw_pairs.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from bench.baseline import encode_photos
from bench.lfw import Pair, read_pairs
from config import load_settings

BATCH_SIZE = 64  # photos per FacePipeline.process call
PROCESSES = 2  # baseline pool size: one per core on the 2-core machine the brief measures on
WARM_UP_PHOTOS = 8  # traced and allocated before timing, as a long-running worker would be
RESULTS = Path(__file__).resolve().parent / "results" / "lfw_pairs.json"
DISTANCES = ("euclidean", "cosine")


def pair_distances(descriptors: np.ndarray, first: np.ndarray, second: np.ndarray, distance: str) -> np.ndarray:
    """Distance of each pair (rows first[i] and second[i] of descriptors); NaN where a photo has no face."""
    a, b = descriptors[first], descriptors[second]
    if distance == "euclidean":
        return np.linalg.norm(a - b, axis=1)
    if distance == "cosine":
        return 1 - np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    raise ValueError(f"unknown distance {distance!r}")


def best_threshold(distances: np.ndarray, same: np.ndarray) -> float:
    """The threshold (a pair is "same" when its distance <= threshold) most accurate on these pairs.

    Every threshold between two consecutive sorted distances classifies the pairs alike, so only
    those gaps are tried; the midpoint of the best one is returned (the lowest, on a tie).
    """
    order = np.argsort(distances)
    d, s = distances[order], same[order]
    # A cut before sorted position k calls the k closest pairs "same": it is right about the
    # matched pairs among them and the mismatched pairs after them.
    matched_below = np.concatenate([[0], np.cumsum(s)])
    mismatched_above = (~s).sum() - np.concatenate([[0], np.cumsum(~s)])
    correct = matched_below + mismatched_above
    # No threshold separates two equal distances.
    possible = np.concatenate([[True], d[1:] > d[:-1], [True]])
    k = int(np.argmax(np.where(possible, correct, -1)))
    bounds = np.concatenate([[d[0] - 1], d, [d[-1] + 1]]) if len(d) else np.array([0.0, 0.0])
    return float((bounds[k] + bounds[k + 1]) / 2)


def fold_accuracies(distances: np.ndarray, same: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Accuracy on each fold with the threshold fitted on the other folds.

    Pairs with a NaN distance (a photo without a face) are wrong whatever the threshold, so they
    are left out of the fitting and counted as wrong in the scoring. With a single fold there is
    nothing else to fit on, so the threshold is fitted on the fold itself (quick runs only).
    """
    found = ~np.isnan(distances)
    fold_ids = np.unique(folds)
    accuracies = []
    for fold in fold_ids:
        fit = found & ((folds != fold) if len(fold_ids) > 1 else (folds == fold))
        threshold = best_threshold(distances[fit], same[fit])
        correct = found & ((distances <= threshold) == same)
        accuracies.append(correct[folds == fold].mean())
    return np.asarray(accuracies)


def score(descriptors: np.ndarray, pairs: list[Pair], index: dict[str, int], distance: str) -> dict:
    """Mean and sample std of the fold accuracies, and the pairs lost to a missing face."""
    first = np.array([index[p.first] for p in pairs])
    second = np.array([index[p.second] for p in pairs])
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    distances = pair_distances(descriptors, first, second, distance)
    accuracies = fold_accuracies(distances, same, folds)
    return {
        "accuracy": float(accuracies.mean()),
        "std": float(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0,
        "folds": accuracies.round(4).tolist(),
        "pairs_missing_face": int(np.isnan(distances).sum()),
    }


def embed_ours(paths: list[Path], batch_size: int = BATCH_SIZE) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Our descriptors of each photo's subject, plain and mirror-averaged (NaN rows: no face).

    Returns (plain, mirrored, seconds, stage milliseconds). The seconds cover reading the files and
    FacePipeline.process without mirroring, not the mirrored embedding done beside it.
    """
    from pipeline.detect import FaceDetector
    from pipeline.face_resnet import DESCRIPTOR_SIZE, FaceResNetEmbedder
    from pipeline.faces import FacePipeline

    pipeline = FacePipeline(FaceDetector(), FaceResNetEmbedder(load_settings().cache_dir))
    pipeline.process([(str(p), p.read_bytes()) for p in paths[:WARM_UP_PHOTOS]])

    plain = np.full((len(paths), DESCRIPTOR_SIZE), np.nan, dtype=np.float32)
    mirrored = plain.copy()
    stage_ms: dict[str, float] = {}
    seconds = 0.0
    for start in range(0, len(paths), batch_size):
        started = time.perf_counter()
        photos = [(str(p), p.read_bytes()) for p in paths[start:start + batch_size]]
        results = pipeline.process(photos)
        seconds += time.perf_counter() - started
        for stage, ms in pipeline.timings_ms.items():
            stage_ms[stage] = stage_ms.get(stage, 0.0) + ms

        rows, chips = [], []
        for offset, result in enumerate(results):
            subject = result.main_face
            if subject is None:
                continue
            rows.append(start + offset)
            plain[start + offset] = result.embeddings[subject]
            chips.append(result.chips[subject])  # the chip the pipeline embedded
        if chips:
            # Chips are (n, height, width, 3): reversing axis 2 mirrors them left to right.
            flipped = pipeline.embedder.embed(np.ascontiguousarray(np.stack(chips)[:, :, ::-1]))
            mirrored[rows] = (plain[rows] + flipped) / 2
        done = min(start + batch_size, len(paths))
        print(f"  ours: {done}/{len(paths)} photos, {done / seconds:.1f} images/s", flush=True)
    return plain, mirrored, seconds, stage_ms


def report(name: str, scores: dict[str, dict]) -> None:
    for distance, result in scores.items():
        folds = len(result["folds"])
        stderr = result["std"] / np.sqrt(folds)
        print(f"{name:<14} {distance:<9}: {100 * result['accuracy']:.2f}% ± {100 * result['std']:.2f}% "
              f"(std error {100 * stderr:.2f}%, {folds} folds), {result['pairs_missing_face']} pairs missing a face")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-folds", type=int, help="only the first N folds (quick runs)")
    parser.add_argument("--distance", choices=DISTANCES, default="cosine",
                        help="the distance the JSON reports (both are printed)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="photos per FacePipeline call")
    args = parser.parse_args(argv)
    bench_started = time.perf_counter()

    datasets = load_settings().datasets_dir
    lfw = datasets / "lfw-deepfunneled"
    pairs = read_pairs(datasets / "lfw-meta" / "pairs.txt")
    if args.limit_folds:
        pairs = [p for p in pairs if p.fold < args.limit_folds]
    names = sorted({name for p in pairs for name in (p.first, p.second)})
    index = {name: i for i, name in enumerate(names)}
    paths = [lfw / name for name in names]
    folds = len({p.fold for p in pairs})
    print(f"LFW pairs: {len(pairs)} pairs in {folds} folds, {len(paths)} photos")

    print("ours: FacePipeline (MTCNN, our alignment, Keras ResNet) ...", flush=True)
    plain, mirrored, ours_seconds, stage_ms = embed_ours(paths, args.batch_size)
    print(f"baseline: face_recognition pipeline on dlib-bin, {PROCESSES} processes ...", flush=True)
    baseline = encode_photos(paths, processes=PROCESSES)
    baseline_descriptors = np.stack([
        d if d is not None else np.full(128, np.nan, dtype=np.float32) for d in baseline.descriptors
    ])

    scores = {
        pipeline: {distance: score(descriptors, pairs, index, distance) for distance in DISTANCES}
        for pipeline, descriptors in (("ours", plain), ("ours_mirrored", mirrored), ("baseline", baseline_descriptors))
    }
    ours_images_per_s = len(paths) / ours_seconds
    print(f"ours: {ours_images_per_s:.1f} images/s, {int(np.isnan(plain[:, 0]).sum())} photos without a face; "
          f"baseline: {baseline.images_per_s:.1f} images/s, {baseline.no_face} photos without a face")
    for pipeline, by_distance in scores.items():
        report(pipeline, by_distance)

    chosen = {pipeline: by_distance[args.distance] for pipeline, by_distance in scores.items()}
    product = chosen["ours_mirrored" if load_settings().mirror_faces else "ours"]
    other = next(d for d in DISTANCES if d != args.distance)
    summary = {
        "ours_accuracy": round(product["accuracy"], 4),
        "ours_std": round(product["std"], 4),
        "ours_mirrored": load_settings().mirror_faces,
        "baseline_accuracy": round(chosen["baseline"]["accuracy"], 4),
        "baseline_std": round(chosen["baseline"]["std"], 4),
        "pairs_missing_face_ours": product["pairs_missing_face"],
        "pairs_missing_face_baseline": chosen["baseline"]["pairs_missing_face"],
        "ours_unmirrored_accuracy": round(chosen["ours"]["accuracy"], 4),
        "ours_mirrored_accuracy": round(chosen["ours_mirrored"]["accuracy"], 4),
        "ours_mirrored_std": round(chosen["ours_mirrored"]["std"], 4),
        "mirroring_helps": chosen["ours_mirrored"]["accuracy"] > chosen["ours"]["accuracy"],
        "distance": args.distance,
        "std": "sample (ddof=1) over folds",
        "ours_unmirrored_images_per_s": round(ours_images_per_s, 2),
        "baseline_images_per_s": round(baseline.images_per_s, 2),
        "photos": len(paths),
        "pairs": len(pairs),
        "folds": folds,
        f"{other}_accuracy": {pipeline: round(by_distance[other]["accuracy"], 4)
                              for pipeline, by_distance in scores.items()},
        "fold_accuracies": {pipeline: result["folds"] for pipeline, result in chosen.items()},
        "ours_stage_ms": {stage: round(ms, 1) for stage, ms in stage_ms.items()},
        "load_average": round(os.getloadavg()[0], 2),
        "device": "cpu",
        "bench_s": round(time.perf_counter() - bench_started, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

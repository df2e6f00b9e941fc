"""LFW verification (pairs.txt, 10 folds) for our pipeline and the face_recognition pipeline.

    python -m bench.lfw_pairs [--limit-folds N] [--distance euclidean|cosine] [--crops plain|accurate|...]
                              [--skip-baseline]

Each pipeline describes every photo the pairs use once, the photo's subject only: ours through
FacePipeline (MTCNN, our alignment, the Keras port of dlib's ResNet; the subject is `.main_face`),
the baseline through bench.baseline (dlib's HOG detector, 5-point landmarks and ResNet, one process
per core; the subject by main_face's rule on dlib's boxes). Ours is scored with and without test-time mirroring (the
descriptor of the subject's chip averaged with that of its horizontal mirror, embedded by the same
embedder); `ours_accuracy` is the product's setting (FACEREC_MIRROR_FACES, on by default),
`ours_unmirrored_accuracy` and `ours_mirrored_accuracy` both. --crops chooses the views of each chip
that are embedded and averaged (face_resnet.Crop): `plain` is the default pipeline, `accurate` the
accurate mode (FACEREC_ACCURATE_FACES), the others one kind of crop each beside the chip itself, to
measure what each kind adds. `ours_embed_faces_per_s` is the cost: faces embedded per second in the
reported setting (mirrored or not), all crops included. The ResNet runs at FACEREC_PRECISION (auto:
bfloat16 on a CPU that has it natively), as the workers run it; `precision` in the JSON says which.

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
import os
import time
from pathlib import Path

import numpy as np

from bench.baseline import encode_photos
from bench.lfw import Pair, read_pairs
from bench.machine import machine_info
from bench.output import publish
from config import load_settings
from pipeline.backend import resolved_precision
from pipeline.face_resnet import ACCURATE, PLAIN, Crop

BATCH_SIZE = 64  # photos per FacePipeline.process call
WARM_UP_PHOTOS = 8  # traced and allocated before timing, as a long-running worker would be
COST_CHIPS = 512  # subjects' chips on which the embedding's faces per second is timed
COST_RUNS = 3
RESULTS = Path(__file__).resolve().parent / "results" / "lfw_pairs.json"
DISTANCES = ("euclidean", "cosine")
CROP_SETS: dict[str, tuple[Crop, ...]] = {
    "plain": PLAIN,
    "accurate": ACCURATE,  # shifts of 4 px in x
    "shifts_xy": ACCURATE + (Crop(dy=-4), Crop(dy=4)),  # the accurate mode before: 5 views
    "scales": PLAIN + (Crop(scale=0.92), Crop(scale=1.08)),
    "rotations": PLAIN + (Crop(angle=-4), Crop(angle=4)),
    "all": ACCURATE + (Crop(dy=-4), Crop(dy=4), Crop(scale=0.96), Crop(scale=1.04), Crop(angle=-4), Crop(angle=4)),
}


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
        # Folds are equal in size, so this is (1 - accuracy) * pairs.
        "wrong_pairs": int(round(sum((1 - a) * (folds == f).sum() for a, f in zip(accuracies, np.unique(folds))))),
        "std": float(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0,
        "folds": accuracies.round(4).tolist(),
        "pairs_missing_face": int(np.isnan(distances).sum()),
    }


def embed_ours(paths: list[Path], batch_size: int = BATCH_SIZE, crops: tuple[Crop, ...] = PLAIN
               ) -> tuple[np.ndarray, np.ndarray, float, dict, np.ndarray]:
    """Our descriptors of each photo's subject, plain and mirror-averaged (NaN rows: no face).

    Returns (plain, mirrored, seconds, stage milliseconds, the first COST_CHIPS subjects' chips). The
    seconds cover reading the files and FacePipeline.process without mirroring, not the mirrored
    embedding done beside it. Every crop set here is its own mirror image, so averaging with the
    mirrored chips' descriptors is what the embedder's mirror=True gives.
    """
    from pipeline.detect import FaceDetector
    from pipeline.face_resnet import DESCRIPTOR_SIZE, FaceResNetEmbedder
    from pipeline.faces import FacePipeline

    settings = load_settings()
    pipeline = FacePipeline(FaceDetector(), FaceResNetEmbedder(settings.cache_dir, crops=crops,
                                                               precision=settings.precision))
    pipeline.process([(str(p), p.read_bytes()) for p in paths[:WARM_UP_PHOTOS]])

    plain = np.full((len(paths), DESCRIPTOR_SIZE), np.nan, dtype=np.float32)
    mirrored = plain.copy()
    stage_ms: dict[str, float] = {}
    seconds = 0.0
    sample: list[np.ndarray] = []
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
            sample.extend(chips[:COST_CHIPS - len(sample)])
        done = min(start + batch_size, len(paths))
        print(f"  ours: {done}/{len(paths)} photos, {done / seconds:.1f} images/s", flush=True)
    return plain, mirrored, seconds, stage_ms, np.stack(sample)


def embedding_cost(chips: np.ndarray, crops: tuple[Crop, ...], mirror: bool) -> float:
    """Faces per second of the embedder in this setting: after a warm-up, the median of COST_RUNS
    embeddings of the chips, as bench.embedding times it."""
    from pipeline.face_resnet import FaceResNetEmbedder

    settings = load_settings()
    embedder = FaceResNetEmbedder(settings.cache_dir, mirror=mirror, crops=crops, precision=settings.precision)
    embedder.embed(chips[:embedder.batch_size])
    timings = []
    for _ in range(COST_RUNS):
        started = time.perf_counter()
        embedder.embed(chips)
        timings.append(time.perf_counter() - started)
    return len(chips) / float(np.median(timings))


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
    parser.add_argument("--crops", choices=sorted(CROP_SETS), default="plain",
                        help="views of each chip embedded and averaged: plain (default pipeline), accurate, ...")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="ours only (the baseline does not change with --crops and takes minutes)")
    args = parser.parse_args(argv)
    bench_started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    crops = CROP_SETS[args.crops]

    datasets = load_settings().datasets_dir
    lfw = datasets / "lfw-deepfunneled"
    pairs = read_pairs(datasets / "lfw-meta" / "pairs.txt")
    if args.limit_folds:
        pairs = [p for p in pairs if p.fold < args.limit_folds]
    names = sorted({name for p in pairs for name in (p.first, p.second)})
    index = {name: i for i, name in enumerate(names)}
    paths = [lfw / name for name in names]
    folds = len({p.fold for p in pairs})
    print(f"LFW pairs: {len(pairs)} pairs in {folds} folds, {len(paths)} photos; "
          f"load average {load_at_start:.1f} on {os.cpu_count()} cores")

    print(f"ours: FacePipeline (MTCNN, our alignment, Keras ResNet), crops {args.crops} ...", flush=True)
    plain, mirrored, ours_seconds, stage_ms, cost_chips = embed_ours(paths, args.batch_size, crops)
    mirror = load_settings().mirror_faces
    embed_faces_per_s = embedding_cost(cost_chips, crops, mirror)
    described = {"ours": plain, "ours_mirrored": mirrored}
    baseline = None
    if not args.skip_baseline:
        print(f"baseline: face_recognition pipeline on dlib-bin, {os.cpu_count()} processes ...", flush=True)
        baseline = encode_photos(paths)
        described["baseline"] = np.stack([
            d if d is not None else np.full(128, np.nan, dtype=np.float32) for d in baseline.descriptors
        ])

    scores = {
        pipeline: {distance: score(descriptors, pairs, index, distance) for distance in DISTANCES}
        for pipeline, descriptors in described.items()
    }
    ours_images_per_s = len(paths) / ours_seconds
    print(f"ours: {ours_images_per_s:.1f} images/s unmirrored, {int(np.isnan(plain[:, 0]).sum())} photos without "
          f"a face; embedding {embed_faces_per_s:.1f} faces/s {'mirrored' if mirror else 'unmirrored'} "
          f"with {len(crops)} crop(s)")
    if baseline:
        print(f"baseline: {baseline.images_per_s:.1f} images/s, {baseline.no_face} photos without a face")
    for pipeline, by_distance in scores.items():
        report(pipeline, by_distance)

    chosen = {pipeline: by_distance[args.distance] for pipeline, by_distance in scores.items()}
    product = chosen["ours_mirrored" if mirror else "ours"]
    other = next(d for d in DISTANCES if d != args.distance)
    summary = {
        "ours_accuracy": round(product["accuracy"], 4),
        "ours_std": round(product["std"], 4),
        "ours_wrong_pairs": product["wrong_pairs"],
        "ours_mirrored": mirror,
        "crops": args.crops,
        "crop_views": [crop.label for crop in crops],
        "precision": resolved_precision(load_settings().precision, None),
        "ours_embed_faces_per_s": round(embed_faces_per_s, 2),
        "baseline_accuracy": round(chosen["baseline"]["accuracy"], 4) if baseline else None,
        "baseline_std": round(chosen["baseline"]["std"], 4) if baseline else None,
        "baseline_wrong_pairs": chosen["baseline"]["wrong_pairs"] if baseline else None,
        "pairs_missing_face_ours": product["pairs_missing_face"],
        "pairs_missing_face_baseline": chosen["baseline"]["pairs_missing_face"] if baseline else None,
        "ours_unmirrored_accuracy": round(chosen["ours"]["accuracy"], 4),
        "ours_mirrored_accuracy": round(chosen["ours_mirrored"]["accuracy"], 4),
        "ours_mirrored_std": round(chosen["ours_mirrored"]["std"], 4),
        "mirroring_helps": chosen["ours_mirrored"]["accuracy"] > chosen["ours"]["accuracy"],
        "distance": args.distance,
        "std": "sample (ddof=1) over folds",
        "ours_unmirrored_images_per_s": round(ours_images_per_s, 2),
        "baseline_images_per_s": round(baseline.images_per_s, 2) if baseline else None,
        "baseline_processes": os.cpu_count() if baseline else None,
        "photos": len(paths),
        "pairs": len(pairs),
        "folds": folds,
        f"{other}_accuracy": {pipeline: round(by_distance[other]["accuracy"], 4)
                              for pipeline, by_distance in scores.items()},
        "fold_accuracies": {pipeline: result["folds"] for pipeline, result in chosen.items()},
        "ours_stage_ms": {stage: round(ms, 1) for stage, ms in stage_ms.items()},
        **machine_info(load_at_start),
        "bench_s": round(time.perf_counter() - bench_started, 1),
    }
    # The default run keeps the usual file; other crop sets and ours-only runs get their own.
    name = "lfw_pairs" if args.crops == "plain" and baseline else f"lfw_pairs_{args.crops}_{summary['precision']}"
    results = RESULTS.with_name(f"{name}.json")
    publish(summary, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

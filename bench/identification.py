"""Closed- and open-set identification on LFW for every model type, against the face_recognition pipeline.

    python -m bench.identification [--min-photos 20] [--folds 5] [--only-folds N] [--types embedding,cnn,...]

Closed set: the LFW people with at least --min-photos photos, stratified k-fold; top-1 for each model
type and, in the same run, for the face_recognition pipeline (bench.baseline) with a linear SVM. A
photo with no face found counts as an error for both. `top1` scores our best person, as the SVM (which
cannot answer `unknown`) is scored; `top1_with_unknown` also counts our `unknown` answers as errors.
Open set: 20% of the people are held out as strangers; the models train on the others (one
stratified split) and we report the share of strangers rejected and the accuracy on known people
at the calibrated threshold, for `embedding` and `centroid`. --only-folds runs the first N of the
folds only (each fold of `cnn` or `finetune` trains a network for tens of minutes on a CPU).
The last line printed is the JSON written to bench/results/identification.json.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from bench.baseline import BaselineEncoder
from bench.lfw import lfw_items
from bench.machine import machine_info
from bench.output import publish
from config import load_settings
from pipeline.dataset import Item, stratified_split
from pipeline.models import MODEL_TYPES, UNKNOWN, create_model
from pipeline.storage import LocalStorage
from pipeline.train import ExtractedFaces, extract_faces, hold_out_strangers

RESULTS = Path(__file__).resolve().parent / "results" / "identification.json"
STRANGER_FRACTION = 0.2


def top1(model_type: str, extracted: ExtractedFaces, train: list[Item], test: list[Item]) -> tuple[float, float]:
    """Fit on train (a stratified part of it kept for validation) and score on test.

    Returns (open-set top-1, where `unknown` is wrong; closed-set top-1 of the best person)."""
    fit_items, val_items, _ = stratified_split(train, 0.15, seed=0)
    _, fit_faces = extracted.of(fit_items)
    _, val_faces = extracted.of(val_items)
    model = create_model(model_type).fit(fit_faces, val_faces)
    found, test_faces = extracted.of(test)
    predictions = dict(zip((item.key for item in found), model.predict(test_faces)))
    named = sum(item.key in predictions and predictions[item.key].label == item.label for item in test)
    guessed = sum(item.key in predictions and predictions[item.key].best_guess == item.label for item in test)
    return named / len(test), guessed / len(test)


def open_set(model_type: str, extracted: ExtractedFaces, items: list[Item], seed: int = 0) -> dict:
    """Hold out people as strangers; returns stranger rejection and known accuracy at the threshold."""
    known, stranger_photos = hold_out_strangers(items, STRANGER_FRACTION, seed)
    train, test, _ = stratified_split(known, 0.2, seed=seed)
    fit_items, val_items, _ = stratified_split(train, 0.15, seed=seed)
    model = create_model(model_type).fit(extracted.of(fit_items)[1], extracted.of(val_items)[1])
    found, test_faces = extracted.of(test)
    known_right = sum(p.label == item.label for item, p in zip(found, model.predict(test_faces)))
    stranger_items, stranger_faces = extracted.of(stranger_photos)
    rejected = sum(p.label == UNKNOWN for p in model.predict(stranger_faces))
    return {"people_known": len({item.label for item in known}), "strangers": len({i.label for i in stranger_photos}),
            "stranger_photos": len(stranger_items), "stranger_rejection": rejected / max(len(stranger_items), 1),
            "known_accuracy": known_right / len(test), "threshold": model.threshold_}


def baseline_top1(descriptors: dict[str, np.ndarray | None], train: list[Item], test: list[Item]) -> float:
    fitted = [(descriptors[i.key], i.label) for i in train if descriptors[i.key] is not None]
    svm = LinearSVC().fit(np.stack([d for d, _ in fitted]), [label for _, label in fitted])
    found = [i for i in test if descriptors[i.key] is not None]
    predicted = dict(zip([i.key for i in found], svm.predict(np.stack([descriptors[i.key] for i in found]))))
    return sum(predicted.get(i.key) == i.label for i in test) / len(test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-photos", type=int, default=20)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-folds", type=int, help="run only the first N of the folds")
    parser.add_argument("--types", default=",".join(MODEL_TYPES), help="comma-separated model types")
    args = parser.parse_args()
    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    settings = load_settings()
    lfw = settings.datasets_dir / "lfw-deepfunneled"
    items = lfw_items(lfw, args.min_photos)
    print(f"{len({i.label for i in items})} people, {len(items)} photos")

    from pipeline.detect import FaceDetector
    from pipeline.face_resnet import FaceResNetEmbedder
    from pipeline.faces import FacePipeline

    pipeline = FacePipeline(FaceDetector(), FaceResNetEmbedder(settings.cache_dir, mirror=settings.mirror_faces,
                                                                  precision=settings.precision))
    extracted = extract_faces(LocalStorage(lfw), pipeline, items, batch_size=64)
    print(f"ours: faces in {len(extracted.items)} photos, no face in {len(extracted.no_face)}")
    with BaselineEncoder() as encoder:  # one process per core
        encoded = encoder.encode([lfw / item.key for item in items])
    descriptors = {item.key: d for item, d in zip(items, encoded.descriptors)}
    print(f"baseline: no face in {encoded.no_face} photos")

    folds = StratifiedKFold(args.folds, shuffle=True, random_state=0)
    labels = [item.label for item in items]
    types = args.types.split(",")
    # top-1: the best person named right (the SVM's only answer); with_unknown: our open-set answer.
    scores: dict[str, list[float]] = {t: [] for t in types}
    with_unknown: dict[str, list[float]] = {t: [] for t in types}
    scores["baseline"] = []
    splits = list(folds.split(np.zeros(len(items)), labels))[:args.only_folds]
    for fold, (train_rows, test_rows) in enumerate(splits, start=1):
        train, test = [items[i] for i in train_rows], [items[i] for i in test_rows]
        for model_type in scores:
            fold_started = time.perf_counter()
            if model_type == "baseline":
                scores[model_type].append(baseline_top1(descriptors, train, test))
                unknown_note = ""
            else:
                named, guessed = top1(model_type, extracted, train, test)
                scores[model_type].append(guessed)
                with_unknown[model_type].append(named)
                unknown_note = f", with `unknown` counted wrong {named:.4f}"
            print(f"fold {fold}: {model_type:<10} top-1 {scores[model_type][-1]:.4f}{unknown_note} "
                  f"({time.perf_counter() - fold_started:.0f} s)")

    figures = {
        "people": len({i.label for i in items}), "photos": len(items), "folds": args.folds, "folds_run": len(splits),
        "precision": pipeline.embedder.precision,
        "top1": {t: round(float(np.mean(s)), 4) for t, s in scores.items() if t != "baseline"},
        "top1_std": {t: round(float(np.std(s)), 4) for t, s in scores.items()},
        "top1_with_unknown": {t: round(float(np.mean(s)), 4) for t, s in with_unknown.items()},
        "baseline_top1": round(float(np.mean(scores["baseline"])), 4),
        "ours_no_face": len(extracted.no_face),
        "baseline_no_face": encoded.no_face,
        "open_set": {t: open_set(t, extracted, items) for t in ("embedding", "centroid") if t in scores},
    }
    for model_type, result in figures["open_set"].items():
        print(f"open set, {model_type}: {result['stranger_rejection']:.4f} of strangers rejected, "
              f"known accuracy {result['known_accuracy']:.4f}")
    figures["seconds"] = round(time.perf_counter() - started)
    figures |= {"baseline_processes": encoder.processes, **machine_info(load_at_start)}
    publish(figures, RESULTS)


if __name__ == "__main__":
    main()

"""Does face quality mean something, and does joint naming stop a group photo naming one person twice?

    python -m bench.quality [--only pairs|groups] [--limit-folds N] [--group-photos N]

pairs: LFW's verification pairs (pairs.txt, 6,000 pairs, 10 folds), each scored by the cosine distance of
its two subjects' embeddings at the threshold most accurate on the other nine folds (bench.lfw_pairs's
protocol). A pair's quality is its worse face's (pipeline.quality); the error rate is given by tercile of
that score (and for its lowest decile), by the worse face's verdict and by its size (interocular distance),
each with its count and 95% Wilson interval. A pair with a photo without a face is wrong and reported apart
(it has no quality). The rule's thresholds were chosen on the LFW photos pairs.txt does not use (bench.quality_tuning).

groups: group photos made of LFW faces. People: every LFW person with at least GROUP_MIN_PHOTOS photos,
their photos split by pipeline.dataset.three_way_split; a centroid model is fitted on the training split
and its threshold calibrated on the validation split. Each group photo pastes GROUP_FACES crops of
test-split photos (the face and some of its photo around it) on a mid-grey canvas, of different people,
except that in half of them one person appears twice (two different photos). Every face found is named
two ways from the same model scores: one by one (each face its best person above the threshold, as before
joint naming) and jointly (pipeline.assignment.name_jointly, what recognition answers). Counted: photos
in which a person was named twice, and the faces named right, named wrong and unknown, where a face's
truth is the tile its box centre falls in.
The last line printed is the JSON also written to bench/results/quality.json (each part under its own key;
--only replaces that part and keeps the other; quick runs, with --limit-folds or fewer group photos, write nothing).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from bench.lfw import lfw_items, read_pairs
from bench.lfw_faces import cosine_distances, describe, face_pipeline
from bench.lfw_pairs import best_threshold
from bench.machine import machine_info
from bench.output import publish
from config import load_settings
from pipeline.assignment import name_jointly
from pipeline.dataset import three_way_split
from pipeline.evaluate import FACE_SIZE_EDGES, INTERVAL_METHOD, wilson_interval
from pipeline.models import UNKNOWN, FaceSet
from pipeline.models.centroid import CentroidModel
from pipeline.quality import OK

RESULTS = Path(__file__).resolve().parent / "results" / "quality.json"
GROUP_MIN_PHOTOS = 10
GROUP_PHOTOS = 300
GROUP_FACES = (3, 4, 5, 6)  # faces per group photo, in turn
TILE = 150  # pixels of each pasted crop: the middle of a 250x250 LFW photo, the face and a margin
GAP = 20  # grey pixels between tiles and around them
COLUMNS = 3
SEED = 0


def error_row(wrong: np.ndarray, mask: np.ndarray, **fields) -> dict:
    errors, pairs = int(wrong[mask].sum()), int(mask.sum())
    return {**fields, "pairs": pairs, "errors": errors, "error_rate": errors / pairs if pairs else None,
            "error_interval": wilson_interval(errors, pairs)}


def pairs_part(pipeline, lfw: Path, pairs_file: Path, limit_folds: int | None) -> dict:
    pairs = read_pairs(pairs_file)
    if limit_folds:
        pairs = [pair for pair in pairs if pair.fold < limit_folds]
    names = sorted({name for pair in pairs for name in (pair.first, pair.second)})
    index = {name: i for i, name in enumerate(names)}
    print(f"pairs: {len(pairs)} pairs, {len(names)} photos", flush=True)
    subjects = describe(pipeline, ((name, (lfw / name).read_bytes()) for name in names), len(names), "pairs photos")
    first = np.array([index[pair.first] for pair in pairs])
    second = np.array([index[pair.second] for pair in pairs])
    same = np.array([pair.same for pair in pairs])
    folds = np.array([pair.fold for pair in pairs])
    distances = cosine_distances(subjects.embeddings[first], subjects.embeddings[second])
    found = ~np.isnan(distances)
    correct = np.zeros(len(pairs), dtype=bool)
    for fold in np.unique(folds):
        fit = found & ((folds != fold) if len(np.unique(folds)) > 1 else (folds == fold))
        threshold = best_threshold(distances[fit], same[fit])
        here = folds == fold
        correct[here] = (found & ((distances <= threshold) == same))[here]
    wrong = ~correct

    # The worse face of each pair that has both.
    score = np.full(len(pairs), np.nan)
    size = np.full(len(pairs), np.nan)
    verdict = np.full(len(pairs), "", dtype=object)
    for p in np.flatnonzero(found):
        worse = min((subjects.quality[first[p]], subjects.quality[second[p]]), key=lambda q: q.score)
        score[p] = worse.score
        size[p] = min(subjects.quality[first[p]].interocular_px, subjects.quality[second[p]].interocular_px)
        failed = [q.verdict for q in (subjects.quality[first[p]], subjects.quality[second[p]]) if q.verdict != OK]
        verdict[p] = failed[0] if failed else OK
    cuts = np.quantile(score[found], [1 / 3, 2 / 3])
    tercile = np.where(found, 1 + (score >= cuts[0]) + (score >= cuts[1]), 0)
    terciles = [error_row(wrong, tercile == t, tercile=int(t), score_from=float(score[tercile == t].min()),
                          score_to=float(score[tercile == t].max())) for t in (1, 2, 3)]
    # LFW's errors are rare (about 42 of 6,000): the lowest decile shows the tail the terciles average over.
    decile = found & (score <= np.quantile(score[found], 0.1))
    lowest_decile = error_row(wrong, decile, score_to=float(score[decile].max()))
    edges = [*FACE_SIZE_EDGES, np.inf]
    sizes = [error_row(wrong, found & (size >= low) & (size < high), interocular_px_from=low,
                       interocular_px_to=None if high == np.inf else high) for low, high in zip(edges[:-1], edges[1:])]
    verdicts = [error_row(wrong, verdict == v, verdict=v) for v in sorted(set(verdict[found]))]
    for row in terciles:
        print(f"  tercile {row['tercile']} (scores {row['score_from']:.3f}-{row['score_to']:.3f}): "
              f"{row['errors']}/{row['pairs']} wrong, {100 * row['error_rate']:.2f}% "
              f"({100 * row['error_interval'][0]:.2f}-{100 * row['error_interval'][1]:.2f}%)")
    return {
        "pairs": len(pairs), "photos": len(names), "folds": len(np.unique(folds)),
        "errors": int(wrong.sum()), "error_rate": float(wrong.mean()),
        "pairs_missing_face": error_row(wrong, ~found),
        "pair_quality": "the worse face's quality score (pipeline.quality); size: the smaller interocular distance; "
                        "verdict: the first face's failing reason, else the second's, else ok",
        "interval_method": INTERVAL_METHOD,
        "by_score_tercile": terciles,
        "lowest_score_decile": lowest_decile,
        "by_face_size": [row for row in sizes if row["pairs"]],
        "by_verdict": verdicts,
    }


def tile(path: Path) -> Image.Image:
    photo = Image.open(path).convert("RGB")
    left, top = (photo.width - TILE) // 2, (photo.height - TILE) // 2
    return photo.crop((left, top, left + TILE, top + TILE))


def group_photo(paths: list[Path]) -> tuple[bytes, list[tuple[int, int, int, int]]]:
    """A JPEG of the crops in a grid on mid grey, and each tile's (left, top, right, bottom)."""
    rows = -(-len(paths) // COLUMNS)
    columns = min(COLUMNS, len(paths))
    canvas = Image.new("RGB", (GAP + columns * (TILE + GAP), GAP + rows * (TILE + GAP)), (128, 128, 128))
    tiles = []
    for i, path in enumerate(paths):
        left, top = GAP + (i % COLUMNS) * (TILE + GAP), GAP + (i // COLUMNS) * (TILE + GAP)
        canvas.paste(tile(path), (left, top))
        tiles.append((left, top, left + TILE, top + TILE))
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=95)
    return out.getvalue(), tiles


def groups_part(pipeline, lfw: Path, photos: int) -> dict:
    items = lfw_items(lfw, GROUP_MIN_PHOTOS)
    split = three_way_split(items, 0.2, 0.3, seed=SEED)
    people = sorted({item.label for item in items})
    print(f"groups: {len(people)} people with at least {GROUP_MIN_PHOTOS} photos; {len(split.training)} to fit, "
          f"{len(split.validation)} to calibrate, {len(split.test)} to paste", flush=True)

    def faces(part: list, what: str) -> FaceSet:
        subjects = describe(pipeline, ((item.key, (lfw / item.key).read_bytes()) for item in part), len(part), what)
        keep = subjects.found
        # The centroid model reads the embeddings only: the chips are not kept.
        return FaceSet(np.zeros((int(keep.sum()), 1, 1, 3), np.uint8), subjects.embeddings[keep],
                       [item.label for item, kept in zip(part, keep) if kept])

    model = CentroidModel().fit(faces(split.training, "training photos"), faces(split.validation, "validation photos"))
    print(f"  centroid model: {len(model.labels_)} people, threshold {model.threshold_:.4f}", flush=True)

    rng = np.random.default_rng(SEED)
    pool: dict[str, list[str]] = {}
    for item in split.test:
        pool.setdefault(item.label, []).append(item.key)
    twice_able = [person for person, keys in pool.items() if len(keys) >= 2]
    made = []
    for g in range(photos):
        count = GROUP_FACES[g % len(GROUP_FACES)]
        repeated = g % 2 == 0  # half of the photos hold one person twice
        chosen = list(rng.choice(sorted(pool), count - repeated, replace=False))
        if repeated:
            twice = str(rng.choice([p for p in twice_able if p not in chosen]))
            chosen[0:1] = [twice, twice]
        keys = []
        for person in chosen:
            options = [key for key in pool[person] if key not in keys]
            keys.append(str(rng.choice(options)))
        order = rng.permutation(len(keys))
        keys, chosen = [keys[i] for i in order], [chosen[i] for i in order]
        data, tiles = group_photo([lfw / key for key in keys])
        made.append((f"group-{g:04d}.jpg", data, chosen, tiles, repeated))

    counts: Counter = Counter()
    changed: Counter = Counter()  # faces the joint naming changed: their answer before -> after
    found_in = pipeline.process_stream(((key, data) for key, data, *_ in made), 32)
    for (_, _, truth, tiles, repeated), found in zip(made, found_in):
        counts["photos"] += 1
        counts["photos_with_a_person_twice"] += repeated
        counts["tiles"] += len(truth)
        counts["faces_found"] += len(found.faces)
        if not found.faces:
            continue
        scores, acceptance = model.scores_and_acceptance(FaceSet(found.chips, found.embeddings))
        before = [p.label for p in model.predictions(scores, acceptance)]
        jointly = name_jointly(model, scores, acceptance)
        after = [named.prediction.label for named in jointly]
        people_of = [_tile_person(face.box, tiles, truth) for face in found.faces]
        for when, names in (("before", before), ("after", after)):
            named = Counter(name for name in names if name != UNKNOWN)
            counts[f"{when}_photos_naming_a_person_twice"] += any(n > 1 for n in named.values())
            for name, person in zip(names, people_of):
                counts[f"{when}_faces_{_outcome(name, person)}"] += 1
        for named, person in zip(jointly, people_of):
            if named.assigned:  # before, it was named its best match
                was = "right" if named.best_match == person else "wrong"
                now = _outcome(named.prediction.label, person)
                changed[f"{was} -> {now}"] += 1
    result = {"people": len(people), "model": "centroid", "threshold": model.threshold_,
              "faces_per_photo": list(GROUP_FACES), **counts, "changed_by_joint_naming": dict(changed)}
    print(f"  {counts['photos']} group photos ({counts['photos_with_a_person_twice']} with a person twice): "
          f"a person named twice in {counts['before_photos_naming_a_person_twice']} one by one, "
          f"{counts['after_photos_naming_a_person_twice']} jointly", flush=True)
    return result


def _outcome(name: str, person: str | None) -> str:
    return "unknown" if name == UNKNOWN else "right" if name == person else "wrong"


def _tile_person(box: tuple, tiles: list[tuple[int, int, int, int]], truth: list[str]) -> str | None:
    """The person of the tile a face's box centre falls in; None outside every tile."""
    x, y = box[0] + box[2] / 2, box[1] + box[3] / 2
    for (left, top, right, bottom), person in zip(tiles, truth):
        if left <= x < right and top <= y < bottom:
            return person
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("pairs", "groups"), help="run one part (the other's results are kept)")
    parser.add_argument("--limit-folds", type=int, help="pairs of the first N folds only (quick runs)")
    parser.add_argument("--group-photos", type=int, default=GROUP_PHOTOS)
    args = parser.parse_args(argv)
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    datasets = load_settings().datasets_dir
    lfw = datasets / "lfw-deepfunneled"
    pipeline = face_pipeline()
    summary = json.loads(RESULTS.read_text()) if args.only and RESULTS.exists() else {}
    if args.only in (None, "pairs"):
        summary["pairs"] = pairs_part(pipeline, lfw, datasets / "lfw-meta" / "pairs.txt", args.limit_folds)
    if args.only in (None, "groups"):
        summary["groups"] = groups_part(pipeline, lfw, args.group_photos)
    summary.update(machine_info(load_at_start), bench_s=round(time.perf_counter() - started, 1))
    full_run = not args.limit_folds and args.group_photos == GROUP_PHOTOS  # quick runs leave the results alone
    publish(summary, RESULTS if full_run else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

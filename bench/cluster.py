"""Clusters of unknown faces on LFW: every photo's subject as an unknown face (5,749 people, most with one photo,
as in a real inbox), people split in two halves by a fixed seed; the clusterer's parameters (pipeline.clusters:
threshold, neighbours) and the baseline's threshold are chosen on one half, both are measured on the other.

    python -m bench.cluster [--scale 1000000]

The baseline is plain average-linkage agglomerative clustering on cosine distance (scikit-learn). Parameters are
chosen for the highest BCubed F among those with BCubed precision at least PRECISION_FLOOR on the tuning half (a
wrong merge costs a user more than a split), else the highest F. The faces come from var/bench/lfw-subjects.npz,
made on first run from bench.search's faces (var/bench/lfw-faces.npz) or with the product's pipeline (a few
minutes here). The last line printed is the JSON written to
bench/results/cluster.json.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import numpy as np

from bench.machine import machine_info
from bench.output import publish
from config import REPO_ROOT, load_settings
from pipeline.clusters import FaceClusterer, bcubed, pairwise_f, unit

RESULTS = REPO_ROOT / "bench" / "results" / "cluster.json"
FACES = REPO_ROOT / "var" / "bench" / "lfw-subjects.npz"
INDEXED = REPO_ROOT / "var" / "bench" / "lfw-faces.npz"  # bench.search's: every face of every LFW photo
SEED = 0
PRECISION_FLOOR = 0.98
THRESHOLDS = (0.935, 0.94, 0.945, 0.95, 0.955, 0.96)
NEIGHBOURS = (10, 20, 40)
BASELINE_DISTANCES = (0.04, 0.05, 0.055, 0.06, 0.065, 0.07, 0.08)


def lfw_subjects() -> dict[str, np.ndarray]:
    """Each LFW photo's subject: keys, person, unit embedding (photos without a face left out). From bench.search's
    index of all LFW photos when it has run (the same pipeline, through a real recognition job), else made here."""
    if not FACES.exists() and INDEXED.exists():
        indexed = np.load(INDEXED)
        subject = indexed["main"]
        keys = np.array([key.split("/", 1)[1] for key in indexed["keys"][subject]])  # lfw/<person>/<photo>
        FACES.parent.mkdir(parents=True, exist_ok=True)
        np.savez(FACES, keys=keys, embeddings=indexed["embeddings"][subject], photos=len(np.unique(indexed["keys"])))
    if not FACES.exists():
        from bench.lfw_faces import describe, face_pipeline

        lfw = load_settings().datasets_dir / "lfw-deepfunneled"
        paths = sorted(lfw.glob("*/*.jpg"))
        subjects = describe(face_pipeline(), ((f"{p.parent.name}/{p.name}", p.read_bytes()) for p in paths),
                            len(paths), "LFW subjects")
        found = subjects.found
        FACES.parent.mkdir(parents=True, exist_ok=True)
        np.savez(FACES, keys=np.array(subjects.keys)[found], embeddings=subjects.embeddings[found],
                 photos=len(paths))
    saved = np.load(FACES)
    keys = saved["keys"]
    return {"keys": keys, "person": np.array([key.split("/")[0] for key in keys]),
            "embeddings": unit(saved["embeddings"]), "photos": int(saved["photos"])}


def halves(person: np.ndarray) -> np.ndarray:
    """True for faces of the tuning half of the people (a fixed seed), False for the measured half."""
    people = np.unique(person)
    tuning = set(np.random.default_rng(SEED).permutation(people)[:len(people) // 2])
    return np.array([p in tuning for p in person])


def best(scored: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """The parameters with the highest F among those precise enough (else the highest F)."""
    precise = [entry for entry in scored if entry[1]["bcubed_precision"] >= PRECISION_FLOOR]
    return max(precise or scored, key=lambda entry: entry[1]["bcubed_f"])


def baseline(vectors: np.ndarray, distance: float) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                   distance_threshold=distance).fit_predict(vectors)


def at_scale(real: np.ndarray, count: int, params: dict) -> dict:
    """Cluster `count` faces (the real ones and perturbed copies of them) as a cluster job would: the time, the
    clusters found, and the peak RSS of this process."""
    import resource

    from bench.scale_faces import distractors

    vectors = np.vstack([real, distractors(real, max(0, count - len(real)))])[:count]
    started = time.perf_counter()
    labels = FaceClusterer(**params).fit_predict(vectors)
    return {"faces": len(vectors), "seconds": round(time.perf_counter() - started, 1),
            "clusters_of_two_or_more": int(np.sum(np.bincount(labels) >= 2)),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "faces_are": "LFW's subjects and perturbed copies of them (cosine about 0.91 to their source)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=0,
                        help="also cluster this many faces (LFW's and lookalikes, bench.scale_faces): time, peak RSS")
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()[0]
    faces = lfw_subjects()
    tuning = halves(faces["person"])
    x_tune, y_tune = faces["embeddings"][tuning], faces["person"][tuning]
    x_test, y_test = faces["embeddings"][~tuning], faces["person"][~tuning]

    scored = []
    for threshold, neighbours in itertools.product(THRESHOLDS, NEIGHBOURS):
        params = {"threshold": threshold, "neighbours": neighbours}
        scored.append((params, bcubed(FaceClusterer(**params).fit_predict(x_tune), y_tune)))
    chosen, on_tuning = best(scored)
    clusterer = FaceClusterer(**chosen)
    labels = clusterer.fit_predict(x_test)
    measured = bcubed(labels, y_test)

    baseline_scored = [({"distance": d}, bcubed(baseline(x_tune, d), y_tune)) for d in BASELINE_DISTANCES]
    baseline_chosen, _ = best(baseline_scored)
    baseline_measured = bcubed(baseline(x_test, baseline_chosen["distance"]), y_test)

    started = time.perf_counter()
    FaceClusterer(**chosen).fit_predict(faces["embeddings"])
    seconds = time.perf_counter() - started

    summary = {
        "benchmark": "cluster",
        "photos": faces["photos"], "faces": len(faces["keys"]),
        "faces_measured": len(x_test), "people": int(len(np.unique(y_test))),
        "clusters": int(len(np.unique(labels))),
        **{key: round(value, 4) for key, value in measured.items()},
        "pairwise_f": round(pairwise_f(labels, y_test), 4),
        "baseline_bcubed_f": round(baseline_measured["bcubed_f"], 4),
        "baseline": {**baseline_chosen, **{k: round(v, 4) for k, v in baseline_measured.items()},
                     "method": "average-linkage agglomerative clustering, cosine distance (scikit-learn)"},
        "params": chosen, "on_tuning_half": {k: round(v, 4) for k, v in on_tuning.items()},
        "tuning_grid": [{**p, **{k: round(v, 4) for k, v in s.items()}} for p, s in scored],
        "seconds": round(seconds, 2), "seconds_for": f"clustering all {len(faces['keys'])} faces",
        "split": f"people in halves by numpy's default_rng({SEED}); parameters chosen on one, measured on the "
                 f"other ({len(x_tune)} and {len(x_test)} faces)",
        **machine_info(load_at_start),
    }
    if args.scale:
        summary["scale"] = at_scale(faces["embeddings"], args.scale, chosen)
    publish(summary, RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

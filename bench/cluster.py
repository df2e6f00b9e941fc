"""Clusters of unknown faces on LFW: every photo's subject as an unknown face (5,749 people, most with one photo,
as in a real inbox), people split in two halves by a fixed seed; the clusterer's link models (pipeline.cluster_links:
each round's logistic regression and the probability a link needs) and the baselines' thresholds are fitted and
chosen on one half, all are measured on the other.

    python -m bench.cluster [--save] [--scale 1000000]

--save writes the link models fitted here to pipeline/cluster_links.json, the ones the product uses.

Two baselines: Chinese whispers on links of similarity at least a threshold (this product's method before the
learned links), and plain average-linkage agglomerative clustering on cosine distance (scikit-learn). Parameters are
chosen for the highest BCubed F among those with BCubed precision at least PRECISION_FLOOR on the tuning half (a
wrong merge costs a user more than a split), else the highest F. The faces come from var/bench/lfw-subjects.npz,
made on first run from bench.search's faces (var/bench/lfw-faces.npz) or with the product's pipeline (a few
minutes here). The last line printed is the JSON written to
bench/results/cluster.json.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from bench.machine import machine_info
from bench.output import publish
from config import REPO_ROOT, load_settings
from pipeline.cluster_links import Clusters, LinkModel, LinkRounds, link_features
from pipeline.clusters import FaceClusterer, bcubed, chinese_whispers, nearest_neighbours, pairwise_f, unit

RESULTS = REPO_ROOT / "bench" / "results" / "cluster.json"
FACES = REPO_ROOT / "var" / "bench" / "lfw-subjects.npz"
INDEXED = REPO_ROOT / "var" / "bench" / "lfw-faces.npz"  # bench.search's: every face of every LFW photo
SEED = 0
PRECISION_FLOOR = 0.98
NEIGHBOURS = 20
ROUNDS = 2
CUTS = tuple(round(0.5 + 0.025 * step, 3) for step in range(19))  # a link's least probability: 0.5 to 0.95
THRESHOLDS = (0.935, 0.94, 0.945, 0.95, 0.955, 0.96)  # the similarity baseline's
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


def fit_links(vectors: np.ndarray, people: np.ndarray) -> tuple[LinkRounds, list[dict]]:
    """Each round's link model fitted on these faces (a link's label: both faces are one person), its cut chosen
    by `best` over CUTS with the rounds before it; and the BCubed scores of every cut tried."""
    vectors = unit(vectors)
    indices, similarities = nearest_neighbours(vectors, NEIGHBOURS)
    rounds: list[LinkModel] = []
    clusters, tried = None, []
    for number in range(1, ROUNDS + 1):
        faces, others, features = link_features(vectors, indices, similarities, 0, len(vectors), clusters)
        model = LinkModel.fit(features, people[faces] == people[others])
        scored = []
        for cut in CUTS:
            links = LinkRounds(NEIGHBOURS, (*rounds, model.with_cut(cut)))
            scored.append(({"round": number, "cut": cut}, bcubed(FaceClusterer(links=links).fit_predict(vectors),
                                                                  people)))
        chosen, _ = best(scored)
        rounds.append(model.with_cut(chosen["cut"]))
        tried += [{**p, **{k: round(v, 4) for k, v in s.items()}} for p, s in scored]
        clusters = Clusters.of(vectors, FaceClusterer(links=LinkRounds(NEIGHBOURS, tuple(rounds))).fit_predict(
            vectors))
    return LinkRounds(NEIGHBOURS, tuple(rounds)), tried


def small_inboxes(vectors: np.ndarray, people: np.ndarray, method: Callable[[np.ndarray], np.ndarray],
                  inboxes: int = 30) -> dict:
    """Mean BCubed scores (and the least precision) over small inboxes drawn from these faces by a fixed seed, each
    holding every photo of 6 people with 3 to 8 photos and one photo each of 20 people with one. A method's links
    must not depend on how many faces are clustered."""
    rng = np.random.default_rng(SEED + 1)
    names, counts = np.unique(people, return_counts=True)
    scores, sizes = [], []
    for _ in range(inboxes):
        chosen = np.concatenate([rng.choice(names[(counts >= 3) & (counts <= 8)], 6, replace=False),
                                 rng.choice(names[counts == 1], 20, replace=False)])
        inbox = np.isin(people, chosen)
        scores.append(bcubed(method(vectors[inbox]), people[inbox]))
        sizes.append(int(inbox.sum()))
    return {"inboxes": inboxes, "faces_each": round(float(np.mean(sizes)), 1),
            **{k: round(float(np.mean([s[k] for s in scores])), 4) for k in scores[0]},
            "least_precision": round(min(s["bcubed_precision"] for s in scores), 4)}


def similarity_links(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Chinese whispers on the links of similarity at least threshold among each face's NEIGHBOURS nearest."""
    vectors = unit(vectors)
    indices, similarities = nearest_neighbours(vectors, NEIGHBOURS)
    rows = np.repeat(np.arange(len(vectors)), indices.shape[1])
    cols, sims = indices.ravel(), similarities.ravel()
    keep = (cols >= 0) & (sims >= threshold)
    a, b = np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])
    _, first = np.unique(a.astype(np.int64) * len(vectors) + b, return_index=True)
    return chinese_whispers(len(vectors), a[first], b[first], sims[keep][first])


def baseline(vectors: np.ndarray, distance: float) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                   distance_threshold=distance).fit_predict(vectors)


def at_scale(real: np.ndarray, count: int, links: LinkRounds) -> dict:
    """Cluster `count` faces (the real ones and perturbed copies of them) as a cluster job would: the time, the
    clusters found, and the peak RSS of this process."""
    import resource

    from bench.scale_faces import distractors

    vectors = np.vstack([real, distractors(real, max(0, count - len(real)))])[:count]
    started = time.perf_counter()
    labels = FaceClusterer(links=links).fit_predict(vectors)
    return {"faces": len(vectors), "seconds": round(time.perf_counter() - started, 1),
            "clusters_of_two_or_more": int(np.sum(np.bincount(labels) >= 2)),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "faces_are": "LFW's subjects and perturbed copies of them (cosine about 0.91 to their source)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=0,
                        help="also cluster this many faces (LFW's and lookalikes, bench.scale_faces): time, peak RSS")
    parser.add_argument("--save", action="store_true",
                        help="write the link models fitted here to pipeline/cluster_links.json (the product's)")
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()[0]
    faces = lfw_subjects()
    tuning = halves(faces["person"])
    x_tune, y_tune = faces["embeddings"][tuning], faces["person"][tuning]
    x_test, y_test = faces["embeddings"][~tuning], faces["person"][~tuning]
    split = (f"people in halves by numpy's default_rng({SEED}); parameters fitted and chosen on one, measured on the "
             f"other ({len(x_tune)} and {len(x_test)} faces)")

    links, tried = fit_links(x_tune, y_tune)
    links = LinkRounds(links.neighbours, links.rounds, f"bench.cluster: LFW subjects, {split}")
    if args.save:
        links.save()
    labels = FaceClusterer(links=links).fit_predict(x_test)
    measured = bcubed(labels, y_test)

    def chosen_and_measured(method, grid: list[dict]) -> dict:
        chosen, _ = best([(params, bcubed(method(x_tune, **params), y_tune)) for params in grid])
        return {**chosen, **{k: round(v, 4) for k, v in bcubed(method(x_test, **chosen), y_test).items()}}

    similarity = chosen_and_measured(similarity_links, [{"threshold": t} for t in THRESHOLDS])
    agglomerative = chosen_and_measured(baseline, [{"distance": d} for d in BASELINE_DISTANCES])

    inboxes = {"learned_links": small_inboxes(x_test, y_test, FaceClusterer(links=links).fit_predict),
               "similarity_links": small_inboxes(x_test, y_test, lambda vectors: similarity_links(
                   vectors, similarity["threshold"]))}

    started = time.perf_counter()
    FaceClusterer(links=links).fit_predict(faces["embeddings"])
    seconds = time.perf_counter() - started

    summary = {
        "benchmark": "cluster",
        "photos": faces["photos"], "faces": len(faces["keys"]),
        "faces_measured": len(x_test), "people": int(len(np.unique(y_test))),
        "clusters": int(len(np.unique(labels))),
        **{key: round(value, 4) for key, value in measured.items()},
        "pairwise_f": round(pairwise_f(labels, y_test), 4),
        "baseline_bcubed_f": agglomerative["bcubed_f"],
        "baseline": {**agglomerative, "method": "average-linkage agglomerative clustering, cosine distance "
                                                "(scikit-learn)"},
        "similarity_links": {**similarity, "method": "Chinese whispers on links of similarity at least threshold "
                                                     "(before the learned links)"},
        "small_inboxes": inboxes,
        "links": links.to_json(), "tuning_grid": tried,
        "seconds": round(seconds, 2), "seconds_for": f"clustering all {len(faces['keys'])} faces",
        "split": split,
        **machine_info(load_at_start),
    }
    if args.scale:
        summary["scale"] = at_scale(faces["embeddings"], args.scale, links)
    publish(summary, RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Clusters of faces nobody has named: groups that are each probably one person, for a person to name at once.

Method (chosen with bench.cluster on half of LFW's people, measured on the other half): each face's nearest
neighbours (faiss: exact search up to EXACT_MAX faces, an HNSW graph above, so that a million faces never need a
distance matrix); a learned model judges each face's link to each neighbour (pipeline.cluster_links: not its
similarity alone, but the similarity in its neighbourhood); then Chinese whispers (Biemann 2006, as dlib's face
clustering) on the links made, weighted by their probability: each face in turn takes the cluster with the most
link weight among its neighbours, until no face changes. Unlike single or average linkage, one lookalike link
cannot merge two people's groups: a face follows the weight of all its neighbours. A second round judges the links
again knowing the first round's clusters (a face similar to a whole group is more surely one of it), and clusters
again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pipeline.cluster_links import Clusters, LinkRounds, judged_links, shipped_links

if TYPE_CHECKING:
    from pipeline.face_index import FaceIndex
    from pipeline.storage import Storage

EXACT_MAX = 200_000  # above this many faces, neighbours come from an HNSW graph
REPRESENTATIVES = 6  # chips shown per cluster: the faces nearest its mean


def nearest_neighbours(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, similarities) of each unit vector's k nearest others (-1 where there are fewer)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, np.float32)
    k = min(k, len(vectors) - 1)
    if k < 1:
        return np.full((len(vectors), 0), -1), np.zeros((len(vectors), 0), np.float32)
    if len(vectors) <= EXACT_MAX:
        index = faiss.IndexFlatIP(vectors.shape[1])
    else:
        index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = max(64, 2 * k)
    index.add(vectors)
    similarities, indices = index.search(vectors, k + 1)
    similarities[indices < 0] = -1.0  # fewer found than asked (HNSW): no similarity
    own = indices == np.arange(len(vectors))[:, None]
    own[~own.any(axis=1), -1] = True  # itself not among them (a duplicate ranked first): drop the farthest
    return indices[~own].reshape(len(vectors), k), similarities[~own].reshape(len(vectors), k)


def chinese_whispers(count: int, a: np.ndarray, b: np.ndarray, weight: np.ndarray, iterations: int = 30,
                     seed: int = 0) -> np.ndarray:
    """A cluster number per node of the weighted graph with edges (a, b)."""
    order = np.argsort(np.concatenate([a, b]), kind="stable")
    heads = np.concatenate([a, b])[order]
    tails = np.concatenate([b, a])[order]
    weights = np.concatenate([weight, weight])[order]
    starts = np.searchsorted(heads, np.arange(count + 1))
    labels = np.arange(count)
    rng = np.random.default_rng(seed)
    for _ in range(iterations):
        changed = 0
        for node in rng.permutation(count):
            start, stop = starts[node], starts[node + 1]
            if start == stop:
                continue
            votes: dict[int, float] = {}
            for tail, w in zip(tails[start:stop].tolist(), weights[start:stop].tolist()):
                votes[labels[tail]] = votes.get(labels[tail], 0.0) + w
            best = max(votes, key=votes.__getitem__)
            if best != labels[node]:
                labels[node] = best
                changed += 1
        if not changed:
            break
    return np.unique(labels, return_inverse=True)[1]


@dataclass
class FaceClusterer:
    """fit_predict(vectors) -> a cluster number per face (a face alone is a cluster of one).

    threshold: the least cosine similarity of any link (by default none: the link model decides);
    links: the rounds of learned link models (by default those bench.cluster fitted, pipeline/cluster_links.json)."""

    threshold: float = -1.0
    links: LinkRounds = field(default_factory=shipped_links)
    iterations: int = 30
    seed: int = 0

    def fit_predict(self, vectors: np.ndarray) -> np.ndarray:
        vectors = unit(vectors)
        if len(vectors) < 2:
            return np.zeros(len(vectors), np.int64)
        indices, similarities = nearest_neighbours(vectors, self.links.neighbours)
        labels = np.arange(len(vectors))
        for model in self.links.rounds:
            clusters = Clusters.of(vectors, labels) if model.uses_clusters else None
            a, b, weight = judged_links(vectors, indices, similarities, model, self.threshold, clusters)
            labels = chinese_whispers(len(vectors), a, b, weight, self.iterations, self.seed)
        return labels


def cluster_index(index: FaceIndex, clusterer: FaceClusterer, jobs: list[str] = (), key_prefix: str | None = None,
                  min_size: int = 2, only: set[tuple[str, str, int]] | None = None) -> dict:
    """The clusters of an index's faces (those of the given jobs, under key_prefix, and when given only those
    (job, key, face) in `only`): per cluster of at least min_size faces, largest first, its faces (job, key,
    face, box, whether it is its photo's subject, similarity to the cluster's mean), its representatives (the
    REPRESENTATIVES faces nearest its mean) and its photos; and the counts."""
    from pipeline.face_index import filter_sql

    query = index.table().search().select(["vector", "job", "key", "face", "box", "main"])
    where = filter_sql(jobs, key_prefix)
    if where:
        query = query.where(where)
    rows = query.limit(None).to_arrow()
    if only is not None:
        import pyarrow as pa

        keep = [(j, k, f) in only for j, k, f in zip(rows["job"].to_pylist(), rows["key"].to_pylist(),
                                                    rows["face"].to_pylist())]
        rows = rows.filter(pa.array(keep, pa.bool_()))
    vectors = unit(np.asarray(rows["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False),
                              np.float32).reshape(rows.num_rows, -1)) if rows.num_rows else np.zeros((0, 128))
    labels = clusterer.fit_predict(vectors)
    meta = rows.drop(["vector"]).to_pylist()
    sizes = np.bincount(labels) if len(labels) else np.zeros(0, int)
    clusters = []
    for label in np.argsort(-sizes, kind="stable"):
        if sizes[label] < max(min_size, 1):
            break
        members = np.flatnonzero(labels == label)
        mean = unit(vectors[members].mean(axis=0))[0]
        similarity = vectors[members] @ mean
        ranked = members[np.argsort(-similarity)]
        faces = [{**meta[i], "box": [round(v, 1) for v in meta[i]["box"]],
                  "similarity": round(float(vectors[i] @ mean), 4)} for i in ranked]
        clusters.append({"id": len(clusters), "size": len(members), "faces": faces,
                         "representatives": faces[:REPRESENTATIVES],
                         "photos": list(dict.fromkeys(face["key"] for face in faces))})
    return {"faces": len(vectors), "clusters": clusters, "faces_in_clusters": sum(c["size"] for c in clusters),
            "faces_alone": int(np.sum(sizes[sizes < max(min_size, 1)])),
            "method": {"threshold": clusterer.threshold, "neighbours": clusterer.links.neighbours,
                       "rounds": len(clusterer.links.rounds),
                       "algorithm": "Chinese whispers on learned links of the k-nearest-neighbour graph"}}


def with_edits(found: dict, edits: dict[int, dict]) -> dict:
    """The clusters as a person edited them: a cluster merged into another (``{"merged_into": id}``, followed
    to the end of a chain) gives it its faces and photos and stays listed, empty, with ``merged_into``; one
    marked ``{"not_one_person": true}`` keeps its faces and says so. Ids never change."""
    clusters = {c["id"]: {**c, "faces": list(c["faces"]), "photos": list(c["photos"])} for c in found["clusters"]}

    def target(cid: int, seen: set[int]) -> int:
        into = edits.get(cid, {}).get("merged_into")
        if into is None or into in seen or into not in clusters:
            return cid
        return target(into, seen | {cid})

    for cid in sorted(clusters):
        into = target(cid, set())
        if into != cid:
            clusters[into]["faces"] += clusters[cid]["faces"]
            clusters[into]["photos"] = list(dict.fromkeys(clusters[into]["photos"] + clusters[cid]["photos"]))
            clusters[into]["merged_from"] = sorted(clusters[into].get("merged_from", []) + [cid])
            clusters[cid].update(faces=[], photos=[], representatives=[], merged_into=into)
    for cid, edit in edits.items():
        if cid in clusters and edit.get("not_one_person"):
            clusters[cid]["not_one_person"] = True
    for cluster in clusters.values():
        cluster["size"] = len(cluster["faces"])
    return {**found, "clusters": [clusters[cid] for cid in sorted(clusters)]}


def read_clusters(storage: Storage, key: str) -> dict:
    """A cluster job's clusters (clusters.json under key) with the edits stored beside it (edits/<id>.json)."""
    folder = key.rsplit("/", 1)[0]
    edits = {int(k.rsplit("/", 1)[1].removesuffix(".json")): storage.get_json(k)
             for k in storage.list(f"{folder}/edits/") if k.endswith(".json")}
    return with_edits(storage.get_json(key), edits)


def edit_cluster(storage: Storage, key: str, cluster: int, merged_into: int | None, not_one_person: bool) -> dict:
    """Record a person's edit of one cluster (merge it into another, or mark it not one person; None and False
    undo) and return the edited clusters. ValueError naming the problem for an unknown cluster or a merge into
    itself, or into one merged into it."""
    found = read_clusters(storage, key)
    ids = {c["id"] for c in found["clusters"]}
    for cid in (cluster, merged_into):
        if cid is not None and cid not in ids:
            raise ValueError(f"there is no cluster {cid} (the clusters are 0 to {len(ids) - 1})")
    if merged_into == cluster:
        raise ValueError(f"cluster {cluster} cannot be merged into itself")
    if merged_into is not None:
        into = next(c for c in found["clusters"] if c["id"] == merged_into)
        final = into.get("merged_into", merged_into)
        if final == cluster:
            raise ValueError(f"cluster {merged_into} is merged into cluster {cluster}: merging it back would make "
                             "a loop")
    storage.put_json(f"{key.rsplit('/', 1)[0]}/edits/{cluster}.json",
                     {"merged_into": merged_into, "not_one_person": not_one_person})
    return read_clusters(storage, key)


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.atleast_2d(np.asarray(vectors, np.float32))
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def bcubed(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """BCubed precision, recall and F of clusters against the true people (per face, averaged over faces)."""
    _, cluster = np.unique(labels, return_inverse=True)
    _, person = np.unique(truth, return_inverse=True)
    _, pair, both = np.unique(cluster.astype(np.int64) * (person.max() + 1) + person, return_inverse=True,
                              return_counts=True)
    shared = both[pair]
    precision = float(np.mean(shared / np.bincount(cluster)[cluster]))
    recall = float(np.mean(shared / np.bincount(person)[person]))
    return {"bcubed_precision": precision, "bcubed_recall": recall,
            "bcubed_f": 2 * precision * recall / (precision + recall)}


def pairwise_f(labels: np.ndarray, truth: np.ndarray) -> float:
    """F of the pairs of faces put together against the pairs of faces of one person."""
    def pairs(counts: np.ndarray) -> float:
        return float(np.sum(counts * (counts - 1) / 2))

    _, cluster = np.unique(labels, return_inverse=True)
    _, person = np.unique(truth, return_inverse=True)
    both = pairs(np.unique(cluster.astype(np.int64) * (person.max() + 1) + person, return_counts=True)[1])
    precision, recall = both / max(pairs(np.bincount(cluster)), 1), both / max(pairs(np.bincount(person)), 1)
    return 2 * precision * recall / max(precision + recall, 1e-12)

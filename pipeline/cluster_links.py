"""Which of a face's nearest neighbours are probably the same person: a learned model of a link.

A similarity alone is a poor link: dlib's descriptors fill a narrow cone, so two photos of one person in different
light can be less similar than two lookalikes. A link is judged in its neighbourhood instead: its similarity, how
high each face ranks the other among its neighbours and how far it falls below each face's nearest neighbour; in a
second round, also how similar each face is to the other's cluster of the first round and how large those
clusters are (a face that matches a whole group is more surely one of it than a face that matches one member).
Nothing that depends on how many faces are clustered: a model that also read how crowded each face's
neighbourhood is scored better on LFW's 6,385 faces but merged people in inboxes of 60 faces (bench.cluster,
`small_inboxes`). Each round is a logistic regression over these features, fitted by
`python -m bench.cluster --save` on half of LFW's people and stored in cluster_links.json beside this file with
the probability a link needs in that round (chosen on the same half; the other half measures it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHIPPED = Path(__file__).with_name("cluster_links.json")
NEIGHBOUR_FEATURES = ("similarity", "rank", "rank_back", "below_nearest", "below_nearest_other")
CLUSTER_FEATURES = ("to_cluster", "to_cluster_other", "log_cluster", "log_cluster_other", "same_cluster")
CHUNK = 10_000  # faces whose links are judged at once (bounds memory at a million faces)


@dataclass(frozen=True)
class Clusters:
    """A round's clusters, as the next round's features need them: each face's cluster, each cluster's size and
    the sum of its unit vectors."""

    labels: np.ndarray
    sizes: np.ndarray
    sums: np.ndarray

    @classmethod
    def of(cls, vectors: np.ndarray, labels: np.ndarray) -> Clusters:
        sums = np.zeros((int(labels.max()) + 1, vectors.shape[1]), np.float32)
        np.add.at(sums, labels, vectors)
        return cls(labels, np.bincount(labels), sums)


def link_features(vectors: np.ndarray, indices: np.ndarray, similarities: np.ndarray, start: int, stop: int,
                  clusters: Clusters | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(faces, neighbours, features) for the links from faces start..stop to each of their nearest neighbours
    (`indices`, `similarities`: every face's, from pipeline.clusters.nearest_neighbours); the features are
    NEIGHBOUR_FEATURES, then CLUSTER_FEATURES when the clusters of a first round are given."""
    k = indices.shape[1]
    own = indices[start:stop]
    faces = np.repeat(np.arange(start, stop), k)
    others, similarity = own.ravel(), similarities[start:stop].ravel()
    rank = np.tile(np.arange(k), stop - start)
    valid = others >= 0
    faces, others, similarity, rank = faces[valid], others[valid], similarity[valid], rank[valid]
    back = indices[others] == faces[:, None]
    rank_back = np.where(back.any(axis=1), back.argmax(axis=1), k)
    nearest = similarities[:, 0]
    columns = [similarity, rank, rank_back, nearest[faces] - similarity, nearest[others] - similarity]
    if clusters is not None:
        columns += _cluster_columns(vectors, faces, others, similarity, clusters)
    return faces, others, np.column_stack(columns).astype(np.float32)


def _cluster_columns(vectors: np.ndarray, faces: np.ndarray, others: np.ndarray, similarity: np.ndarray,
                     clusters: Clusters) -> list[np.ndarray]:
    same = clusters.labels[faces] == clusters.labels[others]

    def to_cluster(of: np.ndarray, face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Mean similarity of `face` to the rest of of's cluster (without of, and without face if it is in it).
        label = clusters.labels[of]
        rest = clusters.sums[label] - vectors[of] - np.where(same[:, None], vectors[face], 0)
        count = clusters.sizes[label] - 1 - same
        mean = np.einsum("ed,ed->e", rest, vectors[face]) / np.maximum(count, 1)
        return np.where(count > 0, mean, similarity), count

    to_face_cluster, face_rest = to_cluster(faces, others)
    to_other_cluster, other_rest = to_cluster(others, faces)
    return [to_face_cluster, to_other_cluster, np.log1p(face_rest), np.log1p(other_rest), same.astype(np.float32)]


@dataclass(frozen=True)
class LinkModel:
    """One round: P(same person) = logistic(features . weights + bias); a link is made at `cut` or more."""

    features: tuple[str, ...]
    weights: np.ndarray
    bias: float
    cut: float

    @property
    def uses_clusters(self) -> bool:
        return len(self.features) > len(NEIGHBOUR_FEATURES)

    def probability(self, features: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(features.astype(np.float64) @ self.weights + self.bias)))

    @classmethod
    def fit(cls, features: np.ndarray, same: np.ndarray, cut: float = 0.5) -> LinkModel:
        """Logistic regression on standardised features (link_features' columns, with or without the cluster
        ones), the standardisation folded into the weights."""
        from sklearn.linear_model import LogisticRegression

        mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-12
        fitted = LogisticRegression(max_iter=5000).fit((features - mean) / scale, same)
        weights = fitted.coef_[0] / scale
        names = (NEIGHBOUR_FEATURES + CLUSTER_FEATURES)[:features.shape[1]]
        return cls(names, weights, float(fitted.intercept_[0] - weights @ mean), cut)

    def with_cut(self, cut: float) -> LinkModel:
        return LinkModel(self.features, self.weights, self.bias, cut)

    def to_json(self) -> dict:
        return {"features": list(self.features), "weights": [round(float(w), 8) for w in self.weights],
                "bias": round(self.bias, 8), "cut": self.cut}

    @classmethod
    def from_json(cls, data: dict) -> LinkModel:
        """ValueError naming the difference if the stored features are not the ones link_features computes."""
        if tuple(data["features"]) not in (NEIGHBOUR_FEATURES, NEIGHBOUR_FEATURES + CLUSTER_FEATURES):
            raise ValueError(f"a link model over features {data['features']} cannot be used: this code computes "
                             f"{list(NEIGHBOUR_FEATURES)}, then {list(CLUSTER_FEATURES)}; fit it again "
                             "(python -m bench.cluster --save)")
        return cls(tuple(data["features"]), np.array(data["weights"], np.float64), float(data["bias"]),
                   float(data["cut"]))


@dataclass(frozen=True)
class LinkRounds:
    """The rounds of linking and clustering, and how many neighbours of each face their features read."""

    neighbours: int
    rounds: tuple[LinkModel, ...]
    fitted_on: str = ""

    def to_json(self) -> dict:
        return {"neighbours": self.neighbours, "fitted_on": self.fitted_on,
                "rounds": [model.to_json() for model in self.rounds]}

    @classmethod
    def from_json(cls, data: dict) -> LinkRounds:
        return cls(int(data["neighbours"]), tuple(LinkModel.from_json(r) for r in data["rounds"]),
                   data.get("fitted_on", ""))

    def save(self, path: Path = SHIPPED) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")


def shipped_links() -> LinkRounds:
    """The link rounds fitted by bench.cluster (pipeline/cluster_links.json)."""
    return LinkRounds.from_json(json.loads(SHIPPED.read_text()))


def judged_links(vectors: np.ndarray, indices: np.ndarray, similarities: np.ndarray, model: LinkModel,
                 least_similarity: float, clusters: Clusters | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """(a, b, probability) of each link the model makes (probability at its cut or more, similarity at
    least_similarity or more), each pair of faces once (a < b) with the higher of its two directions' probability."""
    found = []
    for start in range(0, len(vectors), CHUNK):
        faces, others, features = link_features(vectors, indices, similarities, start,
                                                min(start + CHUNK, len(vectors)), clusters)
        probability = model.probability(features)
        keep = (probability >= model.cut) & (features[:, 0] >= least_similarity)
        found.append((faces[keep], others[keep], probability[keep]))
    faces, others, probability = (np.concatenate(parts) for parts in zip(*found)) if found else (
        np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    a, b = np.minimum(faces, others), np.maximum(faces, others)
    order = np.lexsort((-probability, b, a))
    pair = a[order].astype(np.int64) * len(vectors) + b[order]
    first = order[np.r_[True, pair[1:] != pair[:-1]]] if len(pair) else order
    return a[first], b[first], probability[first]

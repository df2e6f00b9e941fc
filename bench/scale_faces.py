"""Faces for the search benchmarks: real LFW embeddings, distractors made from them, and exact search.

Distractors are perturbed copies of real LFW embeddings, never uniform random vectors: random unit vectors
in 128 dimensions are nearly orthogonal to every face and to each other, so an ANN index finds the true
neighbours among them almost for free. dlib's descriptors fill a narrow cone (two different people's faces
have a cosine similarity of 0.84 at the median, the same person's 0.96), so the noise is not isotropic
either: it is Gaussian with the real faces' own covariance, which keeps the copies on the faces' manifold.
It is scaled so that a copy's cosine similarity to its source is about DISTRACTOR_COSINE, the similarity of
the closest 1% of different-person pairs: a copy is a stranger who resembles someone, as a large archive has
many of, and not that person at the usual thresholds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DIM = 128
# Cosine similarity of a distractor to the real face it was made from: LFW's different-person pairs are
# below it 99% of the time, its same-person pairs above it 95% of the time.
DISTRACTOR_COSINE = 0.91


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def distractors(real: np.ndarray, count: int, seed: int = 0, cosine: float = DISTRACTOR_COSINE,
                batch: int = 200_000) -> np.ndarray:
    """count unit vectors, each a random real face (unit rows of real) plus noise shaped like the real faces'
    covariance, at a cosine similarity of about `cosine` from it."""
    rng = np.random.default_rng(seed)
    source = unit(real)
    covariance = np.cov(source, rowvar=False)
    shape = np.linalg.cholesky(covariance + 1e-9 * np.eye(len(covariance))).astype(np.float32)
    # For a unit x and independent noise n, cos(x, x + n) ~ 1 / sqrt(1 + E|n|^2), E|n|^2 = s^2 trace(cov).
    scale = np.sqrt((1 / cosine**2 - 1) / np.trace(covariance))
    out = np.empty((count, source.shape[1]), np.float32)
    for start in range(0, count, batch):
        size = min(batch, count - start)
        picked = source[rng.integers(0, len(source), size)]
        noise = rng.standard_normal(picked.shape, dtype=np.float32) @ shape.T * scale
        out[start:start + size] = unit(picked + noise)
    return out


def exact_top_k(index_vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 250_000) -> np.ndarray:
    """The row numbers of the k most similar rows of index_vectors (unit) to each query (unit), by brute
    force: the ground truth an ANN index is measured against."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_rows = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(index_vectors), block):
        scores = queries @ index_vectors[start:start + block].T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        best_scores = np.hstack([best_scores, np.take_along_axis(scores, top, axis=1)])
        best_rows = np.hstack([best_rows, top + start])
        keep = np.argsort(-best_scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
        best_rows = np.take_along_axis(best_rows, keep, axis=1)
    return best_rows


def recall_against(found: list[list[int]], truth: np.ndarray) -> float:
    """Mean share of each query's true top-k rows that were found."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth.tolist())]))


def load_faces(path: Path) -> dict[str, np.ndarray]:
    """A faces file written by bench.search: keys, person, main (the photo's subject), embeddings (unit)."""
    with np.load(path) as data:
        return {name: data[name] for name in data.files}

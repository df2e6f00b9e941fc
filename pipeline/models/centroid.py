"""The `centroid` model: each person is the mean of their face embeddings (nearest class mean).

People can be added or updated (enrolled) without retraining anyone else: a person's centroid
depends on their own photos only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import numpy as np

from pipeline.models.base import EpochProgress, FaceSet, IdentityModel, l2_normalize


class CentroidModel(IdentityModel):
    model_type = "centroid"

    def __init__(self) -> None:
        super().__init__()
        self.centroids_: np.ndarray | None = None
        self.counts_: list[int] = []

    def fit(self, train: FaceSet, val: FaceSet, on_epoch: EpochProgress | None = None) -> Self:
        # One pass over the embeddings, no epochs: nothing to report until it is done.
        self.labels_, self.centroids_, self.counts_ = [], np.zeros((0, train.embeddings.shape[1])), []
        self.enroll(train)
        self.calibrate(val)
        return self

    def enroll(self, faces: FaceSet) -> list[str]:
        """Add the people in faces, or replace the centroids of those already enrolled; returns them.
        The threshold is kept: it was calibrated on validation faces and stays meaningful."""
        unit = l2_normalize(faces.embeddings)
        labels = np.asarray(faces.labels)
        people = sorted(set(faces.labels))
        for person in people:
            centroid = l2_normalize(unit[labels == person].mean(axis=0, keepdims=True))
            count = int((labels == person).sum())
            if person in self.labels_:
                index = self.labels_.index(person)
                self.centroids_[index], self.counts_[index] = centroid[0], count
            else:
                self.labels_.append(person)
                self.centroids_ = np.vstack([self.centroids_, centroid])
                self.counts_.append(count)
        return people

    def class_scores(self, faces: FaceSet) -> np.ndarray:
        return l2_normalize(faces.embeddings) @ self.centroids_.T

    def leave_one_out_scores(self, faces: FaceSet) -> np.ndarray:
        """class_scores of each face as if it had not been enrolled: its own person's centroid made
        from that person's other faces, everyone else's as enrolled. faces must be exactly the faces
        their people were enrolled with (as after enroll(faces)); this measures an enrolment on the
        photos it enrolled without scoring a face against a centroid it is part of. A person with a
        single face has nothing left to be compared with: their rows are NaN."""
        unit = l2_normalize(faces.embeddings)
        scores = unit @ self.centroids_.T
        labels = np.asarray(faces.labels)
        for person in sorted(set(faces.labels)):
            rows = np.flatnonzero(labels == person)
            if len(rows) < 2:
                scores[rows] = np.nan
                continue
            # The mean of the other unit vectors points the same way as their sum minus this one.
            others = l2_normalize(unit[rows].sum(axis=0) - unit[rows])
            scores[rows, self.labels_.index(person)] = np.sum(unit[rows] * others, axis=1)
        return scores

    def save_weights(self, directory: Path) -> None:
        np.save(directory / "centroids.npy", self.centroids_)
        np.save(directory / "counts.npy", np.asarray(self.counts_))

    def load_weights(self, directory: Path) -> None:
        self.centroids_ = np.load(directory / "centroids.npy")
        self.counts_ = np.load(directory / "counts.npy").tolist()

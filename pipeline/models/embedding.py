"""The `embedding` model: a small Keras head on the ResNet embeddings.

The head (softmax over the enrolled people) names the most likely person; the face is accepted as
that person by its cosine similarity to the person's mean embedding, which rejects strangers far
better than the softmax probability does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import numpy as np

from pipeline.models.base import EpochProgress, FaceSet, IdentityModel, class_means, fit_keras, l2_normalize


class EmbeddingHead(IdentityModel):
    model_type = "embedding"

    def __init__(self, hidden_units: int = 256, dropout: float = 0.3, learning_rate: float = 1e-3,
                 epochs: int = 200, batch_size: int = 64, patience: int = 15, seed: int = 0) -> None:
        super().__init__()
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.seed = seed
        self.network_ = None
        self.centroids_: np.ndarray | None = None

    def _build(self, people: int):
        import keras
        from keras import layers

        inputs = keras.Input(shape=(128,), name="embedding")
        x = layers.UnitNormalization(name="l2_normalize")(inputs)
        x = layers.Dense(self.hidden_units, activation="relu", name="hidden")(x)
        x = layers.Dropout(self.dropout, name="dropout")(x)
        outputs = layers.Dense(people, activation="softmax", name="identity")(x)
        return keras.Model(inputs, outputs, name="identity_head")

    def fit(self, train: FaceSet, val: FaceSet, on_epoch: EpochProgress | None = None) -> Self:
        import keras

        keras.utils.set_random_seed(self.seed)
        y_train, y_val = self.learn_labels(train, val)
        people = len(self.labels_)
        self.network_ = self._build(people)
        self.history_ = fit_keras(self.network_, train.embeddings, y_train, val.embeddings, y_val,
                                  learning_rate=self.learning_rate, epochs=self.epochs,
                                  batch_size=self.batch_size, patience=self.patience,
                                  on_epoch=on_epoch)
        self.centroids_ = class_means(l2_normalize(train.embeddings), y_train, people)
        self.calibrate(val)
        return self

    def class_scores(self, faces: FaceSet) -> np.ndarray:
        return np.asarray(self.network_.predict_on_batch(np.asarray(faces.embeddings, np.float32)))

    def acceptance(self, faces: FaceSet) -> np.ndarray:
        return l2_normalize(faces.embeddings) @ self.centroids_.T

    def save_weights(self, directory: Path) -> None:
        self.network_.save(directory / "head.keras")
        np.save(directory / "centroids.npy", self.centroids_)

    def load_weights(self, directory: Path) -> None:
        import keras

        self.network_ = keras.models.load_model(directory / "head.keras")
        self.centroids_ = np.load(directory / "centroids.npy")

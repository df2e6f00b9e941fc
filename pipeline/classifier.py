"""An identity classifier on face embeddings: a small Keras head plus an open-set `unknown` decision.

The head (softmax over the enrolled people) names the most likely person. Whether the face is that
person at all is decided by its cosine similarity to the person's mean embedding: below a threshold
calibrated on the validation split, the answer is `unknown`. A softmax alone labels every stranger
as someone.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

UNKNOWN = "unknown"


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def calibrate_threshold(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """The similarity threshold that best separates genuine from impostor scores (balanced accuracy)."""
    candidates = np.unique(np.concatenate([genuine, impostor]))
    if len(candidates) == 0:
        return 0.0
    rejected_genuine = np.searchsorted(np.sort(genuine), candidates, side="left")
    rejected_impostor = np.searchsorted(np.sort(impostor), candidates, side="left")
    balanced = (1 - rejected_genuine / max(len(genuine), 1)) + rejected_impostor / max(len(impostor), 1)
    best = int(np.argmax(balanced))
    # Put the threshold halfway to the next lower score so both neighbours stay on their side.
    below = candidates[best - 1] if best > 0 else candidates[best] - 1e-3
    return float((candidates[best] + below) / 2)


@dataclass
class Prediction:
    label: str  # a person's name or UNKNOWN
    confidence: float  # softmax probability of the best person
    similarity: float  # cosine similarity to that person's mean embedding
    best_guess: str  # the best person even when the answer is UNKNOWN


@dataclass
class HeadParams:
    hidden_units: int = 256
    dropout: float = 0.3
    learning_rate: float = 1e-3
    epochs: int = 200
    batch_size: int = 64
    patience: int = 15
    seed: int = 0


class EmbeddingClassifier:
    """fit/predict on 128-d embeddings, estimator-style; parameters in the constructor."""

    def __init__(self, params: HeadParams | None = None) -> None:
        self.params = params or HeadParams()
        self.labels_: list[str] = []
        self.centroids_: np.ndarray | None = None
        self.threshold_: float = 0.0
        self.history_: dict[str, list[float]] = {}
        self.model_ = None

    def _build(self, n_classes: int):
        import keras
        from keras import layers

        inputs = keras.Input(shape=(128,), name="embedding")
        x = layers.UnitNormalization(name="l2_normalize")(inputs)
        x = layers.Dense(self.params.hidden_units, activation="relu", name="hidden")(x)
        x = layers.Dropout(self.params.dropout, name="dropout")(x)
        outputs = layers.Dense(n_classes, activation="softmax", name="identity")(x)
        model = keras.Model(inputs, outputs, name="identity_head")
        model.compile(optimizer=keras.optimizers.Adam(self.params.learning_rate),
                      loss="categorical_crossentropy", metrics=["accuracy"])
        return model

    def fit(self, x_train: np.ndarray, y_train: list[str], x_val: np.ndarray, y_val: list[str]) -> EmbeddingClassifier:
        """Train the head on (x_train, y_train), stop early on validation loss, calibrate on validation."""
        import keras

        keras.utils.set_random_seed(self.params.seed)
        self.labels_ = sorted(set(y_train))
        index = {label: i for i, label in enumerate(self.labels_)}
        unseen = sorted(set(y_val) - set(index))
        if unseen:
            raise ValueError(f"validation labels not in training data: {unseen[:5]}")
        y_train_idx = np.array([index[y] for y in y_train])
        y_val_idx = np.array([index[y] for y in y_val])
        n = len(self.labels_)

        self.model_ = self._build(n)
        history = self.model_.fit(
            x_train, keras.utils.to_categorical(y_train_idx, n),
            validation_data=(x_val, keras.utils.to_categorical(y_val_idx, n)),
            epochs=self.params.epochs, batch_size=self.params.batch_size, verbose=0,
            callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.params.patience,
                                                     restore_best_weights=True)],
        )
        self.history_ = {k: [float(v) for v in values] for k, values in history.history.items()}

        unit_train = l2_normalize(x_train)
        self.centroids_ = l2_normalize(np.stack([unit_train[y_train_idx == i].mean(axis=0) for i in range(n)]))
        self.threshold_ = self._calibrate(x_val, y_val_idx)
        return self

    def _calibrate(self, x_val: np.ndarray, y_val_idx: np.ndarray) -> float:
        # Genuine: each validation face against its own person's centroid. Impostor: against the
        # closest other person's centroid, as a stranger would be compared with the gallery.
        similarities = l2_normalize(x_val) @ self.centroids_.T
        rows = np.arange(len(x_val))
        genuine = similarities[rows, y_val_idx]
        others = similarities.copy()
        others[rows, y_val_idx] = -np.inf
        impostor = others.max(axis=1)
        return calibrate_threshold(genuine, impostor)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, len(self.labels_)), dtype=np.float32)
        return np.asarray(self.model_.predict_on_batch(np.asarray(x, dtype=np.float32)))

    def predict(self, x: np.ndarray) -> list[Prediction]:
        """Name each embedding's person, or UNKNOWN when it is not close enough to that person."""
        probabilities = self.predict_proba(x)
        best = probabilities.argmax(axis=1) if len(x) else np.zeros(0, dtype=int)
        similarities = (l2_normalize(x) @ self.centroids_.T)[np.arange(len(x)), best] if len(x) else []
        predictions = []
        for i, (person, similarity) in enumerate(zip(best, similarities)):
            guess = self.labels_[person]
            label = guess if similarity >= self.threshold_ else UNKNOWN
            predictions.append(Prediction(label, float(probabilities[i, person]), float(similarity), guess))
        return predictions

    def save(self, directory: str | os.PathLike) -> None:
        """Write model.keras, labels.json, centroids.npy and classifier.json into directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model_.save(directory / "model.keras")
        (directory / "labels.json").write_text(json.dumps(self.labels_, indent=1))
        np.save(directory / "centroids.npy", self.centroids_)
        (directory / "classifier.json").write_text(json.dumps(
            {"threshold": self.threshold_, "params": asdict(self.params)}, indent=2))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> EmbeddingClassifier:
        import keras

        directory = Path(directory)
        meta = json.loads((directory / "classifier.json").read_text())
        classifier = cls(HeadParams(**meta["params"]))
        classifier.model_ = keras.models.load_model(directory / "model.keras")
        classifier.labels_ = json.loads((directory / "labels.json").read_text())
        classifier.centroids_ = np.load(directory / "centroids.npy")
        classifier.threshold_ = float(meta["threshold"])
        return classifier

    @staticmethod
    def artifact_names() -> list[str]:
        return ["model.keras", "labels.json", "centroids.npy", "classifier.json"]


def classifier_files(classifier: EmbeddingClassifier) -> dict[str, bytes]:
    """The classifier's saved files by name, ready to publish as part of a model version."""
    with tempfile.TemporaryDirectory() as tmp:
        classifier.save(tmp)
        return {name: (Path(tmp) / name).read_bytes() for name in EmbeddingClassifier.artifact_names()}


def load_from_storage(storage, prefix: str) -> EmbeddingClassifier:
    """Load a classifier saved by save_to_storage."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in EmbeddingClassifier.artifact_names():
            (Path(tmp) / name).write_bytes(storage.get(f"{prefix}/{name}"))
        return EmbeddingClassifier.load(tmp)

"""What every identity model shares: the faces it learns from, its predictions, the `unknown` decision.

A model names the most likely enrolled person for each face. Whether the face is that person at all
is decided by an acceptance score (a similarity or a probability) against a threshold calibrated on
the validation split; below it the answer is `unknown`. A closed-set softmax alone labels every
stranger as someone.
"""

from __future__ import annotations

import inspect
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Self

import numpy as np

if TYPE_CHECKING:
    import keras  # at run time imported only where used, as in the models: loading Keras is slow

UNKNOWN = "unknown"

# Called after each training epoch with (epochs done, epochs at most); it may raise to stop the training.
EpochProgress = Callable[[int, int], None]


@dataclass
class FaceSet:
    """Faces as the models see them: aligned 150x150 RGB chips and their 128-d embeddings."""

    chips: np.ndarray  # (n, 150, 150, 3) uint8
    embeddings: np.ndarray  # (n, 128) float32
    labels: list[str] = field(default_factory=list)  # a person per face when known

    def __len__(self) -> int:
        return len(self.embeddings)

    def subset(self, mask: np.ndarray) -> FaceSet:
        labels = [label for label, keep in zip(self.labels, mask) if keep] if self.labels else []
        return FaceSet(self.chips[mask], self.embeddings[mask], labels)


@dataclass
class Prediction:
    label: str  # a person's name or UNKNOWN
    score: float  # the acceptance score of the best person, compared with the threshold
    confidence: float  # the model's probability (or similarity) for the best person
    best_guess: str  # the best person even when the answer is UNKNOWN


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def calibrate_threshold(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """The acceptance threshold that best separates genuine from impostor scores (balanced accuracy)."""
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


def genuine_and_impostor(acceptance: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each face's score for its own person, and its best score for anyone else (as a stranger
    compared with the gallery would get)."""
    rows = np.arange(len(truth))
    genuine = acceptance[rows, truth]
    others = acceptance.copy()
    others[rows, truth] = -np.inf
    return genuine, others.max(axis=1)


def class_means(unit: np.ndarray, classes: np.ndarray, count: int) -> np.ndarray:
    """Each class's mean of the unit vectors, L2-normalised: (count, dim)."""
    return l2_normalize(np.stack([unit[classes == i].mean(axis=0) for i in range(count)]))


def fit_keras(network: keras.Model, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
              learning_rate: float, epochs: int, batch_size: int, patience: int,
              balance_classes: bool = False, on_epoch: EpochProgress | None = None) -> dict[str, list[float]]:
    """Train a Keras network whose output is a softmax over the people, as every Keras model here does.

    y_train and y_val are class indices. Adam on categorical cross-entropy; training stops when the
    validation loss has not improved for `patience` epochs and keeps the best epoch's weights. With
    balance_classes, people with few photos weigh as much in the loss as people with many.
    on_epoch(done, epochs) runs after each epoch; an exception it raises stops the training (a
    cancelled job is noticed within an epoch). Returns the history as lists of floats, JSON-ready
    for IdentityModel.history_.
    """
    import keras

    people = network.output_shape[-1]
    network.compile(optimizer=keras.optimizers.Adam(learning_rate),
                    loss="categorical_crossentropy", metrics=["accuracy"])
    class_weight = None
    if balance_classes:
        from sklearn.utils.class_weight import compute_class_weight

        class_weight = dict(enumerate(compute_class_weight("balanced", classes=np.arange(people), y=y_train)))
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)]
    if on_epoch is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch(epoch + 1, epochs)))
    history = network.fit(
        x_train, keras.utils.to_categorical(y_train, people),
        validation_data=(x_val, keras.utils.to_categorical(y_val, people)),
        class_weight=class_weight, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=callbacks,
    )
    return {k: [float(v) for v in values] for k, values in history.history.items()}


class IdentityModel(ABC):
    """fit/predict, estimator-style: parameters in the constructor, learned state in attributes ending in _."""

    model_type: ClassVar[str]

    def __init__(self) -> None:
        self.labels_: list[str] = []
        self.threshold_: float = 0.0
        self.history_: dict[str, list[float]] = {}

    @abstractmethod
    def fit(self, train: FaceSet, val: FaceSet, on_epoch: EpochProgress | None = None) -> Self:
        """Learn the people in train; stop early and calibrate the threshold on val. A model trained in
        epochs calls on_epoch(done, epochs) after each; an exception from it stops the training."""

    @abstractmethod
    def class_scores(self, faces: FaceSet) -> np.ndarray:
        """(n, people) scores; the best person is the argmax."""

    def acceptance(self, faces: FaceSet) -> np.ndarray:
        """(n, people) scores compared with the threshold; by default the class scores."""
        return self.class_scores(faces)

    def scores_and_acceptance(self, faces: FaceSet) -> tuple[np.ndarray, np.ndarray]:
        """class_scores and acceptance together, for predict; a model whose two come from one
        network pass overrides this to run the network once."""
        return self.class_scores(faces), self.acceptance(faces)

    # Constructor arguments that say where to find things on this machine, not how the model learns:
    # left out of params(), so a saved model does not carry one machine's paths.
    local_arguments: ClassVar[tuple[str, ...]] = ()

    def params(self) -> dict:
        """The constructor's parameters and their values, JSON-ready (tuples as lists), read from the
        attributes of the same names, as scikit-learn's get_params does."""
        names = [name for name in inspect.signature(type(self).__init__).parameters
                 if name != "self" and name not in self.local_arguments]
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in ((name, getattr(self, name)) for name in names)}

    @abstractmethod
    def save_weights(self, directory: Path) -> None:
        """Write the learned state beyond labels and threshold into directory."""

    @abstractmethod
    def load_weights(self, directory: Path) -> None:
        """Read what save_weights wrote."""

    def learn_labels(self, train: FaceSet, val: FaceSet) -> tuple[np.ndarray, np.ndarray]:
        """Make train's people, sorted, the model's classes; return train's and val's class indices."""
        self.labels_ = sorted(set(train.labels))
        return self.label_indices(train.labels), self.label_indices(val.labels)

    def label_indices(self, labels: list[str]) -> np.ndarray:
        index = {label: i for i, label in enumerate(self.labels_)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise ValueError(f"people not in the training data: {unknown[:5]}")
        return np.array([index[label] for label in labels], dtype=int)

    def calibrate(self, val: FaceSet) -> float:
        """Set the threshold from the validation faces and return it."""
        genuine, impostor = genuine_and_impostor(self.acceptance(val), self.label_indices(val.labels))
        self.threshold_ = calibrate_threshold(genuine, impostor)
        return self.threshold_

    def predict(self, faces: FaceSet) -> list[Prediction]:
        """Name each face's person, or UNKNOWN when its acceptance score is below the threshold."""
        if len(faces) == 0:
            return []
        return self.predictions(*self.scores_and_acceptance(faces))

    def predictions(self, scores: np.ndarray, acceptance: np.ndarray) -> list[Prediction]:
        """predict() from the faces' class_scores and acceptance, for callers that need those too."""
        predictions = []
        for i, best in enumerate(scores.argmax(axis=1)):
            guess, accepted = self.labels_[best], float(acceptance[i, best])
            label = guess if accepted >= self.threshold_ else UNKNOWN
            predictions.append(Prediction(label, accepted, float(scores[i, best]), guess))
        return predictions

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"model_type": self.model_type, "labels": self.labels_, "threshold": self.threshold_,
                "params": self.params(), "history": self.history_}
        (directory / "model.json").write_text(json.dumps(meta, indent=1))
        self.save_weights(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Self:
        directory = Path(directory)
        meta = json.loads((directory / "model.json").read_text())
        if meta["model_type"] != cls.model_type:
            raise ValueError(f"{directory} holds a {meta['model_type']} model, not {cls.model_type}")
        model = cls(**meta["params"])
        model.labels_, model.threshold_, model.history_ = meta["labels"], meta["threshold"], meta["history"]
        model.load_weights(directory)
        return model

"""The `cnn` model: the original notebook's small CNN, trained from scratch on the aligned face chips.

It learns from the pixels alone, without the ResNet or its embeddings: the notebook's baseline,
which shows what the pretrained network is worth (bench.cnn_notebook). Unknown faces are rejected
by the softmax probability, calibrated on the validation split, which separates strangers far less
well than an embedding similarity does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import numpy as np

from pipeline.align import CHIP_SIZE
from pipeline.models.base import EpochProgress, FaceSet, IdentityModel, fit_keras

# The chip is cut with padding 0.25, so the face box fills its central 150 / 1.5 = 100 pixels;
# the notebook trained on 96x96 centre crops of the face.
FACE_BOX_SIZE = 100

# Augmentation strengths: the faces are aligned already, so small rotations and zooms suffice.
ROTATION = 10 / 360  # +-10 degrees, as a fraction of a full turn
ZOOM = 0.1
CONTRAST = 0.2


class NotebookCnn(IdentityModel):
    model_type = "cnn"

    def __init__(self, image_size: int = 96, filters: tuple[int, ...] | list[int] = (32, 64, 128),
                 dense_units: int = 128, dropout: float = 0.5, learning_rate: float = 1e-3,
                 epochs: int = 100, batch_size: int = 32, patience: int = 10, seed: int = 0) -> None:
        super().__init__()
        self.image_size = image_size
        self.filters = tuple(filters)
        self.dense_units = dense_units
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.seed = seed
        self.network_ = None

    def _build(self, people: int):
        import keras
        from keras import layers

        inputs = keras.Input((CHIP_SIZE, CHIP_SIZE, 3), dtype="uint8", name="chips")
        # Preprocessing: crop the face box out of the chip, then resize it to the network's input size.
        x = layers.CenterCrop(FACE_BOX_SIZE, FACE_BOX_SIZE, name="face_crop")(inputs)
        x = layers.Resizing(self.image_size, self.image_size, name="resize")(x)
        # Augmentation: these layers change the faces only while training.
        x = layers.RandomRotation(ROTATION, seed=self.seed, name="random_rotation")(x)
        x = layers.RandomFlip("horizontal", seed=self.seed, name="random_flip")(x)
        x = layers.RandomZoom(ZOOM, seed=self.seed, name="random_zoom")(x)
        x = layers.RandomContrast(CONTRAST, seed=self.seed, name="random_contrast")(x)
        x = layers.Rescaling(1 / 255, name="rescale")(x)
        # No batch norm: with the flattened feature map feeding the dense layer it made the first
        # epoch diverge (loss 5-10), after which the network never learned.
        for block, filters in enumerate(self.filters, start=1):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{block}_conv")(x)
            x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(self.dense_units, activation="relu", name="dense")(x)
        x = layers.Dropout(self.dropout, name="dropout")(x)
        outputs = layers.Dense(people, activation="softmax", name="identity")(x)
        return keras.Model(inputs, outputs, name="notebook_cnn")

    def fit(self, train: FaceSet, val: FaceSet, on_epoch: EpochProgress | None = None) -> Self:
        import keras

        keras.utils.set_random_seed(self.seed)
        y_train, y_val = self.learn_labels(train, val)
        self.network_ = self._build(len(self.labels_))
        # People with few photos weigh as much in the loss as people with many.
        self.history_ = fit_keras(self.network_, train.chips, y_train, val.chips, y_val, balance_classes=True,
                                  learning_rate=self.learning_rate, epochs=self.epochs,
                                  batch_size=self.batch_size, patience=self.patience,
                                  on_epoch=on_epoch)
        self.calibrate(val)
        return self

    def class_scores(self, faces: FaceSet) -> np.ndarray:
        return np.asarray(self.network_.predict(faces.chips, batch_size=self.batch_size, verbose=0))

    def scores_and_acceptance(self, faces: FaceSet) -> tuple[np.ndarray, np.ndarray]:
        scores = self.class_scores(faces)  # the softmax is also what faces are accepted by: one pass
        return scores, scores

    def save_weights(self, directory: Path) -> None:
        self.network_.save(directory / "cnn.keras")

    def load_weights(self, directory: Path) -> None:
        import keras

        self.network_ = keras.models.load_model(directory / "cnn.keras")

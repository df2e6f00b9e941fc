"""The `finetune` model: dlib's face ResNet with its last residual blocks trained on the enrolled people.

The network reads the face chips, not the precomputed embeddings: the ResNet with dlib's weights,
its last `trainable_blocks` blocks (and the 128-d embedding layer after them) unfrozen, then a head
that L2-normalises the embedding and puts a softmax over the people. Everything before those blocks
stays frozen, and so do all the Affine layers: they are dlib's batch-norm statistics, folded.

One training phase, at a learning rate small enough for the pretrained blocks (1e-4). The head is
not trained from random: it starts from each person's mean embedding, scaled (weight imprinting),
so it already names most faces before the first step and the small learning rate need not carry it
from chance.

A face is accepted as the best person by the cosine similarity of its fine-tuned embedding to that
person's mean fine-tuned training embedding, as the `embedding` model does with the frozen one.
Meant for GPU workers: every epoch runs the whole ResNet over every training chip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import numpy as np

from config import load_settings
from pipeline.align import CHIP_SIZE
from pipeline.models.base import EpochProgress, FaceSet, IdentityModel, class_means, fit_keras, l2_normalize

# Logits of the imprinted head are IMPRINT_SCALE * cosine similarity. dlib's embeddings lie in a
# narrow cone: a face's similarity to its own person's mean beats the next person's by a few
# hundredths (thresholds calibrate near 0.93-0.95), so the scale must be large for that gap to be
# a confident probability from the first step. 16, 32 and 64 did about equally well on LFW.
IMPRINT_SCALE = 32.0

# Augmentation stays small: the ResNet was trained on chips aligned the way ours are.
ROTATION = 5 / 360  # +-5 degrees, as a fraction of a full turn
ZOOM = 0.05
CONTRAST = 0.1


class FinetunedResNet(IdentityModel):
    model_type = "finetune"
    local_arguments = ("cache_dir",)

    def __init__(self, cache_dir: str | Path | None = None, trainable_blocks: int = 2, learning_rate: float = 1e-4,
                 epochs: int = 30, batch_size: int = 32, patience: int = 5, seed: int = 0) -> None:
        super().__init__()
        # Where dlib's converted weights are cached: where training starts from, not a parameter of
        # the trained model (see local_arguments).
        self.cache_dir = Path(cache_dir) if cache_dir is not None else load_settings().cache_dir
        self.trainable_blocks = trainable_blocks
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.seed = seed
        self.network_ = None
        # Views of network_ sharing its weights: up to the L2-normalised embedding, and with that
        # embedding as a second output so that predict runs the ResNet once for both scores.
        self.embedder_ = None
        self.scorer_ = None
        self.centroids_: np.ndarray | None = None

    def _load_resnet(self):
        """dlib's ResNet, frozen but for the last trainable_blocks blocks and the embedding layer."""
        from pipeline.face_resnet import Affine, load_face_resnet

        resnet = load_face_resnet(self.cache_dir)
        blocks = [layer.name.removesuffix("_add") for layer in resnet.layers if layer.name.endswith("_add")]
        if not 0 <= self.trainable_blocks <= len(blocks):
            raise ValueError(f"trainable_blocks must be between 0 and {len(blocks)}, got {self.trainable_blocks}")
        unfrozen = tuple(f"{name}_" for name in blocks[len(blocks) - self.trainable_blocks:]) + ("embedding",)
        for layer in resnet.layers:
            layer.trainable = layer.name.startswith(unfrozen) and not isinstance(layer, Affine)
        return resnet

    def _build(self, people: int):
        import keras
        from keras import layers

        from pipeline.face_resnet import INPUT_SCALE, RGB_MEANS

        inputs = keras.Input((CHIP_SIZE, CHIP_SIZE, 3), dtype="uint8", name="chips")
        # Augmentation: these layers change the faces only while training.
        x = layers.RandomFlip("horizontal", seed=self.seed, name="random_flip")(inputs)
        x = layers.RandomRotation(ROTATION, seed=self.seed, name="random_rotation")(x)
        x = layers.RandomZoom(ZOOM, seed=self.seed, name="random_zoom")(x)
        x = layers.RandomContrast(CONTRAST, seed=self.seed, name="random_contrast")(x)
        # dlib's input scaling, (chips - means) / 256, as pipeline.face_resnet.preprocess_chips does.
        x = layers.Normalization(mean=RGB_MEANS.tolist(), variance=[float(INPUT_SCALE) ** 2] * 3,
                                 name="dlib_scaling")(x)
        # The ResNet has no layer that acts differently while training (dlib folded its batch norm
        # into the Affine layers), so inference mode is exact for its frozen and unfrozen parts alike;
        # which weights learn is set by each layer's `trainable`.
        x = self._load_resnet()(x, training=False)
        x = layers.UnitNormalization(name="l2_normalize")(x)
        outputs = layers.Dense(people, activation="softmax", name="identity")(x)
        return keras.Model(inputs, outputs, name="finetuned_face_resnet")

    def fit(self, train: FaceSet, val: FaceSet, on_epoch: EpochProgress | None = None) -> Self:
        import keras

        keras.utils.set_random_seed(self.seed)
        y_train, y_val = self.learn_labels(train, val)
        people = len(self.labels_)
        self._use_network(self._build(people))
        # Imprint the head from train.embeddings: the untouched ResNet's embeddings of these chips
        # (averaged with their mirror images' when the pipeline mirrors), near enough for a start.
        imprint = class_means(l2_normalize(train.embeddings), y_train, people)
        self.network_.get_layer("identity").set_weights([IMPRINT_SCALE * imprint.T, np.zeros(people)])
        # People with few photos weigh as much in the loss as people with many.
        self.history_ = fit_keras(self.network_, train.chips, y_train, val.chips, y_val, balance_classes=True,
                                  learning_rate=self.learning_rate, epochs=self.epochs,
                                  batch_size=self.batch_size, patience=self.patience,
                                  on_epoch=on_epoch)
        self.centroids_ = class_means(self.embed(train.chips), y_train, people)
        self.calibrate(val)
        return self

    def _use_network(self, network) -> None:
        import keras

        self.network_ = network
        embedding = network.get_layer("l2_normalize").output
        self.embedder_ = keras.Model(network.inputs, embedding)
        self.scorer_ = keras.Model(network.inputs, [network.outputs[0], embedding])

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """The fine-tuned embeddings of uint8 chips, L2-normalised: (n, 128)."""
        return np.asarray(self.embedder_.predict(chips, batch_size=self.batch_size, verbose=0))

    def class_scores(self, faces: FaceSet) -> np.ndarray:
        return np.asarray(self.network_.predict(faces.chips, batch_size=self.batch_size, verbose=0))

    def acceptance(self, faces: FaceSet) -> np.ndarray:
        return self.embed(faces.chips) @ self.centroids_.T

    def scores_and_acceptance(self, faces: FaceSet) -> tuple[np.ndarray, np.ndarray]:
        scores, embeddings = self.scorer_.predict(faces.chips, batch_size=self.batch_size, verbose=0)
        return np.asarray(scores), np.asarray(embeddings) @ self.centroids_.T

    def save_weights(self, directory: Path) -> None:
        self.network_.save(directory / "finetune.keras")
        np.save(directory / "centroids.npy", self.centroids_)

    def load_weights(self, directory: Path) -> None:
        import keras

        import pipeline.face_resnet  # noqa: F401  registers the ResNet's custom layers for loading

        self._use_network(keras.models.load_model(directory / "finetune.keras"))
        self.centroids_ = np.load(directory / "centroids.npy")


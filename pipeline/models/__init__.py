"""Identity models, one per type, all with the IdentityModel interface (pipeline/models/base.py).

Model types: `embedding` (Keras head on the ResNet embeddings, the default), `centroid` (nearest
class mean, people can be enrolled without retraining), `cnn` (the original notebook's CNN trained
from scratch on face chips) and `finetune` (the ResNet's last blocks trained with a head).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pipeline.models.base import UNKNOWN, FaceSet, IdentityModel, Prediction
from pipeline.models.centroid import CentroidModel
from pipeline.models.cnn import NotebookCnn
from pipeline.models.embedding import EmbeddingHead
from pipeline.models.finetune import FinetunedResNet
from pipeline.storage import Storage

MODEL_TYPES: dict[str, type[IdentityModel]] = {
    model.model_type: model for model in (EmbeddingHead, CentroidModel, NotebookCnn, FinetunedResNet)
}

__all__ = ["MODEL_TYPES", "UNKNOWN", "FaceSet", "IdentityModel", "Prediction", "create_model",
           "model_files", "load_model_files"]


def create_model(model_type: str, **params) -> IdentityModel:
    """A new, untrained model of the given type."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r}: choose one of {', '.join(sorted(MODEL_TYPES))}")
    return MODEL_TYPES[model_type](**params)


def model_files(model: IdentityModel) -> dict[str, bytes]:
    """The files a trained model saves, by name under model/, ready to publish in a version."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp)
        return {f"model/{path.name}": path.read_bytes() for path in sorted(Path(tmp).iterdir())}


def load_model_files(storage: Storage, prefix: str) -> IdentityModel:
    """Load the model saved by model_files under prefix/model/ in storage."""
    with tempfile.TemporaryDirectory() as tmp:
        for key in storage.list(f"{prefix}/model/"):
            (Path(tmp) / key.rsplit("/", 1)[1]).write_bytes(storage.get(key))
        model_type = json.loads((Path(tmp) / "model.json").read_text())["model_type"]
        return MODEL_TYPES[model_type].load(tmp)

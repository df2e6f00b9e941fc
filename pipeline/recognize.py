"""Recognition: every face in each photo, named by a trained model version or `unknown`."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import registry
from pipeline.classifier import EmbeddingClassifier, load_from_storage
from pipeline.faces import FacePipeline
from pipeline.storage import Storage


@dataclass
class LoadedModel:
    name: str
    version: str
    classifier: EmbeddingClassifier


def load_model(storage: Storage, name: str, version: str) -> LoadedModel:
    """Load one published model version from storage."""
    registry.get_version(storage, name, version)
    return LoadedModel(name, version, load_from_storage(storage, registry.version_prefix(name, version)))


def recognize(faces: FacePipeline, model: LoadedModel, photos: list[tuple[str, bytes]]) -> list[dict]:
    """One JSON-ready result per (key, bytes) photo: its faces with identities, or its error."""
    found = faces.process(photos)
    results = []
    for photo in found:
        result = {"key": photo.key, "model": model.name, "model_version": model.version}
        if photo.error:
            result["error"] = photo.error
        else:
            predictions = model.classifier.predict(photo.embeddings)
            result["width"], result["height"] = photo.size
            result["main_face"] = photo.main_face
            result["faces"] = [
                {**face.to_json(), "identity": p.label, "confidence": round(p.confidence, 4),
                 "similarity": round(p.similarity, 4), "best_guess": p.best_guess}
                for face, p in zip(photo.faces, predictions)
            ]
        results.append(result)
    return results

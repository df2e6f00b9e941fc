"""Recognition: every face in each photo, named by a trained model version or `unknown`."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import registry
from pipeline.faces import FacePipeline
from pipeline.models import FaceSet, IdentityModel, load_model_files
from pipeline.storage import Storage


@dataclass
class LoadedModel:
    name: str
    version: str
    model: IdentityModel


def load_model(storage: Storage, name: str, version: str) -> LoadedModel:
    """Load one published model version from storage."""
    registry.get_version(storage, name, version)
    return LoadedModel(name, version, load_model_files(storage, registry.version_prefix(name, version)))


def recognize(pipeline: FacePipeline, loaded: LoadedModel, photos: list[tuple[str, bytes]]) -> list[dict]:
    """One JSON-ready result per (key, bytes) photo: its faces with identities, or its error."""
    results = []
    for photo in pipeline.process(photos):
        result = {"key": photo.key, "model": loaded.name, "model_version": loaded.version}
        if photo.error:
            result["error"] = photo.error
        else:
            predictions = loaded.model.predict(FaceSet(photo.chips, photo.embeddings))
            result["width"], result["height"] = photo.size
            result["main_face"] = photo.main_face
            result["faces"] = [
                {**face.to_json(), "identity": p.label, "score": round(p.score, 4),
                 "confidence": round(p.confidence, 4), "best_guess": p.best_guess}
                for face, p in zip(photo.faces, predictions)
            ]
        results.append(result)
    return results

"""Recognition: every face in each photo, named by a trained model version or `unknown`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from itertools import islice

import numpy as np

from pipeline import registry
from pipeline.assignment import name_jointly
from pipeline.faces import FacePipeline, PhotoFaces
from pipeline.models import FaceSet, IdentityModel, load_model_files
from pipeline.quality import face_quality
from pipeline.storage import Storage


@dataclass
class LoadedModel:
    name: str
    version: str
    model: IdentityModel
    embedder: str | None = None  # the embedder the version was trained with


def load_model(storage: Storage, name: str, version: str) -> LoadedModel:
    """Load one published model version from storage."""
    record = registry.get_version(storage, name, version)
    return LoadedModel(name, version, load_model_files(storage, registry.version_prefix(name, version)),
                       record.get("embedder"))


def recognize(pipeline: FacePipeline, loaded: LoadedModel, photos: Iterable[tuple[str, bytes]],
              batch_size: int | None = None, keep_faces: dict[str, PhotoFaces] | None = None) -> Iterator[dict]:
    """One JSON-ready result per (key, bytes) photo, in order: its faces with identities, or its error.
    Photos go through the pipeline batch_size at a time (default: the pipeline's batch size). With a dict
    as keep_faces, each photo's faces and embeddings (not its chips) are also kept in it by key, for a face
    index.

    Raises ValueError if the model was trained on embeddings of another kind than the pipeline makes:
    its answers would look right and be wrong."""
    if loaded.embedder and loaded.embedder != pipeline.embedder_name:
        raise ValueError(f"model {loaded.name} version {loaded.version} was trained on {loaded.embedder} "
                         f"embeddings, but this worker makes {pipeline.embedder_name} embeddings: run it with the "
                         "same FACEREC_MIRROR_FACES and FACEREC_ACCURATE_FACES as the training, or retrain")
    batch_size = batch_size or pipeline.batch_size
    found = pipeline.process_stream(photos, batch_size)
    while batch := list(islice(found, batch_size)):
        if keep_faces is not None:
            keep_faces.update((photo.key, replace(photo, chips=photo.chips[:0])) for photo in batch)
        yield from _name_faces(loaded, batch)


def _name_faces(loaded: LoadedModel, photos: list[PhotoFaces]) -> Iterator[dict]:
    """The results of a batch of photos, with one call of the model for all their faces."""
    # A photo without faces holds empty arrays of the right shapes, so `nothing` keeps the joins defined.
    readable = [photo for photo in photos if not photo.error] + [PhotoFaces(key="nothing")]
    faces = FaceSet(np.concatenate([photo.chips for photo in readable]),
                    np.concatenate([photo.embeddings for photo in readable]))
    scores, acceptance = loaded.model.scores_and_acceptance(faces) if len(faces) else (None, None)
    start = 0
    for photo in photos:
        result = {"key": photo.key, "model": loaded.name, "model_version": loaded.version}
        if photo.error:
            result["error"] = photo.error
        else:
            result["width"], result["height"] = photo.size
            result["main_face"] = photo.main_face
            rows = slice(start, start + len(photo.faces))
            start = rows.stop
            # Each person at most once per photo (pipeline.assignment).
            named = name_jointly(loaded.model, scores[rows], acceptance[rows]) if photo.faces else []
            result["faces"] = [
                {**face.to_json(), "identity": n.prediction.label, "score": round(n.prediction.score, 4),
                 "confidence": round(n.prediction.confidence, 4), "best_guess": n.prediction.best_guess,
                 **n.to_json(), "quality": face_quality(face, chip).to_json()}
                for face, chip, n in zip(photo.faces, photo.chips, named)
            ]
        yield result

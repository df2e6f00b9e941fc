"""The subject's face of many photos, for the quality benchmarks: its embedding and its quality."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pipeline.face_resnet import DESCRIPTOR_SIZE
from pipeline.faces import FacePipeline
from pipeline.quality import Quality, face_quality


@dataclass
class Subjects:
    """Per photo, in the order given: the subject's embedding (a NaN row without a face) and quality (None)."""

    keys: list[str]
    embeddings: np.ndarray
    quality: list[Quality | None]

    @property
    def found(self) -> np.ndarray:
        return ~np.isnan(self.embeddings[:, 0])


def face_pipeline() -> FacePipeline:
    """The product's pipeline: MTCNN, alignment, the ResNet mirrored or not as FACEREC_MIRROR_FACES says."""
    from config import load_settings
    from pipeline.detect import FaceDetector
    from pipeline.face_resnet import FaceResNetEmbedder

    settings = load_settings()
    return FacePipeline(FaceDetector(), FaceResNetEmbedder(settings.cache_dir, mirror=settings.mirror_faces))


def describe(pipeline: FacePipeline, photos: Iterable[tuple[str, bytes]], total: int, what: str,
             batch_size: int = 64) -> Subjects:
    """The subject (PhotoFaces.main_face) of each (key, bytes) photo, printing progress every 1,000."""
    keys, embeddings, quality = [], [], []
    started = time.perf_counter()
    for done, found in enumerate(pipeline.process_stream(photos, batch_size), start=1):
        keys.append(found.key)
        subject = found.main_face
        if subject is None:
            embeddings.append(np.full(DESCRIPTOR_SIZE, np.nan, np.float32))
            quality.append(None)
        else:
            embeddings.append(found.embeddings[subject])
            quality.append(face_quality(found.faces[subject], found.chips[subject]))
        if done % 1000 == 0 or done == total:
            print(f"  {what}: {done}/{total} photos, {done / (time.perf_counter() - started):.1f}/s", flush=True)
    return Subjects(keys, np.stack(embeddings), quality)


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine distance; NaN where a row is NaN (no face)."""
    return 1 - np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

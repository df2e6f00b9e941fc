"""Face detection with MTCNN: every face in a photo, with its box, score and 5 landmarks.

The three networks' weights come from the `mtcnn` package; the networks are built in Keras 3
(pipeline/mtcnn_keras.py), so that detection runs on any Keras backend, and the pipeline around them is
ours, so that photos of the same size run as one batch through compiled functions. Its box, landmark
and suppression arithmetic reproduces the package's `MTCNN().detect_faces` (mtcnn 1.0.0, default
settings) step by step, so the two find the same faces.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# The package's defaults (mtcnn/stages/stage_*.py): a proposal survives a stage when its face
# probability is above the threshold; the IoU thresholds are those of its suppression rounds.
SCALE_FACTOR = 0.709
PNET_THRESHOLD = 0.6
RNET_THRESHOLD = 0.7
ONET_THRESHOLD = 0.8
PNET_SCALE_NMS = 0.5  # within one pyramid scale
PNET_NMS = 0.7  # across the scales of one photo
RNET_NMS = 0.7
ONET_NMS = 0.7  # measured against the smaller box ("min"), not the union

# PNet looks at 12x12 windows, every 2 pixels of the scaled photo.
PNET_WINDOW = 12
PNET_STRIDE = 2

# Large photos go in smaller batches: PNet's first layer holds about 15 floats per photo pixel, so a
# batch of 16 megapixels took about 1 GB above a run on LFW photos, 8 megapixels 0.4 GB (measured by
# tests/test_photo_memory.py: two working-size photos of 2000x2000 per batch). 32 LFW photos are 2
# megapixels: their batches are the same as without the limit.
MAX_BATCH_PIXELS = 8_000_000


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
    """MTCNN with the `mtcnn` package's networks and weights, batched.

    detect() runs the photos of the same size together, at most batch_size (and MAX_BATCH_PIXELS) at a
    time, through the three stages; faces whose final score is below min_score are dropped, except
    that a photo with no face at min_score keeps its best face if that scores at least fallback_score.
    (On LFW, 9 of 7,701 photos have their only face at 0.82-0.89; keeping every face above 0.8
    instead would add 176 doubtful faces.)
    graph: under TensorFlow, each batch's three stages in one graph call (pipeline/mtcnn_graph.py); False
    calls the networks one by one with NumPy between them, as JAX always does. Both find the same faces.
    """

    def __init__(self, min_face_size: int = 20, min_score: float = 0.9, fallback_score: float = 0.8,
                 batch_size: int = 32, device: str | None = None, scale_factor: float = SCALE_FACTOR,
                 graph: bool = True) -> None:
        # Here, not at the top, so that importing Face or main_face does not load Keras.
        import keras

        from pipeline.backend import device_scope
        from pipeline.mtcnn_keras import MTCNNNetworks

        self.min_face_size = min_face_size
        self.scale_factor = scale_factor  # each pyramid level's size over the last's (the package's 0.709)
        self.min_score = min_score
        self.fallback_score = fallback_score
        self.batch_size = batch_size
        self.device = device  # "gpu:0", "cpu:0", ...; None: the backend's choice (its first GPU if any)
        with device_scope(device):
            self._networks = MTCNNNetworks()
        # One call a batch: a GPU worker's host does no NumPy per candidate, and on a CPU it was faster too.
        self._graph = None
        if graph and keras.backend.backend() == "tensorflow":
            from pipeline.mtcnn_graph import DetectionGraph

            networks = self._networks
            self._graph = DetectionGraph(networks.pnet_model, networks.rnet_model, networks.onet_model)

    def detect(self, images: list[np.ndarray], min_face_size: int | None = None) -> list[list[Face]]:
        """Return, for each RGB uint8 image (H, W, 3), its faces sorted by decreasing box area.
        min_face_size (default: the detector's) is the smallest face looked for, in pixels: a larger one
        leaves out the finest pyramid levels, the costliest.

        Photos are batched by size (not padded to a common size, which would change the pyramid and so
        the faces): photos decoded at the working size, and those of one camera, share a few sizes."""
        from pipeline.backend import aligned_empty, filled_to_compiled_size

        min_face_size = min_face_size or self.min_face_size
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            by_shape[image.shape].append(index)
        results: list[list[Face]] = [[] for _ in images]
        for (height, width, _), indices in by_shape.items():
            batch_size = max(1, min(self.batch_size, MAX_BATCH_PIXELS // (height * width)))
            for start in range(0, len(indices), batch_size):
                batch = indices[start:start + batch_size]
                # Under JAX a short batch is filled up to a batch size already compiled; the extra
                # photos' faces are left out by the zip below.
                photos = np.stack([images[i] for i in batch], out=aligned_empty((len(batch), height, width, 3)))
                photos = filled_to_compiled_size(photos, 1)
                if self._graph is not None:
                    found = self._detect_in_graph(photos, min_face_size)
                else:
                    found = self._detect_same_size(photos, min_face_size)
                for index, faces in zip(batch, found):
                    results[index] = sorted(self._confident(faces), key=lambda f: f.box[2] * f.box[3], reverse=True)
        return results

    def _confident(self, faces: list[Face]) -> list[Face]:
        kept = [f for f in faces if f.score >= self.min_score]
        if kept or not faces:
            return kept
        best = max(faces, key=lambda f: f.score)
        return [best] if best.score >= self.fallback_score else []

    def _detect_same_size(self, images: np.ndarray, min_face_size: int) -> list[list[Face]]:
        """The three stages on a (B, H, W, 3) uint8 batch."""
        import keras

        from pipeline.backend import device_scope

        count, height, width = images.shape[:3]
        with device_scope(self.device):
            # Exact in float32 (half-integers over a power of two), as the package's float64. Made once,
            # on the device, for all the stages: the photos travel as bytes (a quarter of the floats), and
            # the host does not spend a millisecond a photo on the arithmetic.
            pixels = keras.ops.cast(keras.ops.convert_to_tensor(images), "float32")
            normalized = (pixels - 127.5) / 128
            boxes = self._propose(normalized, min_face_size)
            boxes = self._refine(normalized, boxes)
            boxes, landmarks = self._output(normalized, boxes)
        return _faces(count, height, width, boxes, landmarks)

    def _detect_in_graph(self, images: np.ndarray, min_face_size: int) -> list[list[Face]]:
        """_detect_same_size in one call of the TensorFlow function (pipeline/mtcnn_graph.py)."""
        from pipeline.backend import device_scope, on_device

        count, height, width = images.shape[:3]
        scales, sizes = pyramid(width, height, min_face_size, self.scale_factor)
        with device_scope(self.device):
            rows = self._graph.detect(on_device(images), sizes, scales).numpy()
        return _faces(count, height, width, rows[:, :6], rows[:, 6:])

    def _propose(self, normalized, min_face_size: int) -> np.ndarray:
        """PNet over the image pyramid: squared candidate boxes, rows (image, x1, y1, x2, y2, score)."""
        height, width = normalized.shape[1:3]
        kept_per_scale = []
        for scale, size in zip(*pyramid(width, height, min_face_size, self.scale_factor)):
            cells, regression, scores = self._networks.pnet(normalized, tuple(size), PNET_THRESHOLD)
            boxes = _pnet_boxes(cells, regression, scores)
            boxes[:, 1:5] /= scale
            kept_per_scale.append(_suppress_per_image(boxes, PNET_SCALE_NMS, "union"))
        if not kept_per_scale:
            return np.empty((0, 6))
        return _square(_suppress_per_image(np.concatenate(kept_per_scale), PNET_NMS, "union"))

    def _refine(self, normalized, boxes: np.ndarray) -> np.ndarray:
        """RNet on the PNet proposals: squared refined boxes, same rows."""
        if len(boxes) == 0:
            return boxes
        regression, scores = _run_on_crops(self._networks.rnet, normalized, boxes)
        boxes = _regress(boxes, regression, scores)
        boxes = boxes[boxes[:, 5] > RNET_THRESHOLD]
        return _square(_suppress_per_image(boxes, RNET_NMS, "union"))

    def _output(self, normalized, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ONet on the RNet boxes: final boxes (same rows) and landmarks (n, 10: five x then five y)."""
        if len(boxes) == 0:
            return boxes, np.empty((0, 10))
        regression, landmarks, scores = _run_on_crops(self._networks.onet, normalized, boxes)
        # Landmarks are relative to the box ONet saw, before its own regression moves it.
        widths = boxes[:, 3:4] - boxes[:, 1:2] + 1
        heights = boxes[:, 4:5] - boxes[:, 2:3] + 1
        landmarks = np.concatenate([widths * landmarks[:, :5] + boxes[:, 1:2] - 1,
                                    heights * landmarks[:, 5:] + boxes[:, 2:3] - 1], axis=1)
        boxes = _regress(boxes, regression, scores)
        keep = boxes[:, 5] > ONET_THRESHOLD
        rows = np.concatenate([boxes[keep], landmarks[keep]], axis=1)
        rows = _suppress_per_image(rows, ONET_NMS, "min")
        return rows[:, :6], rows[:, 6:]


def _faces(count: int, height: int, width: int, boxes: np.ndarray, landmarks: np.ndarray) -> list[list[Face]]:
    """Each of count photos' faces from the last stage's rows (image, x1, y1, x2, y2, score) and landmarks
    (n, 10: five x then five y)."""
    # Like the package's fit_to_image: boxes (not landmarks) are clipped to the photo.
    boxes = boxes.copy()
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, width - 1)
    boxes[:, [2, 4]] = np.clip(boxes[:, [2, 4]], 0, height - 1)
    faces: list[list[Face]] = [[] for _ in range(count)]
    for (image, x1, y1, x2, y2, score), points in zip(boxes, landmarks):
        faces[int(image)].append(Face(box=(float(x1), float(y1), float(x2 - x1), float(y2 - y1)),
                                      score=float(score), landmarks=points.reshape(2, 5).T.copy()))
    return faces


def main_face(faces: list[Face], width: int, height: int) -> int | None:
    """Index of the photo's subject: among the faces whose box holds the photo's centre, the one whose
    centre is nearest it; else the largest face. A labelled or portrait photo centres its subject;
    bystanders can be larger, and a neighbour's box can reach over the centre too."""
    if not faces:
        return None
    centred = [i for i, f in enumerate(faces)
               if f.box[0] <= width / 2 <= f.box[0] + f.box[2] and f.box[1] <= height / 2 <= f.box[1] + f.box[3]]
    if not centred:
        return max(range(len(faces)), key=lambda i: faces[i].box[2] * faces[i].box[3])
    return min(centred, key=lambda i: (faces[i].box[0] + faces[i].box[2] / 2 - width / 2) ** 2
                                      + (faces[i].box[1] + faces[i].box[3] / 2 - height / 2) ** 2)


def pyramid_scales(width: int, height: int, min_face_size: int, scale_factor: float = SCALE_FACTOR) -> np.ndarray:
    """The scales at which PNet sees the photo: the first maps a face of min_face_size pixels onto
    PNet's 12-pixel window, each next one scale_factor times the last, down to the last at which the
    photo's short side still holds one window.

    For the default min_face_size of 20 these are the package's scales (but for a narrow band of photo
    sizes, where the package's rounding leaves out the last one); for larger min_face_size the
    package's count, which depends on the photo alone, runs below the window, PNet fails and the
    package returns no face at all.
    """
    short_side = min(width, height)
    first = PNET_WINDOW / min_face_size
    # Enough levels to reach the window, plus one; the filter drops those below it. Powers rather
    # than repeated products give the package's scales to the last bit.
    count = max(0, int(np.log(short_side * first / PNET_WINDOW) / -np.log(scale_factor)) + 2)
    scales = first * scale_factor ** np.arange(count)
    return scales[short_side * scales >= PNET_WINDOW]


def pyramid(width: int, height: int, min_face_size: int, scale_factor: float) -> tuple[np.ndarray, np.ndarray]:
    """pyramid_scales and, for each, the (height, width) the photo is resized to: truncated like the
    package's resize (tf.image.resize casts the float size to int)."""
    scales = pyramid_scales(width, height, min_face_size, scale_factor)
    return scales, (np.asarray([height, width])[None, :] * scales[:, None]).astype(np.int32).reshape(-1, 2)


def _pnet_boxes(cells: np.ndarray, regression: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Boxes in the scaled photo from PNet's windows (as the package's generate_bounding_box: the window
    spans pixels stride*cell+1 .. stride*cell+12, and the regression is in units of its 11-pixel extent)."""
    extent = PNET_WINDOW - 1
    regression = regression.astype(np.float64)  # the package's arithmetic is float64 from here on
    top_left = cells[:, 1:] * PNET_STRIDE + 1
    bottom_right = cells[:, 1:] * PNET_STRIDE + PNET_WINDOW
    return np.stack([cells[:, 0],
                     top_left[:, 1] + regression[:, 0] * extent, top_left[:, 0] + regression[:, 1] * extent,
                     bottom_right[:, 1] + regression[:, 2] * extent, bottom_right[:, 0] + regression[:, 3] * extent,
                     scores], axis=1)


def _suppress_per_image(rows: np.ndarray, threshold: float, overlap: str) -> np.ndarray:
    """Each image's rows sorted by decreasing score, then suppressed: a row is dropped when an earlier
    row of its image overlaps it by more than threshold, even one that was itself dropped (the package's
    rule, utils/bboxes.py nms: stricter than greedy NMS, kept so that our faces are the package's).
    overlap is "union" (IoU) or "min" (intersection over the smaller area). Rows come back by image.

    Images are suppressed together, their rows padded to a common count, a few at a time: one image at
    a time cost about 0.5 ms a photo on the host, which a GPU worker cannot spare (tests/test_detect.py
    holds a batch to the package's suppression photo by photo)."""
    if len(rows) == 0:
        return rows
    # By image, then by decreasing score, equal scores in the order they came. (The package's own sort is
    # NumPy's unstable one, whose order for equal scores depends on the CPU's instructions: 13 of 1,000 LFW
    # photos got other faces with NumPy's AVX2 sort than with its baseline one. Stable, our faces are the
    # same on every CPU, backend and path: pipeline/mtcnn_graph.py sorts so too.)
    rows = rows[np.lexsort((-rows[:, 5], rows[:, 0]))]
    _, starts, counts = np.unique(rows[:, 0], return_index=True, return_counts=True)
    keep = np.zeros(len(rows), dtype=bool)
    for images in _similar_counts(counts):
        size = counts[images].max()
        index = starts[images][:, None] + np.arange(size)[None, :]  # (images, size): rows, padded
        real = np.arange(size)[None, :] < counts[images][:, None]
        boxes = rows[np.where(real, index, 0), 1:5]
        # Row i suppresses row j only when it scores higher (comes earlier): so padding, which comes
        # last, never suppresses a real row.
        suppressing = np.triu(_overlapping(boxes, threshold, overlap), k=1)
        kept = real & ~suppressing.any(axis=1)
        keep[index[kept]] = True
    return rows[keep]


def _similar_counts(counts: np.ndarray, max_elements: int = 50_000) -> Iterator[np.ndarray]:
    """Groups of images (indices into counts), by increasing count, each group's padded overlap matrices
    (images x largest count squared) within max_elements: little padding, small temporaries (measured on
    LFW batches: 50,000 was fastest, 2,000,000 slower than one image at a time)."""
    by_count = np.argsort(counts, kind="stable")
    first = 0
    while first < len(by_count):
        last = first + 1
        while last < len(by_count) and (last + 1 - first) * counts[by_count[last]] ** 2 <= max_elements:
            last += 1
        yield by_count[first:last]
        first = last


def _overlapping(boxes: np.ndarray, threshold: float, overlap: str) -> np.ndarray:
    """(..., n, 4) boxes (x1, y1, x2, y2) -> (..., n, n): whether box i overlaps box j by more than threshold."""
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    areas = (x2 - x1) * (y2 - y1)

    def pairwise(function, a, b):
        return function(a[..., :, None], b[..., None, :])

    widths = np.maximum(0, pairwise(np.minimum, x2, x2) - pairwise(np.maximum, x1, x1))
    heights = np.maximum(0, pairwise(np.minimum, y2, y2) - pairwise(np.maximum, y1, y1))
    intersections = widths * heights
    if overlap == "union":
        denominators = pairwise(np.add, areas, areas) - intersections
    else:
        denominators = pairwise(np.minimum, areas, areas)
    with np.errstate(divide="ignore", invalid="ignore"):
        return intersections / denominators > threshold


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares around the same centre, as the package's resize_to_square."""
    boxes = boxes.copy()
    widths = boxes[:, 3] - boxes[:, 1]
    heights = boxes[:, 4] - boxes[:, 2]
    sides = np.maximum(widths, heights)
    boxes[:, 1] += widths * 0.5 - sides * 0.5
    boxes[:, 2] += heights * 0.5 - sides * 0.5
    boxes[:, 3] = boxes[:, 1] + sides
    boxes[:, 4] = boxes[:, 2] + sides
    return boxes


def _regress(boxes: np.ndarray, regression: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Boxes moved by a stage's regression (in units of the box's size plus one pixel, as the package's
    adjust_bboxes), with the stage's scores."""
    boxes = boxes.copy()
    widths = boxes[:, 3] - boxes[:, 1] + 1
    heights = boxes[:, 4] - boxes[:, 2] + 1
    boxes[:, 1:5] += regression * np.stack([widths, heights, widths, heights], axis=1)
    boxes[:, 5] = scores
    return boxes


def _run_on_crops(network, normalized, boxes: np.ndarray) -> list[np.ndarray]:
    """RNet's or ONet's outputs (MTCNNNetworks.rnet or .onet) for the boxes' crops. The boxes go to
    crop_and_resize divided by the photo's height and width, as the package does (though crop_and_resize
    maps 1.0 to the last pixel)."""
    height, width = normalized.shape[1:3]
    crops = boxes[:, [2, 1, 4, 3]] / np.asarray([height, width, height, width])
    return network(normalized, crops.astype(np.float32), boxes[:, 0].astype(np.int32))

"""MTCNN's three stages for a batch of photos in one TensorFlow function, suppression and box arithmetic
included: what pipeline/detect.py does in NumPy between the networks, run where the networks run.

A GPU worker's host then makes one call per batch and reads the faces back, instead of moving every
stage's candidates to NumPy and suppressing them there (about a millisecond a photo on its one core, which
capped it near a thousand photos a second). The arithmetic is detect.py's, in the same float64 and the
same order, candidates with equal scores in the order they came on both paths, so the faces are the same
(tests/test_detect.py holds the two paths to each other).
TensorFlow only: under JAX, whose compiled functions need fixed shapes, detect.py keeps the NumPy path.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pipeline import detect
from pipeline.backend import compiled
from pipeline.mtcnn_keras import ONET_INPUT, RNET_INPUT

# Candidates are float64 rows (image, x1, y1, x2, y2, score), as in detect.py; the last stage's rows
# have ONet's ten landmark coordinates after them.
ROW = 6


def _sorted_by_image_and_score(rows: tf.Tensor) -> tf.Tensor:
    """rows by image, then by decreasing score; among equal scores the earlier row first."""
    order = tf.argsort(rows[:, 5], direction="DESCENDING", stable=True)
    order = tf.gather(order, tf.argsort(tf.gather(rows[:, 0], order), stable=True))
    return tf.gather(rows, order)


def _overlapping(boxes: tf.Tensor, threshold: float, overlap: str) -> tf.Tensor:
    """detect._overlapping: (B, n, 4) boxes -> (B, n, n) whether box i overlaps box j by more than threshold."""
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    areas = (x2 - x1) * (y2 - y1)

    def pairwise(function, a, b):
        return function(a[..., :, None], b[..., None, :])

    widths = tf.maximum(tf.constant(0, tf.float64), pairwise(tf.minimum, x2, x2) - pairwise(tf.maximum, x1, x1))
    heights = tf.maximum(tf.constant(0, tf.float64), pairwise(tf.minimum, y2, y2) - pairwise(tf.maximum, y1, y1))
    intersections = widths * heights
    if overlap == "union":
        denominators = pairwise(tf.add, areas, areas) - intersections
    else:
        denominators = pairwise(tf.minimum, areas, areas)
    return intersections / denominators > threshold


def suppress_per_image(rows: tf.Tensor, threshold: float, overlap: str) -> tf.Tensor:
    """detect._suppress_per_image: each image's rows by decreasing score, a row dropped when an earlier row
    of its image overlaps it by more than threshold (even one itself dropped). The rows are laid out
    as (images, most rows of an image) matrices, padding last, so that one comparison does every image."""
    rows = _sorted_by_image_and_score(rows)
    image = tf.cast(rows[:, 0], tf.int32)
    counts = tf.math.bincount(image)
    position = tf.range(tf.shape(rows)[0]) - tf.gather(tf.cumsum(counts, exclusive=True), image)
    where = tf.stack([image, position], axis=1)
    shape = tf.stack([tf.size(counts), tf.maximum(tf.reduce_max(counts), 0)])
    boxes = tf.scatter_nd(where, rows[:, 1:5], tf.concat([shape, [4]], 0))
    real = tf.scatter_nd(where, tf.ones_like(image, tf.bool), shape)
    # Row i suppresses row j only when it comes first; padding comes last, so it never suppresses.
    order = tf.range(shape[1])
    suppressing = tf.logical_and(_overlapping(boxes, threshold, overlap), (order[:, None] < order[None, :])[None])
    kept = tf.logical_and(real, tf.logical_not(tf.reduce_any(suppressing, axis=1)))
    return tf.boolean_mask(rows, tf.gather_nd(kept, where))


def _square(boxes: tf.Tensor) -> tf.Tensor:
    """detect._square."""
    widths = boxes[:, 3] - boxes[:, 1]
    heights = boxes[:, 4] - boxes[:, 2]
    sides = tf.maximum(widths, heights)
    x1 = boxes[:, 1] + widths * 0.5 - sides * 0.5
    y1 = boxes[:, 2] + heights * 0.5 - sides * 0.5
    return tf.concat([boxes[:, :1], tf.stack([x1, y1, x1 + sides, y1 + sides], 1), boxes[:, 5:]], 1)


def _regress(boxes: tf.Tensor, regression: tf.Tensor, scores: tf.Tensor) -> tf.Tensor:
    """detect._regress: boxes moved by a stage's regression, with the stage's scores."""
    widths = boxes[:, 3] - boxes[:, 1] + 1
    heights = boxes[:, 4] - boxes[:, 2] + 1
    moved = boxes[:, 1:5] + tf.cast(regression, tf.float64) * tf.stack([widths, heights, widths, heights], 1)
    return tf.concat([boxes[:, :1], moved, tf.cast(scores, tf.float64)[:, None]], 1)


def _crops(boxes: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """detect._run_on_crops's crop_and_resize boxes: (y1, x1, y2, x2) over the photo's height and width."""
    sides = tf.cast(tf.stack([height, width, height, width]), tf.float64)
    crops = tf.gather(boxes, [2, 1, 4, 3], axis=1) / sides
    return tf.cast(crops, tf.float32), tf.cast(boxes[:, 0], tf.int32)


class DetectionGraph:
    """detect(images, sizes, scales) -> (n, 16) float64 rows of every face of the batch before the
    detector's score rule: image, x1, y1, x2, y2 (unclipped), score, five landmark x then five y.

    images is the (B, H, W, 3) uint8 batch; sizes (levels, 2) int32 and scales (levels,) float64 are the
    pyramid's (detect.pyramid), computed on the host since they depend on the photo size alone."""

    def __init__(self, pnet, rnet, onet) -> None:
        self.pnet, self.rnet, self.onet = pnet, rnet, onet
        # Traced once, for any batch and photo size.
        self._detect_graph = compiled(self._detect, [((None, None, None, 3), "uint8"), ((None, 2), "int32"),
                                                     ((None,), "float64")])

    def detect(self, images: tf.Tensor, sizes: np.ndarray, scales: np.ndarray) -> tf.Tensor:
        return self._detect_graph(images, tf.constant(sizes, tf.int32), tf.constant(scales, tf.float64))

    def _detect(self, images, sizes, scales):
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        normalized = (tf.cast(images, tf.float32) - 127.5) / 128
        boxes = self._propose(normalized, sizes, scales)
        # RNet and ONet only on some crops: oneDNN's kernels fail on an empty batch.
        boxes = tf.cond(tf.shape(boxes)[0] > 0, lambda: self._refine(normalized, boxes, height, width),
                        lambda: boxes)
        return tf.cond(tf.shape(boxes)[0] > 0, lambda: self._output(normalized, boxes, height, width),
                       lambda: tf.zeros([0, ROW + 10], tf.float64))

    def _propose(self, normalized, sizes, scales):
        per_scale = tf.TensorArray(tf.float64, size=tf.shape(scales)[0], infer_shape=False,
                                   element_shape=tf.TensorShape([None, ROW]))
        for level in tf.range(tf.shape(scales)[0]):
            resized = tf.image.resize(normalized, sizes[level], method="area")
            regression, classes = self.pnet(resized, training=False)
            probabilities = classes[..., 1]
            cells = tf.where(probabilities > detect.PNET_THRESHOLD)
            boxes = _pnet_boxes(tf.cast(cells, tf.float64), tf.cast(tf.gather_nd(regression, cells), tf.float64),
                                tf.cast(tf.gather_nd(probabilities, cells), tf.float64))
            boxes = tf.concat([boxes[:, :1], boxes[:, 1:5] / scales[level], boxes[:, 5:]], 1)
            per_scale = per_scale.write(level, suppress_per_image(boxes, detect.PNET_SCALE_NMS, "union"))
        boxes = tf.reshape(per_scale.concat(), [-1, ROW])
        return _square(suppress_per_image(boxes, detect.PNET_NMS, "union"))

    def _refine(self, normalized, boxes, height, width):
        regression, classes = self.rnet(tf.image.crop_and_resize(normalized, *_crops(boxes, height, width),
                                                                 (RNET_INPUT, RNET_INPUT)),
                                        training=False)
        boxes = _regress(boxes, regression, classes[:, 1])
        boxes = tf.boolean_mask(boxes, boxes[:, 5] > detect.RNET_THRESHOLD)
        return _square(suppress_per_image(boxes, detect.RNET_NMS, "union"))

    def _output(self, normalized, boxes, height, width):
        regression, landmarks, classes = self.onet(
            tf.image.crop_and_resize(normalized, *_crops(boxes, height, width), (ONET_INPUT, ONET_INPUT)),
            training=False)
        # Landmarks are relative to the box ONet saw, before its own regression moves it.
        landmarks = tf.cast(landmarks, tf.float64)
        widths = boxes[:, 3:4] - boxes[:, 1:2] + 1
        heights = boxes[:, 4:5] - boxes[:, 2:3] + 1
        landmarks = tf.concat([widths * landmarks[:, :5] + boxes[:, 1:2] - 1,
                               heights * landmarks[:, 5:] + boxes[:, 2:3] - 1], 1)
        boxes = _regress(boxes, regression, classes[:, 1])
        keep = boxes[:, 5] > detect.ONET_THRESHOLD
        rows = tf.concat([tf.boolean_mask(boxes, keep), tf.boolean_mask(landmarks, keep)], 1)
        return suppress_per_image(rows, detect.ONET_NMS, "min")


def _pnet_boxes(cells, regression, scores):
    """detect._pnet_boxes, on (image, row, column) cells as float64."""
    extent = detect.PNET_WINDOW - 1
    top_left = cells[:, 1:] * detect.PNET_STRIDE + 1
    bottom_right = cells[:, 1:] * detect.PNET_STRIDE + detect.PNET_WINDOW
    return tf.stack([cells[:, 0],
                     top_left[:, 1] + regression[:, 0] * extent, top_left[:, 0] + regression[:, 1] * extent,
                     bottom_right[:, 1] + regression[:, 2] * extent, bottom_right[:, 0] + regression[:, 3] * extent,
                     scores], axis=1)

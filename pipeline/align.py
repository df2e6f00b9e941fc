"""Face alignment: cut the 150x150 chip the dlib ResNet expects from a face's 5 landmarks."""

from __future__ import annotations

import numpy as np
from PIL import Image

CHIP_SIZE = 150

# Where MTCNN's landmarks (image-left eye, image-right eye, nose tip, mouth image-left, mouth
# image-right) fall on the chip dlib cuts with get_face_chip(size=150, padding=0.25).
# Derived by `python -m bench.align_template` (averaged over 368 LFW faces).
CHIP_TEMPLATE = np.array(
    [[46.79, 44.73], [100.78, 44.83], [73.57, 76.34], [49.81, 104.17], [97.16, 104.33]],
    dtype=np.float64,
)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation mapping source points onto target.

    Returns a 2x3 matrix M with target ~= M @ [x, y, 1]. (Umeyama's method, without reflection.)
    """
    src_mean, dst_mean = source.mean(axis=0), target.mean(axis=0)
    src, dst = source - src_mean, target - dst_mean
    u, s, vt = np.linalg.svd(dst.T @ src / len(source))
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src.var(axis=0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def similarity_transforms(sources: np.ndarray, target: np.ndarray) -> np.ndarray:
    """similarity_transform for a stack of point sets, all at once: (n, k, 2) sources -> (n, 2, 3)."""
    src_mean, dst_mean = sources.mean(axis=1, keepdims=True), target.mean(axis=0)
    src, dst = sources - src_mean, target - dst_mean
    u, s, vt = np.linalg.svd(np.einsum("kd,nke->nde", dst, src) / sources.shape[1])
    d = np.ones((len(sources), 2))
    d[np.linalg.det(u) * np.linalg.det(vt) < 0, -1] = -1
    rotations = u @ (d[:, :, None] * vt)
    scales = (s * d).sum(axis=1) / src.var(axis=1).sum(axis=1)
    matrices = np.zeros((len(sources), 2, 3))
    matrices[:, :, :2] = scales[:, None, None] * rotations
    matrices[:, :, 2] = dst_mean - np.einsum("nde,ne->nd", matrices[:, :, :2], src_mean[:, 0])
    return matrices


def chip_to_photo(landmarks: np.ndarray, size: int = CHIP_SIZE) -> np.ndarray:
    """For (n, 5, 2) landmarks, the (n, 6) affine maps from chip pixel to photo pixel, as Pillow's AFFINE
    transform takes them: (a, b, c, d, e, f) with x = a x' + b y' + c, y = d x' + e y' + f."""
    to_chip = similarity_transforms(np.asarray(landmarks, np.float64), CHIP_TEMPLATE * (size / CHIP_SIZE))
    rows = np.concatenate([to_chip, np.broadcast_to([[[0.0, 0.0, 1.0]]], (len(to_chip), 1, 3))], axis=1)
    return np.linalg.inv(rows)[:, :2].reshape(-1, 6)


class ChipCutter:
    """align_face for every face of a batch of photos in one call on the Keras backend's device: the
    photos' pixels go over once, and the chips are cut by gathers there, not by Pillow face by face on the
    host (0.5 to 0.8 ms a face, which bounds a GPU worker's photos per second).

    The sampling is Pillow's BILINEAR affine transform, step by step (libImaging/Geometry.c): each chip
    pixel's centre mapped into the photo, black outside it, edge pixels repeated within it, the blend
    truncated to an integer. In float32 rather than Pillow's double, so that a blend within about 1e-3 of
    a whole number can come out one level apart (tests/test_align.py bounds how often).
    """

    def __init__(self, size: int = CHIP_SIZE, device: str | None = None) -> None:
        from pipeline.backend import compiled

        self.size = size
        self.device = device
        self._cut = compiled(self._bilinear, [((None, 3), "uint8"), ((None, 3), "int32"), ((None, 6), "float32")])

    def cut(self, photos: list[np.ndarray], landmarks: list[np.ndarray]) -> np.ndarray:
        """uint8 chips (n, size, size, 3) for photos[i]'s faces, whose (k_i, 5, 2) landmarks are landmarks[i],
        in order: photo by photo, face by face."""
        import keras

        from pipeline.backend import aligned_empty, device_scope, filled_to_compiled_size, on_device

        counts = [len(points) for points in landmarks]
        count = sum(counts)
        if count == 0:
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        with_faces = [i for i, n in enumerate(counts) if n]
        # Only the photos with a face go over, one after another in one buffer of pixels.
        sizes = np.asarray([photos[i].shape[:2] for i in with_faces])
        starts = np.concatenate([[0], np.cumsum(sizes[:, 0] * sizes[:, 1])[:-1]])
        per_face = np.repeat(np.arange(len(with_faces)), [counts[i] for i in with_faces])
        pixels = np.concatenate([photos[i].reshape(-1, 3) for i in with_faces],
                                out=aligned_empty((int(sizes.prod(axis=1).sum()), 3)))
        geometry = np.stack([starts[per_face], sizes[per_face, 1], sizes[per_face, 0]], axis=1).astype(np.int32)
        transforms = chip_to_photo(np.concatenate([landmarks[i] for i in with_faces]), self.size).astype(np.float32)
        with device_scope(self.device):
            # Under JAX the sizes are filled up to powers of two, so that few shapes compile.
            chips = self._cut(on_device(filled_to_compiled_size(pixels, 1)), filled_to_compiled_size(geometry, 8),
                              filled_to_compiled_size(transforms, 8))
            return keras.ops.convert_to_numpy(chips)[:count]

    def _bilinear(self, pixels, geometry, transforms):
        from keras import ops

        centres = ops.arange(self.size, dtype="float32") + 0.5
        a, b, c, d, e, f = (transforms[:, i][:, None, None] for i in range(6))
        x = a * centres[None, None, :] + b * centres[None, :, None] + c  # (n, size, size)
        y = d * centres[None, None, :] + e * centres[None, :, None] + f
        first, widths, heights = (geometry[:, i][:, None, None] for i in range(3))
        inside = (x >= 0) & (x < ops.cast(widths, "float32")) & (y >= 0) & (y < ops.cast(heights, "float32"))
        x, y = x - 0.5, y - 0.5
        left, top = ops.floor(x), ops.floor(y)
        dx, dy = (x - left)[..., None], (y - top)[..., None]
        left, top = ops.cast(left, "int32"), ops.cast(top, "int32")
        x0, x1 = ops.clip(left, 0, widths - 1), ops.clip(left + 1, 0, widths - 1)
        y0, y1 = ops.clip(top, 0, heights - 1), ops.clip(top + 1, 0, heights - 1)

        def at(rows, columns):
            return ops.cast(ops.take(pixels, first + rows * widths + columns, axis=0), "float32")

        upper = at(y0, x0) + (at(y0, x1) - at(y0, x0)) * dx
        lower = at(y1, x0) + (at(y1, x1) - at(y1, x0)) * dx
        blend = upper + (lower - upper) * dy
        return ops.cast(ops.where(inside[..., None], ops.floor(blend), 0), "uint8")


def align_faces(image: np.ndarray, landmarks: list[np.ndarray], size: int = CHIP_SIZE) -> list[np.ndarray]:
    """align_face for each face's landmarks in one photo (the photo is handed to Pillow once: a copy of a
    2000-pixel photo per face took 3 ms)."""
    if not landmarks:
        return []
    photo = Image.fromarray(image)
    return [align_face(photo, points, size) for points in landmarks]


def align_face(image: np.ndarray | Image.Image, landmarks: np.ndarray, size: int = CHIP_SIZE) -> np.ndarray:
    """Cut a size x size RGB chip from image (pixels, or a PIL image) so the 5 landmarks land on the dlib
    chip template."""
    # All 5 points fitted, BILINEAR: measured against the alternatives on LFW pairs (mirrored, cosine,
    # 10 folds), where this chip makes 42 pairs wrong of 6,000. Fitting eyes and nose only, as dlib's own
    # 5-point predictor (4 eye corners, nose base) weights the face, made 50 to 52 wrong; eyes only 67;
    # BICUBIC 48; dlib's shape predictor run in MTCNN's box, then dlib.get_face_chip, 54. Averaging
    # descriptors over several of these alignments made 40 to 41: within the noise, for twice the work.
    template = CHIP_TEMPLATE * (size / CHIP_SIZE)
    to_chip = similarity_transform(np.asarray(landmarks, dtype=np.float64), template)
    # Pillow wants the inverse mapping: chip pixel -> image pixel.
    inverse = np.linalg.inv(np.vstack([to_chip, [0, 0, 1]]))[:2]
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    chip = image.transform(
        (size, size), Image.Transform.AFFINE, inverse.ravel().tolist(), resample=Image.Resampling.BILINEAR
    )
    return np.asarray(chip, dtype=np.uint8)

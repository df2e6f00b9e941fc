"""MTCNN's three networks (PNet, RNet, ONet) in Keras 3, for any Keras backend.

The `mtcnn` package builds its networks as TensorFlow models and resizes and crops with tf.image, so
it cannot run where TensorFlow is absent (GPU machines with JAX only). Here the same layers, with the
same names, are built from keras.layers alone and given the package's own weight files, and the two
tf.image operations the detector needs are written with keras.ops and NumPy:

- area_resize: tf.image.resize(method="area") (TensorFlow's ResizeArea kernel), for the image pyramid;
- crop_and_resize: tf.image.crop_and_resize (bilinear, zeros outside the photo), for RNet's and ONet's
  crops.

The sample positions and weights are computed in NumPy in float32 with the kernels' own formulas (they
depend only on sizes and boxes, and are small); only the gathers and weighted sums of pixels run on the
backend, so that the batch of photos stays on the device. MTCNNNetworks runs the three stages for
pipeline/detect.py; tests/test_keras_backends.py holds them to the package's networks and tf.image.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras
import numpy as np

from pipeline.backend import compiled, filled_to_compiled_size

# Pixels of the crops RNet and ONet look at.
RNET_INPUT = 24
ONET_INPUT = 48

# Under JAX every new input shape compiles the network again, so the number of crops is rounded up
# to a power of two (at least this many): a few dozen compilations in all instead of one per batch.
MIN_CROP_BATCH = 16


def build_pnet() -> keras.Model:
    """The proposal network: a photo of any size -> for every 12x12 window (stride 2), the box
    regression (4) and the softmax over (not face, face)."""
    images = keras.Input((None, None, 3), name="images")
    x = keras.layers.Conv2D(10, 3, name="conv1")(images)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="prelu1")(x)
    x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name="maxpooling1")(x)
    x = keras.layers.Conv2D(16, 3, name="conv2")(x)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="prelu2")(x)
    x = keras.layers.Conv2D(32, 3, name="conv3")(x)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="prelu3")(x)
    box_regression = keras.layers.Conv2D(4, 1, name="conv4-1")(x)
    face_probability = keras.layers.Conv2D(2, 1, activation="softmax", name="conv4-2")(x)
    return keras.Model(images, [box_regression, face_probability], name="pnet")


def build_rnet() -> keras.Model:
    """The refinement network: 24x24 crops -> box regression (4) and softmax over (not face, face)."""
    crops = keras.Input((RNET_INPUT, RNET_INPUT, 3), name="crops")
    x = keras.layers.Conv2D(28, 3, name="conv1")(crops)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="prelu1")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="maxpooling1")(x)
    x = keras.layers.Conv2D(48, 3, name="conv2")(x)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="prelu2")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpooling2")(x)
    x = keras.layers.Conv2D(64, 2, name="conv3")(x)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="prelu3")(x)
    # The weights were trained (in Caffe) on column-major feature maps: swap rows and columns before flattening.
    x = keras.layers.Permute((2, 1, 3), name="permute")(x)
    x = keras.layers.Flatten(name="flatten3")(x)
    x = keras.layers.Dense(128, name="fc4")(x)
    x = keras.layers.PReLU(name="prelu4")(x)
    box_regression = keras.layers.Dense(4, name="fc5-1")(x)
    face_probability = keras.layers.Dense(2, activation="softmax", name="fc5-2")(x)
    return keras.Model(crops, [box_regression, face_probability], name="rnet")


def build_onet() -> keras.Model:
    """The output network: 48x48 crops -> box regression (4), landmarks (5 x then 5 y, relative to the
    crop) and softmax over (not face, face)."""
    crops = keras.Input((ONET_INPUT, ONET_INPUT, 3), name="crops")
    x = keras.layers.Conv2D(32, 3, name="conv1")(crops)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="prelu1")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="maxpooling1")(x)
    x = keras.layers.Conv2D(64, 3, name="conv2")(x)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="prelu2")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpooling2")(x)
    x = keras.layers.Conv2D(64, 3, name="conv3")(x)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="prelu3")(x)
    x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name="maxpooling3")(x)
    x = keras.layers.Conv2D(128, 2, name="conv4")(x)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="prelu4")(x)
    x = keras.layers.Permute((2, 1, 3), name="permute")(x)
    x = keras.layers.Flatten(name="flatten4")(x)
    x = keras.layers.Dense(256, name="fc5")(x)
    x = keras.layers.PReLU(name="prelu5")(x)
    box_regression = keras.layers.Dense(4, name="fc6-1")(x)
    landmarks = keras.layers.Dense(10, name="fc6-2")(x)
    face_probability = keras.layers.Dense(2, activation="softmax", name="fc6-3")(x)
    return keras.Model(crops, [box_regression, landmarks, face_probability], name="onet")


# The layers that hold weights, in the order the package's weight files list their arrays (the order
# in which its models create them).
WEIGHTED_LAYERS = {
    "pnet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4-1", "conv4-2"],
    "rnet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "fc4", "prelu4", "fc5-1", "fc5-2"],
    "onet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4", "prelu4", "fc5", "prelu5",
             "fc6-1", "fc6-2", "fc6-3"],
}


def package_weights_path(name: str) -> Path:
    """The `mtcnn` package's weight file for "pnet", "rnet" or "onet", found without importing the
    package (its __init__ imports TensorFlow)."""
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the mtcnn package is not installed: its weight files are needed")
    return Path(spec.submodule_search_locations[0]) / "assets" / "weights" / f"{name}.lz4"


def load_weights(model: keras.Model, name: str) -> None:
    """Give a network from build_pnet/rnet/onet the package's weights (a joblib list of NumPy arrays,
    read in memory; nothing is written)."""
    import joblib  # here: GPU machines that run the face ResNet alone need neither joblib nor lz4

    arrays = list(joblib.load(package_weights_path(name)))
    for layer_name in WEIGHTED_LAYERS[name]:
        layer = model.get_layer(layer_name)
        count = len(layer.weights)
        layer_arrays, arrays = arrays[:count], arrays[count:]
        expected = [tuple(w.shape) for w in layer.weights]
        if [a.shape for a in layer_arrays] != expected:
            raise ValueError(f"{name} {layer_name}: the weight file has {[a.shape for a in layer_arrays]}, "
                             f"the network expects {expected}")
        layer.set_weights(layer_arrays)
    if arrays:
        raise ValueError(f"{name}: {len(arrays)} arrays of the weight file were not used")


def load_networks() -> tuple[keras.Model, keras.Model, keras.Model]:
    """PNet, RNet and ONet with the package's trained weights."""
    networks = []
    for name, build in (("pnet", build_pnet), ("rnet", build_rnet), ("onet", build_onet)):
        model = build()
        load_weights(model, name)
        networks.append(model)
    return tuple(networks)


# -- area resize ------------------------------------------------------------------------------------

def area_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """For one axis, what TensorFlow's ResizeArea kernel sums: (out_size, k) input indices, their
    (out_size, k) float32 weights (0 for padding), and the axis's scale in / out.

    Output cell y covers input [y * scale, (y + 1) * scale); each input cell counts by how much of it
    lies inside. The arithmetic is the kernel's, in float32, so that the sums are the same.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    cells = np.arange(out_size, dtype=np.float32)
    starts = cells * scale
    ends = (cells + np.float32(1)) * scale
    first = np.floor(starts).astype(np.int64)
    last = np.ceil(ends).astype(np.int64)  # exclusive
    width = int((last - first).max())
    index = first[:, None] + np.arange(width)[None, :]
    lower = index.astype(np.float32)
    upper = (index + 1).astype(np.float32)
    # The kernel's cases: a cell that starts before the window and ends after it counts `scale`; one
    # that starts before counts up to its end; one that ends after counts from its start; else 1.
    weights = np.where(
        lower < starts[:, None],
        np.where(upper > ends[:, None], scale, upper - starts[:, None]),
        np.where(upper > ends[:, None], ends[:, None] - lower, np.float32(1)),
    ).astype(np.float32)
    weights[index >= last[:, None]] = 0
    # The last window can end a rounding error past the photo: the kernel reads the edge pixel again.
    return np.clip(index, 0, in_size - 1).astype(np.int32), weights, scale


def _weighted_sum(images, index, weights, axis: int):
    """sum_k images[..., index[:, k], ...] * weights[:, k] along axis 1 (rows) or 2 (columns)."""
    gathered = keras.ops.take(images, index, axis=axis)  # the axis becomes (out, k)
    weights = weights[None, :, :, None, None] if axis == 1 else weights[None, None, :, :, None]
    return keras.ops.sum(gathered * weights, axis=axis + 1)


def _area_resize(images, row_index, row_weights, column_index, column_weights, scale):
    # As the kernel: each input row's weighted sum across the columns, then across the rows.
    columns_done = _weighted_sum(images, column_index, column_weights, axis=2)
    return _weighted_sum(columns_done, row_index, row_weights, axis=1) * scale


def area_inputs(height: int, width: int, size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """The arrays _area_resize takes for resizing height x width photos to size (height, width)."""
    row_index, row_weights, row_scale = area_weights(height, int(size[0]))
    column_index, column_weights, column_scale = area_weights(width, int(size[1]))
    # float32 product, then the reciprocal in double rounded to float32, as the kernel.
    scale = np.float32(1.0 / np.float64(row_scale * column_scale))
    return row_index, row_weights, column_index, column_weights, np.asarray(scale, np.float32)


def area_resize(images, size: tuple[int, int]):
    """tf.image.resize(images, size, method="area") for a float32 (B, H, W, C) batch, on any backend."""
    height, width = images.shape[1:3]
    return _area_resize(images, *area_inputs(height, width, size))


# -- crop and resize ----------------------------------------------------------------------------------

def _sample_positions(starts: np.ndarray, ends: np.ndarray, in_size: int, out_size: int):
    """For each box's side (normalized start and end, float32), crop_and_resize's sample positions along
    that axis: (n, out_size) lower index, upper index, interpolation weight and inside-the-photo flag."""
    last = np.float32(in_size - 1)
    if out_size > 1:
        step = (ends - starts) * last / np.float32(out_size - 1)
        positions = starts[:, None] * last + np.arange(out_size, dtype=np.float32)[None, :] * step[:, None]
    else:
        positions = np.repeat((np.float32(0.5) * (starts + ends) * last)[:, None], out_size, axis=1)
    positions = positions.astype(np.float32)
    inside = (positions >= 0) & (positions <= last)
    # Positions outside the photo give zeros; their indices only need to be valid.
    clipped = np.clip(positions, 0, last)
    lower = np.floor(clipped)
    upper = np.ceil(clipped)
    return lower.astype(np.int32), upper.astype(np.int32), (clipped - lower).astype(np.float32), inside


def crop_inputs(image_shape: tuple[int, ...], boxes: np.ndarray, crop_size: int) -> tuple[np.ndarray, ...]:
    """The arrays _crop_and_resize takes: for (n, 4) float32 boxes (y1, x1, y2, x2, normalized so that
    1.0 is the last pixel) on photos of image_shape (B, H, W, C), the rows and columns each crop samples."""
    height, width = image_shape[1:3]
    boxes = np.asarray(boxes, np.float32)
    top, bottom, row_lerp, row_inside = _sample_positions(boxes[:, 0], boxes[:, 2], height, crop_size)
    left, right, column_lerp, column_inside = _sample_positions(boxes[:, 1], boxes[:, 3], width, crop_size)
    inside = (row_inside[:, :, None] & column_inside[:, None, :]).astype(np.float32)
    return top, bottom, row_lerp, left, right, column_lerp, inside


def _crop_and_resize(images, box_images, top, bottom, row_lerp, left, right, column_lerp, inside):
    """Bilinear crops: for each box, its photo's pixels at the sample rows and columns, blended."""
    _, height, width, channels = keras.ops.shape(images)
    pixels = keras.ops.reshape(images, (-1, channels))
    first_pixel = keras.ops.cast(box_images, "int32")[:, None, None] * (height * width)

    def at(rows, columns):
        index = first_pixel + rows[:, :, None] * width + columns[:, None, :]
        return keras.ops.take(pixels, index, axis=0)  # (n, crop, crop, channels)

    column_lerp = column_lerp[:, None, :, None]
    # The kernel's order of operations: along the row first, then between the two rows.
    upper = at(top, left) + (at(top, right) - at(top, left)) * column_lerp
    lower = at(bottom, left) + (at(bottom, right) - at(bottom, left)) * column_lerp
    crops = upper + (lower - upper) * row_lerp[:, :, None, None]
    return crops * inside[:, :, :, None]


def crop_and_resize(images, boxes: np.ndarray, box_images: np.ndarray, crop_size: int):
    """tf.image.crop_and_resize(images, boxes, box_images, (crop_size, crop_size)) (bilinear, zeros
    outside the photo) for a float32 (B, H, W, C) batch, on any backend."""
    arrays = crop_inputs(tuple(images.shape), boxes, crop_size)
    return _crop_and_resize(images, np.asarray(box_images, np.int32), *arrays)


# -- the three stages, compiled --------------------------------------------------------------------------


class MTCNNNetworks:
    """PNet on the image pyramid and RNet and ONet on crops, each with its resize or crop in one
    compiled function, on any backend, with NumPy out: the networks of pipeline/detect.py's FaceDetector.

    Under TensorFlow the resize and crops are tf.image's own kernels, which area_resize and
    crop_and_resize reproduce (tests/test_keras_backends.py): on a CPU they are several times faster
    than gathers (the pyramid of 32 LFW photos: 20 ms against 175). Other backends use ours.

    normalized is the (B, H, W, 3) float32 batch ((pixels - 127.5) / 128), as a NumPy array or, better,
    a backend tensor made once (keras.ops.convert_to_tensor), so that it moves to the device once.
    """

    def __init__(self) -> None:
        self.pnet_model, self.rnet_model, self.onet_model = load_networks()
        self._tensorflow = keras.backend.backend() == "tensorflow"
        if self._tensorflow:
            import tensorflow as tf

            def resize(images, size):
                return tf.image.resize(images, size, method="area")

            def crop(crop_size: int):
                return lambda images, boxes, box_images: tf.image.crop_and_resize(
                    images, boxes, box_images, (crop_size, crop_size))
        else:
            resize = _area_resize

            def crop(crop_size: int):
                return _crop_and_resize  # the crop size is in its sample positions
        crop_rnet, crop_onet = crop(RNET_INPUT), crop(ONET_INPUT)

        def run_pnet(normalized, *resize_inputs):
            regression, classes = self.pnet_model(resize(normalized, *resize_inputs), training=False)
            return regression, classes[..., 1]

        def run_rnet(normalized, *crop_inputs):
            regression, classes = self.rnet_model(crop_rnet(normalized, *crop_inputs), training=False)
            return regression, classes[:, 1]

        def run_onet(normalized, *crop_inputs):
            regression, landmarks, classes = self.onet_model(crop_onet(normalized, *crop_inputs), training=False)
            return regression, landmarks, classes[:, 1]

        self._pnet, self._rnet, self._onet = compiled(run_pnet), compiled(run_rnet), compiled(run_onet)

    def pnet(self, normalized, size: tuple[int, int], threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """PNet on the batch resized to size (height, width): the (image, row, column) of every window
        whose face probability is above threshold, its box regression (n, 4) and its probability (n,)."""
        height, width = normalized.shape[1:3]
        resize_inputs = (np.asarray(size, np.int32),) if self._tensorflow else area_inputs(height, width, size)
        regression, probabilities = self._pnet(normalized, *resize_inputs)
        # The windows are chosen here rather than in the compiled function: their count varies.
        # np.asarray, not keras.ops.convert_to_numpy, which copies the whole maps again on the host.
        probabilities = np.asarray(probabilities)
        cells = np.argwhere(probabilities > threshold)
        regression = np.asarray(regression)[cells[:, 0], cells[:, 1], cells[:, 2]]
        return cells, regression, probabilities[cells[:, 0], cells[:, 1], cells[:, 2]]

    def rnet(self, normalized, boxes: np.ndarray, box_images: np.ndarray) -> list[np.ndarray]:
        """RNet on the boxes' 24x24 crops (boxes as crop_and_resize takes them): regression (n, 4) and
        face probability (n,)."""
        return self._on_crops(self._rnet, RNET_INPUT, normalized, boxes, box_images)

    def onet(self, normalized, boxes: np.ndarray, box_images: np.ndarray) -> list[np.ndarray]:
        """ONet on the boxes' 48x48 crops: regression (n, 4), landmarks (n, 10) and face probability (n,)."""
        return self._on_crops(self._onet, ONET_INPUT, normalized, boxes, box_images)

    def _on_crops(self, network, crop_size: int, normalized, boxes: np.ndarray,
                  box_images: np.ndarray) -> list[np.ndarray]:
        count = len(boxes)
        # Under JAX, copies of the first box up to a count already compiled; their outputs are dropped.
        boxes = filled_to_compiled_size(np.asarray(boxes, np.float32), MIN_CROP_BATCH)
        box_images = filled_to_compiled_size(np.asarray(box_images, np.int32), MIN_CROP_BATCH)
        if self._tensorflow:
            outputs = network(normalized, boxes, box_images)
        else:
            outputs = network(normalized, box_images, *crop_inputs(tuple(normalized.shape), boxes, crop_size))
        return [np.asarray(output)[:count] for output in outputs]

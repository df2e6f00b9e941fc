"""dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1) in Keras.

The topology is dlib's `anet_type` from tools/python/src/face_recognition.cpp; the weights
are converted from the .dat file shipped in the `face_recognition_models` package, once,
and cached as Keras weights. The network maps a 150x150 RGB face chip, aligned the way
dlib.get_face_chip cuts it, to a 128-d descriptor; descriptors of the same person lie
within about 0.6 (Euclidean) of each other.

Three details of dlib that a straight port gets wrong:
- dlib pads a convolution by k//2 only at stride 1; at stride 2 it does not pad at all,
  which is not Keras "same" padding. Every pooling layer here pads nothing either.
- In a downsampling block the shortcut is a 2x2/2 average pool of the block's input, with
  its missing channels taken as zeros.
- dlib adds tensors of different sizes by zero-filling each to the larger size (channels at
  the end, rows at the bottom, columns at the right). The last two downsampling blocks
  rely on it: their convolution path comes out one row and column smaller than the
  shortcut.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from pipeline.align import CHIP_SIZE
from pipeline.backend import compiled, device_scope, filled_to_compiled_size, resolved_precision
from pipeline.dlib_format import DlibLayer, read_network

# Under JAX the smallest batch compiled: shorter ones are padded to a power of two at least this large.
MIN_JAX_BATCH = 8

# Part of the cache file name: bump it whenever the conversion changes, so that weights
# converted by an older converter are never loaded.
CONVERTER_VERSION = 1

DESCRIPTOR_SIZE = 128
# input_rgb_image_sized subtracts these per-channel means (R, G, B) and divides by 256.
RGB_MEANS = np.array([122.782, 117.001, 104.298], dtype=np.float32)
INPUT_SCALE = np.float32(256.0)

# (filters, downsamples) of each residual block, input to output: dlib's alevel4 .. alevel0.
RESIDUAL_BLOCKS = (
    [(32, False)] * 3
    + [(64, True)] + [(64, False)] * 3
    + [(128, True)] + [(128, False)] * 2
    + [(256, True)] + [(256, False)] * 2
    + [(256, True)]
)


@keras.saving.register_keras_serializable(package="facerec")
class Affine(keras.layers.Layer):
    """dlib's affine layer: per-channel gamma * x + beta, what batch norm becomes at inference."""

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = input_shape[-1]
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")

    def call(self, inputs):
        return inputs * self.gamma + self.beta


@keras.saving.register_keras_serializable(package="facerec")
class ZeroPadChannels(keras.layers.Layer):
    """Appends all-zero channels, as dlib's add does for the tensor with fewer channels."""

    def __init__(self, extra_channels: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.extra_channels = extra_channels

    def call(self, inputs):
        return keras.ops.pad(inputs, [[0, 0], [0, 0], [0, 0], [0, self.extra_channels]])

    def get_config(self) -> dict:
        return {**super().get_config(), "extra_channels": self.extra_channels}


def _conv_affine(x, filters: int, size: int, stride: int, name: str, with_affine: bool):
    """A convolution named `name`, followed by its affine layer `name`_affine."""
    # At stride 1 dlib pads k//2 on every side, which for odd k is exactly Keras "same";
    # at any other stride dlib pads nothing ("valid").
    padding = "same" if stride == 1 else "valid"
    x = keras.layers.Conv2D(filters, size, strides=stride, padding=padding, name=name)(x)
    return Affine(name=f"{name}_affine")(x) if with_affine else x


def _pad_to(x, height: int, width: int, channels: int, name: str):
    """Zero-fill x at the bottom, right and in trailing channels up to the given size."""
    _, x_height, x_width, x_channels = x.shape
    if (x_height, x_width) != (height, width):
        padding = ((0, height - x_height), (0, width - x_width))
        x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad_spatial")(x)
    if x_channels != channels:
        x = ZeroPadChannels(channels - x_channels, name=f"{name}_pad_channels")(x)
    return x


def _residual_block(x, filters: int, downsample: bool, name: str, with_affine: bool):
    """dlib's ares / ares_down: relu(block(x) + shortcut(x))."""
    stride = 2 if downsample else 1
    y = _conv_affine(x, filters, 3, stride, f"{name}_conv_a", with_affine)
    y = keras.layers.ReLU(name=f"{name}_relu_a")(y)
    y = _conv_affine(y, filters, 3, 1, f"{name}_conv_b", with_affine)

    shortcut = x
    if downsample:
        shortcut = keras.layers.AveragePooling2D(2, strides=2, name=f"{name}_skip_pool")(x)
    height = max(y.shape[1], shortcut.shape[1])
    width = max(y.shape[2], shortcut.shape[2])
    channels = max(y.shape[3], shortcut.shape[3])
    y = _pad_to(y, height, width, channels, f"{name}_block")
    shortcut = _pad_to(shortcut, height, width, channels, f"{name}_skip")
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu")(y)


def _block_names() -> list[str]:
    """Names like block_32_1, block_64_down_1, block_64_1, ..., numbered per kind and width."""
    counts: dict[tuple[int, bool], int] = {}
    names = []
    for filters, downsample in RESIDUAL_BLOCKS:
        counts[filters, downsample] = counts.get((filters, downsample), 0) + 1
        kind = "down_" if downsample else ""
        names.append(f"block_{filters}_{kind}{counts[filters, downsample]}")
    return names


def build_face_resnet(with_affine: bool = True) -> keras.Model:
    """The network with untrained weights: (None, 150, 150, 3) scaled chips -> (None, 128).

    with_affine=False leaves out the affine layers, for fold_affine_layers().
    """
    inputs = keras.Input((CHIP_SIZE, CHIP_SIZE, 3), dtype="float32", name="chips")
    x = _conv_affine(inputs, 32, 7, 2, "conv1", with_affine)
    x = keras.layers.ReLU(name="conv1_relu")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for (filters, downsample), name in zip(RESIDUAL_BLOCKS, _block_names(), strict=True):
        x = _residual_block(x, filters, downsample, name, with_affine)
    x = keras.layers.GlobalAveragePooling2D(name="global_avg_pool")(x)
    outputs = keras.layers.Dense(DESCRIPTOR_SIZE, use_bias=False, name="embedding")(x)
    return keras.Model(inputs, outputs, name="dlib_face_resnet_v1")


def _dlib_layer_kinds() -> list[str]:
    """The kinds of dlib's layers, input to output, that anet_type serializes."""
    kinds = ["con", "affine", "relu", "max_pool"]
    for _, downsample in RESIDUAL_BLOCKS:
        kinds += ["con", "affine", "relu", "con", "affine"]
        kinds += ["avg_pool", "add_prev", "relu"] if downsample else ["add_prev", "relu"]
    return kinds + ["avg_pool", "fc"]


def _weighted_layer_names() -> list[str]:
    """Names of the layers that hold weights, in the order dlib stores them."""
    convs = ["conv1"]
    for name in _block_names():
        convs += [f"{name}_conv_a", f"{name}_conv_b"]
    return [layer for conv in convs for layer in (conv, f"{conv}_affine")] + ["embedding"]


def _check_conv_geometry(dlib_conv: DlibLayer, keras_conv: keras.layers.Conv2D) -> None:
    """Fail unless the file's filter size, stride and padding are the ones the model was built with."""
    config = dlib_conv.config
    size, stride = keras_conv.kernel_size[0], keras_conv.strides[0]
    padding = size // 2 if keras_conv.padding == "same" else 0
    expected = {"nr": size, "nc": size, "stride_y": stride, "stride_x": stride,
                "padding_y": padding, "padding_x": padding, "use_bias": True, "use_relu": False}
    found = {key: config[key] for key in expected}
    if found != expected:
        raise ValueError(f"{keras_conv.name}: dlib has {found}, the Keras model assumes {expected}")


def convert_dlib_weights(model: keras.Model, dat_path: str | Path) -> None:
    """Copy the weights of dlib's .dat file into a model from build_face_resnet()."""
    network = read_network(dat_path)
    kinds = [layer.kind for layer in network.layers]
    if kinds != _dlib_layer_kinds():
        raise ValueError(f"{dat_path} does not hold the network build_face_resnet() builds")
    means = [network.input.config[key] for key in ("avg_red", "avg_green", "avg_blue")]
    if not np.allclose(means, RGB_MEANS):
        raise ValueError(f"{dat_path} expects input means {means}, not {RGB_MEANS.tolist()}")

    dlib_layers = [layer for layer in network.layers if layer.params]
    keras_layers = [model.get_layer(name) for name in _weighted_layer_names()]
    for dlib_layer, keras_layer in zip(dlib_layers, keras_layers, strict=True):
        if dlib_layer.kind == "con":
            _check_conv_geometry(dlib_layer, keras_layer)
            # dlib stores filters as (out, in, rows, cols); Keras wants (rows, cols, in, out).
            kernel = dlib_layer.params["filters"].transpose(2, 3, 1, 0)
            keras_layer.set_weights([kernel, dlib_layer.params["biases"]])
        elif dlib_layer.kind == "affine":
            keras_layer.set_weights([dlib_layer.params["gamma"], dlib_layer.params["beta"]])
        else:
            keras_layer.set_weights([dlib_layer.params["weights"]])


def load_face_resnet(cache_dir: str | Path) -> keras.Model:
    """The network with dlib's trained weights, converted on first use and cached in cache_dir."""
    cache_dir = Path(cache_dir)
    cache_path = cache_dir / f"face_resnet_v{CONVERTER_VERSION}.weights.h5"
    model = build_face_resnet()
    if cache_path.exists():
        model.load_weights(cache_path)
        return model

    # Here, not at the top: the package is 100 MB of dlib models, and a GPU node can run from the cache alone.
    import face_recognition_models

    convert_dlib_weights(model, face_recognition_models.face_recognition_model_location())
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Write to a temporary file and rename it, so that a crash or a concurrent worker never
    # leaves a half-written cache behind. Keras insists on the .weights.h5 suffix.
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=".tmp_", suffix=".weights.h5")
    os.close(fd)
    try:
        model.save_weights(tmp_name)
        os.replace(tmp_name, cache_path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return model


def fold_affine_layers(model: keras.Model) -> keras.Model:
    """The same network with every affine layer folded into the convolution before it.

    gamma * (W * x + b) + beta == (gamma * W) * x + (gamma * b + beta). That saves a multiply
    and an add over every activation map (about 10% of the time on a 2-core CPU). Results
    differ from the unfolded model only by float rounding.
    """
    folded = build_face_resnet(with_affine=False)
    for layer in folded.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = model.get_layer(layer.name).get_weights()
            gamma, beta = model.get_layer(f"{layer.name}_affine").get_weights()
            # gamma scales the output channels, the last axis of both kernel and bias.
            layer.set_weights([kernel * gamma, bias * gamma + beta])
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return folded


# Layers kept in float32 under bfloat16: the descriptor is averaged and projected at full precision, so
# it comes out float32 (their cost is nothing next to the convolutions').
FLOAT32_LAYERS = ("global_avg_pool", "embedding")


def in_bfloat16(model: keras.Model) -> keras.Model:
    """The same network with the same float32 weights, its convolutions computing in bfloat16 (Keras's
    mixed_bfloat16 policy: inputs and weights cast to bfloat16 as they are used, sums accumulated in
    float32 by oneDNN). On 256 LFW chips the descriptors' cosine to float32's was at least 0.99997."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if layer.name not in FLOAT32_LAYERS:
            config["dtype"] = "mixed_bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _scale(chips):
    """(chips - means) / 256, for float32 chips as a NumPy array or a backend tensor."""
    # Subtracting in float32 and dividing by a power of two reproduces dlib's rounding.
    return (chips - RGB_MEANS) / INPUT_SCALE


def preprocess_chips(chips: np.ndarray) -> np.ndarray:
    """uint8 RGB chips (n, 150, 150, 3) -> float32 network input, exactly as dlib scales them."""
    return _scale(chips.astype(np.float32))


@dataclass(frozen=True)
class Crop:
    """One view of an aligned chip for test-time augmentation: the chip's content moved by (dx, dy)
    pixels, magnified by `scale` about the centre and turned by `angle` degrees (counter-clockwise), then
    resampled to the chip's size. Crop() is the chip itself."""

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    angle: float = 0.0

    @property
    def label(self) -> str:
        """A short name for model-version records: e.g. "x2y0s1.05r0"."""
        return f"x{self.dx:g}y{self.dy:g}s{self.scale:g}r{self.angle:g}"

    def sampling_transform(self, size: int = CHIP_SIZE) -> np.ndarray:
        """The 8 projective coefficients [a0, a1, a2, b0, b1, b2, 0, 0] that map each output pixel (x, y)
        to the chip point it samples: (a0 x + a1 y + a2, b0 x + b1 y + b2), as
        keras.ops.image.affine_transform takes them."""
        centre = (size - 1) / 2
        theta = np.deg2rad(self.angle)
        cos, sin = np.cos(theta) / self.scale, np.sin(theta) / self.scale
        # Output point p samples centre + R (p - centre) / scale - (dx, dy), with R the rotation that
        # undoes the turn: the content lands (dx, dy) further, larger by scale, turned by angle as seen.
        a0, a1, b0, b1 = cos, -sin, sin, cos
        a2 = centre - a0 * centre - a1 * centre - self.dx
        b2 = centre - b0 * centre - b1 * centre - self.dy
        return np.array([a0, a1, a2, b0, b1, b2, 0.0, 0.0], dtype=np.float32)


# The chip alone: what the default pipeline embeds.
PLAIN = (Crop(),)
# FACEREC_ACCURATE_FACES: the chip and its views moved 4 px left and right, each with its mirror (when
# mirroring), descriptors averaged: 3 times the network's work. On LFW pairs (mirrored, cosine) it made 37
# pairs wrong of 6,000 where the chip alone made 42 (99.38% against 99.30%; `python -m bench.lfw_pairs
# --crops accurate`). Chosen in each fold on the other nine it is right more often than the shifts up and
# down added (5 views, 38 wrong); shifts of 2 px, scales, turns, other alignments (align.py) and a metric
# learned on LFW's other people gave 35 to 41: within noise, for more work.
ACCURATE = (Crop(), Crop(dx=-4), Crop(dx=4))


class FaceResNetEmbedder:
    """Batched 128-d face descriptors for aligned 150x150 RGB chips.

    With mirror=True each descriptor is the mean of the chip's and its mirror image's: on LFW's
    verification protocol that is right more often (99.02% to 99.30% by cosine distance, 98.97% to
    99.13% by Euclidean; never worse in a fold: bench.lfw_pairs) for twice the network's work.
    With crops (test-time augmentation, the accurate mode) each descriptor is the mean over the views
    of the chip that the crops cut (and their mirrors): len(crops) times the network's work again.
    precision is "float32", "bfloat16" (in_bfloat16) or "auto" (bfloat16 where the CPU runs it natively:
    backend.resolved_precision). It does not change the name: its descriptors are float32's to within
    float rounding, as the backends' are to one another.
    """

    def __init__(self, cache_dir: str | Path, batch_size: int = 64, mirror: bool = False,
                 crops: tuple[Crop, ...] = PLAIN, device: str | None = None, precision: str = "float32") -> None:
        if not crops:
            raise ValueError("crops must hold at least one crop (PLAIN is the chip itself)")
        self.batch_size = batch_size
        self.mirror = mirror
        self.crops = tuple(crops)
        self.device = device  # "gpu:0", "cpu:0", ...; None: the backend's choice (its first GPU if any)
        self.precision = resolved_precision(precision, device)
        with device_scope(device):
            self.model = fold_affine_layers(load_face_resnet(cache_dir))
            if self.precision == "bfloat16":
                self.model = in_bfloat16(self.model)
        # The name goes into every model version: a model trained on one descriptor needs the same one.
        self.name = f"dlib_resnet_v1_keras_c{CONVERTER_VERSION}" + ("_mirrored" if mirror else "")
        if self.crops != PLAIN:
            self.name += "_crops-" + "-".join(crop.label for crop in self.crops)
        # The compiled function takes the uint8 chips and scales them itself: a quarter of the bytes
        # to move (to a GPU too), and the scaling runs on the backend's threads.
        self._forward = compiled(self._descriptors)

    def _descriptors(self, chips):
        scaled = _scale(keras.ops.cast(chips, "float32"))
        if self.crops == PLAIN:
            return self._view_descriptors(scaled)
        total = 0.0
        for crop in self.crops:
            view = scaled if crop == Crop() else keras.ops.image.affine_transform(
                scaled, crop.sampling_transform(), interpolation="bilinear", fill_mode="nearest")
            total += self._view_descriptors(view)
        return total / len(self.crops)

    def _view_descriptors(self, scaled):
        if not self.mirror:
            return self.model(scaled, training=False)
        # Chips and mirrors in one batch: one call keeps the batch large.
        both = self.model(keras.ops.concatenate([scaled, keras.ops.flip(scaled, axis=2)], axis=0), training=False)
        plain, mirrored = keras.ops.split(both, 2)
        return (plain + mirrored) / 2

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """uint8 RGB chips (n, 150, 150, 3) -> float32 descriptors (n, 128)."""
        if len(chips) == 0:
            return np.zeros((0, DESCRIPTOR_SIZE), dtype=np.float32)
        batches = []
        with device_scope(self.device):
            for start in range(0, len(chips), self.batch_size):
                batch = chips[start : start + self.batch_size]
                descriptors = self._forward(filled_to_compiled_size(batch, MIN_JAX_BATCH))
                batches.append(keras.ops.convert_to_numpy(descriptors)[: len(batch)])
        return np.concatenate(batches)

"""Reader for dlib's binary serialization format, enough to load its DNN models.

Follows dlib 20.0's C++ sources: dlib/serialize.h (integers, floats, strings, bools),
dlib/cuda/tensor.h (tensors), dlib/dnn/core.h (how a network nests its layers) and
dlib/dnn/layers.h, loss.h, input.h (each layer's own fields, in the order written).

A dlib network is a chain of templates, outermost (the loss) first. Serializing a layer
writes its version, then its whole sub-network, then its own fields, so a file holds every
layer's version number first (outermost to innermost), then the input layer, then each
layer's fields from the input upwards. `read_network` returns the layers in that
data-flow order. Tag and skip layers only mark places in the chain and hold no data; they
are dropped, so the caller must know the network definition to wire the layers up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# add_layer writes version 2 when its sub-network is another layer and version 3 when it
# sits directly on the input layer; add_tag_layer and add_skip_layer write version 1.
# Files from before these versions (add_layer 1, or 2 on the input layer) are not
# supported: without the network definition they cannot be told apart from tags.
TAG_OR_SKIP_VERSION = 1
LAYER_VERSION = 2
LAYER_ON_INPUT_VERSION = 3

# dlib's layer_mode enum: an affine layer scales per channel ("conv") or per element ("fc").
_LAYER_MODES = {0: "conv", 1: "fc"}

# float_details marks infinities and NaN with these exponents (dlib/float_details.h).
EXPONENT_INF = 32000
EXPONENT_NINF = 32001
EXPONENT_NAN = 32002


class DlibFormatError(ValueError):
    """The bytes do not follow dlib's serialization format as this reader expects it."""


@dataclass
class DlibLayer:
    """One layer's serialized fields.

    `kind` is the layer name without dlib's version suffix ("con", "affine", "relu",
    "max_pool", "avg_pool", "add_prev", "fc", "input_rgb_image_sized", "loss_metric");
    `version` is the version string found in the file ("con_4", "affine_", ...).
    `config` holds scalar settings (filter sizes, strides, ...), `params` the float32 arrays.
    """

    kind: str
    version: str
    config: dict[str, int | float | bool | str] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class DlibNetwork:
    """A deserialized network: its loss, its input layer and its layers from input to output."""

    loss: DlibLayer
    input: DlibLayer
    layers: list[DlibLayer]


class DlibStream:
    """Reads dlib's primitive types one after another from a byte string."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def _take(self, size: int) -> memoryview:
        if self._pos + size > len(self._data):
            raise DlibFormatError(f"unexpected end of data at byte {self._pos}")
        chunk = self._data[self._pos : self._pos + size]
        self._pos += size
        return chunk

    @property
    def at_end(self) -> bool:
        return self._pos == len(self._data)

    def read_int(self) -> int:
        """An integer as pack_int writes it.

        One control byte (low nibble: how many value bytes follow; bit 0x80: negative),
        then the magnitude's bytes, least significant first. Signed and unsigned types
        share the layout; unsigned ones never set the sign bit.
        """
        control = self._take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise DlibFormatError(f"bad integer control byte {control:#x} at byte {self._pos - 1}")
        magnitude = int.from_bytes(self._take(size), "little")
        return -magnitude if control & 0x80 else magnitude

    def read_float(self) -> float:
        """A float or double as float_details: mantissa (int64) * 2**exponent (int16)."""
        mantissa = self.read_int()
        exponent = self.read_int()
        if exponent == EXPONENT_INF:
            return math.inf
        if exponent == EXPONENT_NINF:
            return -math.inf
        if exponent == EXPONENT_NAN:
            return math.nan
        return math.ldexp(mantissa, exponent)

    def read_bool(self) -> bool:
        """A bool, written as the ASCII character '1' or '0'."""
        char = self._take(1).tobytes()
        if char not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool {char!r} at byte {self._pos - 1}")
        return char == b"1"

    def read_string(self) -> str:
        """A std::string: its length as an integer, then its bytes."""
        return self._take(self.read_int()).tobytes().decode("utf-8")

    def read_tensor(self) -> np.ndarray:
        """A resizable_tensor: version 2, four dimensions (n, k, nr, nc), little-endian float32s."""
        version = self.read_int()
        if version != 2:
            raise DlibFormatError(f"unsupported tensor version {version}")
        shape = tuple(self.read_int() for _ in range(4))
        count = math.prod(shape)
        data = np.frombuffer(self._take(4 * count), dtype="<f4")
        # astype copies into a writable, native-endian array that no longer pins the file's bytes.
        return data.astype(np.float32).reshape(shape)

    def read_alias_tensor(self) -> tuple[int, int, int, int]:
        """An alias_tensor: no data, only the shape of a view into a layer's params."""
        version = self.read_int()
        if version != 1:
            raise DlibFormatError(f"unsupported alias_tensor version {version}")
        n, k, nr, nc = (self.read_int() for _ in range(4))
        return n, k, nr, nc


# ---------------------------------------------------------------------------------------
# Each reader below takes the stream just after the layer's version string and reads the
# fields in the order the layer's serialize() writes them.


def _read_con(stream: DlibStream, version: str) -> DlibLayer:
    params = stream.read_tensor().ravel()
    config: dict[str, int | float | bool | str] = {
        "num_filters": stream.read_int(),
        "nr": stream.read_int(),
        "nc": stream.read_int(),
        "stride_y": stream.read_int(),
        "stride_x": stream.read_int(),
        "padding_y": stream.read_int(),
        "padding_x": stream.read_int(),
    }
    filters_shape = stream.read_alias_tensor()
    biases_shape = stream.read_alias_tensor()
    _skip_multipliers(stream)
    # con_4 predates switchable biases and ReLU fusion: it always has a bias and no ReLU.
    config["use_bias"] = stream.read_bool() if version in ("con_5", "con_6") else True
    config["use_relu"] = stream.read_bool() if version == "con_6" else False

    filter_count = math.prod(filters_shape)
    layer = DlibLayer("con", version, config)
    # filters are laid out (num_filters, k, nr, nc): out-channels, in-channels, rows, columns.
    layer.params["filters"] = params[:filter_count].reshape(filters_shape)
    if config["use_bias"]:
        layer.params["biases"] = params[filter_count : filter_count + math.prod(biases_shape)]
    return layer


def _read_affine(stream: DlibStream, version: str) -> DlibLayer:
    params = stream.read_tensor().ravel()
    gamma_shape = stream.read_alias_tensor()
    stream.read_alias_tensor()  # beta has gamma's shape
    mode = _LAYER_MODES[stream.read_int()]
    disabled = stream.read_bool() if version == "affine_2" else False
    size = math.prod(gamma_shape)
    return DlibLayer(
        "affine",
        version,
        {"mode": mode, "disabled": disabled},
        {"gamma": params[:size], "beta": params[size : 2 * size]},
    )


def _read_relu(stream: DlibStream, version: str) -> DlibLayer:
    disabled = stream.read_bool() if version == "relu_2" else False
    return DlibLayer("relu", version, {"disabled": disabled})


def _read_pool(stream: DlibStream, version: str) -> DlibLayer:
    # nr == nc == 0 means the window covers the whole input (avg_pool_everything).
    keys = ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
    kind = "max_pool" if version.startswith("max_pool") else "avg_pool"
    return DlibLayer(kind, version, {key: stream.read_int() for key in keys})


def _read_add_prev(stream: DlibStream, version: str) -> DlibLayer:
    # The tag it adds is a template argument, so nothing but the version is stored.
    return DlibLayer("add_prev", version)


def _read_fc(stream: DlibStream, version: str) -> DlibLayer:
    num_outputs = stream.read_int()
    num_inputs = stream.read_int()
    params = stream.read_tensor().ravel()
    weights_shape = stream.read_alias_tensor()
    biases_shape = stream.read_alias_tensor()
    bias_mode = stream.read_int()  # FC_HAS_BIAS = 0, FC_NO_BIAS = 1
    _skip_multipliers(stream)
    use_bias = stream.read_bool() if version == "fc_3" else True
    has_bias = bias_mode == 0 and use_bias

    weight_count = math.prod(weights_shape)
    config = {"num_outputs": num_outputs, "num_inputs": num_inputs, "has_bias": has_bias}
    layer = DlibLayer("fc", version, config)
    # weights are (num_inputs, num_outputs): the layer computes output = input @ weights.
    layer.params["weights"] = params[:weight_count].reshape(num_inputs, num_outputs)
    if has_bias:
        layer.params["biases"] = params[weight_count : weight_count + math.prod(biases_shape)]
    return layer


def _read_input_rgb_image_sized(stream: DlibStream, version: str) -> DlibLayer:
    config: dict[str, int | float | bool | str] = {
        "avg_red": stream.read_float(),
        "avg_green": stream.read_float(),
        "avg_blue": stream.read_float(),
        "nr": stream.read_int(),
        "nc": stream.read_int(),
    }
    return DlibLayer("input_rgb_image_sized", version, config)


def _read_loss_metric(stream: DlibStream, version: str) -> DlibLayer:
    if version == "loss_metric_":
        # The first version hard-coded these values instead of storing them.
        return DlibLayer("loss_metric", version, {"margin": 0.1, "dist_thresh": 0.75})
    config = {"margin": stream.read_float(), "dist_thresh": stream.read_float()}
    return DlibLayer("loss_metric", version, config)


def _skip_multipliers(stream: DlibStream) -> None:
    """Learning-rate and weight-decay multipliers (weights, then biases): training only."""
    for _ in range(4):
        stream.read_float()


_LAYER_READERS = {
    "con_4": _read_con,
    "con_5": _read_con,
    "con_6": _read_con,
    "affine_": _read_affine,
    "affine_2": _read_affine,
    "relu_": _read_relu,
    "relu_2": _read_relu,
    "max_pool_2": _read_pool,
    "avg_pool_2": _read_pool,
    "add_prev_": _read_add_prev,
    "fc_2": _read_fc,
    "fc_3": _read_fc,
    "input_rgb_image_sized": _read_input_rgb_image_sized,
    "loss_metric_": _read_loss_metric,
    "loss_metric_2": _read_loss_metric,
}


def read_layer(stream: DlibStream) -> DlibLayer:
    """One layer's fields: its version string names the layer type and the fields that follow."""
    version = stream.read_string()
    reader = _LAYER_READERS.get(version)
    if reader is None:
        raise DlibFormatError(f"unsupported layer type {version!r}")
    return reader(stream, version)


def _skip_layer_state(stream: DlibStream, on_input: bool) -> None:
    """The training state add_layer writes after a layer's own fields.

    Three flags, then the gradient and cached-output tensors, then (only when the layer
    sits on the input layer) the sample expansion factor.
    """
    for _ in range(3):
        stream.read_bool()
    for _ in range(3):
        stream.read_tensor()
    if on_input:
        stream.read_int()


def read_network(path: str | Path) -> DlibNetwork:
    """Read a network saved by dlib's `serialize(file) << net` (a loss layer on a chain of layers)."""
    stream = DlibStream(Path(path).read_bytes())
    loss_version = stream.read_int()
    if loss_version != 1:
        raise DlibFormatError(f"unsupported add_loss_layer version {loss_version}")
    loss = read_layer(stream)

    # The versions of every layer between the loss and the input come first, outermost first.
    versions = []
    while (version := stream.read_int()) != LAYER_ON_INPUT_VERSION:
        if version not in (TAG_OR_SKIP_VERSION, LAYER_VERSION):
            raise DlibFormatError(f"unsupported layer version {version}")
        versions.append(version)

    input_layer = read_layer(stream)
    layers = [read_layer(stream)]
    _skip_layer_state(stream, on_input=True)
    for version in reversed(versions):
        if version == LAYER_VERSION:
            layers.append(read_layer(stream))
            _skip_layer_state(stream, on_input=False)
    if not stream.at_end:
        raise DlibFormatError("trailing bytes after the network")
    return DlibNetwork(loss=loss, input=input_layer, layers=layers)

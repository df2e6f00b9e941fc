"""What the face networks need from the Keras backend (TensorFlow by default, JAX on GPU nodes without
TensorFlow): functions compiled once, batch sizes that do not compile again, and a device to run on."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np


def compiled(function: Callable, signature: list[tuple[tuple, str]] | None = None) -> Callable:
    """function compiled by the backend: jax.jit under JAX (one compilation per input shape), a
    tf.function that accepts any shape under TensorFlow (one trace), as it is under other backends.

    signature, (shape, dtype) of each argument with None for any size, lets TensorFlow trace once and
    hand back the traced (concrete) function, whose calls skip tf.function's matching of arguments to
    traces: about 0.3 ms of the host's time a call, which a GPU worker pays per batch."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(function)
    if backend == "tensorflow":
        import tensorflow as tf

        if signature is not None:
            return tf.function(function).get_concrete_function(
                *(tf.TensorSpec(shape, dtype) for shape, dtype in signature))
        # reduce_retracing: after a second shape the trace leaves the sizes open, instead of tracing
        # every pyramid level, crop count and batch size again.
        return tf.function(function, reduce_retracing=True)
    return function


def padded_count(count: int, minimum: int) -> int:
    """The batch size to run count items at: under JAX, where every new shape compiles the function
    again (seconds each), count rounded up to a power of two (at least minimum), so that a few dozen
    shapes serve every batch; elsewhere count itself."""
    if keras.backend.backend() != "jax":
        return count
    return max(minimum, 1 << max(0, count - 1).bit_length())


def filled_to_compiled_size(batch: np.ndarray, minimum: int) -> np.ndarray:
    """batch with copies of its first item appended up to padded_count(len(batch), minimum): under JAX a
    batch of a size already compiled, whose extra results the caller drops; elsewhere batch itself."""
    extra = padded_count(len(batch), minimum) - len(batch)
    if extra <= 0 or len(batch) == 0:
        return batch
    return np.concatenate([batch, np.repeat(batch[:1], extra, axis=0)])


# TensorFlow takes a NumPy array's memory as it is, without copying it, when it is aligned to this.
TENSOR_ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
    """An uninitialised array whose data starts on a TENSOR_ALIGNMENT boundary: build a batch in it
    (np.stack(..., out=)) and on_device takes it over without a copy."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(size + TENSOR_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % TENSOR_ALIGNMENT
    return raw[start:start + size].view(dtype).reshape(shape)


def on_device(array: np.ndarray):
    """array as a backend tensor on the current device (device_scope's).

    Under TensorFlow, tf.convert_to_tensor first copies a NumPy array on the host (in case the caller
    changes it later) into freshly mapped memory, then again when that copy is not aligned: for a batch
    of 128 LFW photos (24 MB) about 20 ms of the host's time, against 2.5 for np.stack alone. Our batches
    are made for the call and never changed, so they go to TensorFlow's EagerTensor as they are (what
    convert_to_tensor does after its copy), which uses an aligned array's memory in place (aligned_empty)."""
    if keras.backend.backend() != "tensorflow":
        return keras.ops.convert_to_tensor(array)
    from tensorflow.python.eager import context
    from tensorflow.python.framework import ops

    if not array.flags.c_contiguous or array.ctypes.data % TENSOR_ALIGNMENT:
        aligned = aligned_empty(array.shape, array.dtype)
        aligned[...] = array
        array = aligned
    context.context().ensure_initialized()
    return ops.EagerTensor(array, context.context().device_name, None)


def device_scope(device: str | None) -> contextlib.AbstractContextManager:
    """Run what follows on device ("gpu:0", "cpu:0", ...), or where the backend chooses (its first GPU
    if it has one) when device is empty or None."""
    return keras.device(device) if device else contextlib.nullcontext()


PRECISIONS = ("auto", "float32", "bfloat16")


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512_BF16 or AMX_BF16 among /proc/cpuinfo's flags)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def networks_run_on_cpu(device: str | None) -> bool:
    """Whether the networks run on a CPU: device names one, or none is named and the backend sees no GPU."""
    if device:
        return device.lower().startswith("cpu")
    try:
        return not keras.distribution.list_devices("gpu")
    except RuntimeError:  # JAX's answer when it has no GPU platform at all
        return True


def resolved_precision(precision: str, device: str | None) -> str:
    """"float32" or "bfloat16" for precision "auto", "float32" or "bfloat16". auto is bfloat16 where it pays:
    under TensorFlow on a CPU with native bfloat16 (oneDNN; the face ResNet ran 1.7x faster here); float32
    elsewhere (on an H200 under JAX bfloat16 was no faster, and CPUs without it emulate it slowly)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision != "auto":
        return precision
    native = keras.backend.backend() == "tensorflow" and cpu_has_native_bfloat16() and networks_run_on_cpu(device)
    return "bfloat16" if native else "float32"

"""What the face networks need from the Keras backend (TensorFlow by default, JAX on GPU nodes without
TensorFlow): functions compiled once, batch sizes that do not compile again, and a device to run on."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import keras
import numpy as np


def compiled(function: Callable) -> Callable:
    """function compiled by the backend: jax.jit under JAX (one compilation per input shape), a
    tf.function that accepts any shape under TensorFlow (one trace), as it is under other backends."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(function)
    if backend == "tensorflow":
        import tensorflow as tf

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


def device_scope(device: str | None) -> contextlib.AbstractContextManager:
    """Run what follows on device ("gpu:0", "cpu:0", ...), or where the backend chooses (its first GPU
    if it has one) when device is empty or None."""
    return keras.device(device) if device else contextlib.nullcontext()

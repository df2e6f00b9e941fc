"""What a benchmark ran on, recorded in every bench's JSON: figures from different machines are not comparable.

    load_at_start = os.getloadavg()[0]
    ...
    summary = {..., **machine_info(load_at_start)}
"""

from __future__ import annotations

import os
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def keras_device() -> str:
    """The device our networks run on: the Keras backend's first GPU (e.g. "gpu:0"), else "cpu".

    Asks the backend rather than assuming, so that a run on a GPU machine says so."""
    import keras

    gpus = keras.distribution.list_devices("gpu")
    return gpus[0].lower() if gpus else "cpu"


def machine_info(load_at_start: float | None = None) -> dict:
    """Cores, CPU model, our device (the baseline, dlib-bin, always runs on the CPU) and the 1-minute load
    average at the start (when given) and now: other work on a shared machine slows both sides."""
    info = {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "device": keras_device(),
        "baseline_device": "cpu",
    }
    if load_at_start is not None:
        info["load_average_1m_start"] = round(load_at_start, 2)
    info["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return info

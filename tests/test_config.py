"""Settings from the environment: the GPU settings reach the pipeline a worker builds, and bad values get an
error that names the variable."""

from __future__ import annotations

import pytest

from config import load_settings


def test_the_worker_pipeline_takes_its_device_and_batch_sizes_from_the_environment(monkeypatch, face_resnet_cache):
    from workers.runtime import Runtime

    monkeypatch.setenv("FACEREC_CACHE_DIR", str(face_resnet_cache))
    monkeypatch.setenv("FACEREC_DEVICE", "CPU:0")
    monkeypatch.setenv("FACEREC_PHOTO_BATCH", "48")
    monkeypatch.setenv("FACEREC_DETECT_BATCH", "12")
    monkeypatch.setenv("FACEREC_EMBED_BATCH", "256")
    monkeypatch.setenv("FACEREC_DECODE_PROCESSES", "3")
    pipeline = Runtime(load_settings()).face_pipeline
    assert (pipeline.batch_size, pipeline.decode_processes) == (48, 3)
    assert (pipeline.detector.batch_size, pipeline.detector.device) == (12, "cpu:0")
    assert (pipeline.embedder.batch_size, pipeline.embedder.device) == (256, "cpu:0")


def test_the_worker_embeds_at_the_precision_of_the_environment(monkeypatch, face_resnet_cache):
    from workers.runtime import Runtime

    monkeypatch.setenv("FACEREC_CACHE_DIR", str(face_resnet_cache))
    monkeypatch.setenv("FACEREC_PRECISION", "bfloat16")
    assert Runtime(load_settings()).face_pipeline.embedder.precision == "bfloat16"
    monkeypatch.setenv("FACEREC_PRECISION", "float32")
    assert Runtime(load_settings()).face_pipeline.embedder.precision == "float32"
    monkeypatch.delenv("FACEREC_PRECISION")
    assert load_settings().precision == "auto"


@pytest.mark.parametrize(("name", "value", "message"), [
    ("FACEREC_DEVICE", "gpu1", "FACEREC_DEVICE must be a device such as gpu:0"),
    ("FACEREC_DEVICE", "cuda:0", "FACEREC_DEVICE must be a device such as gpu:0"),
    ("FACEREC_EMBED_BATCH", "0", "FACEREC_EMBED_BATCH must be at least 1"),
    ("FACEREC_PHOTO_BATCH", "-5", "FACEREC_PHOTO_BATCH must be at least 1"),
    ("FACEREC_DETECT_BATCH", "lots", "FACEREC_DETECT_BATCH must be an integer"),
    ("FACEREC_DECODE_PROCESSES", "-1", "FACEREC_DECODE_PROCESSES must be at least 0"),
    ("FACEREC_PRECISION", "half", "FACEREC_PRECISION must be one of auto, float32, bfloat16"),
])
def test_a_bad_setting_is_refused_by_name(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        load_settings()


def test_no_device_means_the_backends_choice(monkeypatch):
    monkeypatch.delenv("FACEREC_DEVICE", raising=False)
    assert load_settings().device == ""

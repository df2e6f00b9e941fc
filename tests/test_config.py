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


def test_the_worker_detects_with_the_pyramid_of_the_environment(monkeypatch, face_resnet_cache):
    from workers.runtime import Runtime

    monkeypatch.setenv("FACEREC_CACHE_DIR", str(face_resnet_cache))
    monkeypatch.setenv("FACEREC_MIN_FACE_SIZE", "40")
    monkeypatch.setenv("FACEREC_PYRAMID_FACTOR", "0.6")
    detector = Runtime(load_settings()).face_pipeline.detector
    assert (detector.min_face_size, detector.scale_factor) == (40, 0.6)
    monkeypatch.delenv("FACEREC_MIN_FACE_SIZE")
    monkeypatch.delenv("FACEREC_PYRAMID_FACTOR")
    assert (load_settings().min_face_size, load_settings().pyramid_factor) == (20, 0.709)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("FACEREC_DEVICE", "gpu1", "FACEREC_DEVICE must be a device such as gpu:0"),
    ("FACEREC_DEVICE", "cuda:0", "FACEREC_DEVICE must be a device such as gpu:0"),
    ("FACEREC_EMBED_BATCH", "0", "FACEREC_EMBED_BATCH must be at least 1"),
    ("FACEREC_PHOTO_BATCH", "-5", "FACEREC_PHOTO_BATCH must be at least 1"),
    ("FACEREC_DETECT_BATCH", "lots", "FACEREC_DETECT_BATCH must be an integer"),
    ("FACEREC_DECODE_PROCESSES", "-1", "FACEREC_DECODE_PROCESSES must be at least 0"),
    ("FACEREC_READ_THREADS", "0", "FACEREC_READ_THREADS must be at least 1"),
    ("FACEREC_PRECISION", "half", "FACEREC_PRECISION must be one of auto, float32, bfloat16"),
    ("FACEREC_MIN_FACE_SIZE", "8", "FACEREC_MIN_FACE_SIZE must be at least 12"),
    ("FACEREC_PYRAMID_FACTOR", "1.2", "FACEREC_PYRAMID_FACTOR must be between 0.0 and 1.0"),
    ("FACEREC_PYRAMID_FACTOR", "fine", "FACEREC_PYRAMID_FACTOR must be a number"),
])
def test_a_bad_setting_is_refused_by_name(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        load_settings()


def test_no_device_means_the_backends_choice(monkeypatch):
    monkeypatch.delenv("FACEREC_DEVICE", raising=False)
    assert load_settings().device == ""


def test_the_storage_a_process_builds_keeps_the_reads_in_flight_it_is_configured_for(monkeypatch, tmp_path):
    from pipeline.storage import storage_from_settings

    monkeypatch.setenv("FACEREC_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("S3_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("FACEREC_READ_THREADS", "96")
    assert storage_from_settings(load_settings()).read_threads == 96

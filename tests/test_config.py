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


@pytest.mark.parametrize(("name", "value", "message"), [
    ("FACEREC_DEVICE", "gpu1", "FACEREC_DEVICE must be a device such as gpu:0"),
    ("FACEREC_DEVICE", "cuda:0", "FACEREC_DEVICE must be a device such as gpu:0"),
    ("FACEREC_EMBED_BATCH", "0", "FACEREC_EMBED_BATCH must be at least 1"),
    ("FACEREC_PHOTO_BATCH", "-5", "FACEREC_PHOTO_BATCH must be at least 1"),
    ("FACEREC_DETECT_BATCH", "lots", "FACEREC_DETECT_BATCH must be an integer"),
    ("FACEREC_DECODE_PROCESSES", "-1", "FACEREC_DECODE_PROCESSES must be at least 0"),
    ("FACEREC_READ_THREADS", "0", "FACEREC_READ_THREADS must be at least 1"),
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

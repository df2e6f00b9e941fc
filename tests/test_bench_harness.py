"""The scale benchmark's instruments (bench.s3_proxy, bench.process_meter): what they count must be what
happened, or every figure built on them is wrong."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

from bench.process_meter import ProcessMeter
from bench.s3_proxy import S3Proxy
from pipeline.storage import MissingKey, S3Storage

MB = 1024 * 1024


def test_the_proxy_passes_every_kind_of_request_through_unchanged_and_counts_it(s3_storage: S3Storage,
                                                                               seaweedfs: dict) -> None:
    big = np.random.default_rng(1).bytes(11 * MB)
    with S3Proxy(seaweedfs["endpoint_url"]) as proxy:
        for reader in ("obstore", "boto3"):
            through = S3Storage(s3_storage.bucket, **{**seaweedfs, "endpoint_url": proxy.url}, reader=reader)
            through.put(f"{reader}/small.jpg", b"small")  # signed requests: the proxy changed nothing
            with through.open_writer(f"{reader}/big.bin", part_size=5 * MB) as writer:
                writer.write(big)
            read = dict(through.get_many([f"{reader}/small.jpg", f"{reader}/none.jpg"], threads=4))
            assert read[f"{reader}/small.jpg"] == b"small" and isinstance(read[f"{reader}/none.jpg"], MissingKey)
            assert through.get(f"{reader}/big.bin") == big
            assert through.get_head(f"{reader}/small.jpg", 2) == (b"sm", 5)
            assert sorted(through.list(f"{reader}/")) == [f"{reader}/big.bin", f"{reader}/small.jpg"]
            through.delete(f"{reader}/small.jpg")
            assert not through.exists(f"{reader}/small.jpg")
        counts = proxy.counts()
    for reader in ("obstore", "boto3"):
        assert counts[f"PUT {reader}"] == 1  # the small object
        assert counts[f"PUT part {reader}"] == 3  # 5 + 5 + 1 MB
        assert counts[f"POST {reader}"] == 2  # the multipart upload begun and completed
        assert counts[f"GET {reader}"] == 3  # two photos read, one whole object
        assert counts[f"GET range {reader}"] == 1
        assert counts[f"DELETE {reader}"] == 1
        assert counts[f"HEAD {reader}"] == 1
    assert counts["LIST"] == 2


def test_the_proxy_adds_its_delay_to_every_request(s3_storage: S3Storage, seaweedfs: dict) -> None:
    s3_storage.put("a.jpg", b"a")
    with S3Proxy(seaweedfs["endpoint_url"], delay_s=0.05) as proxy:
        through = S3Storage(s3_storage.bucket, **{**seaweedfs, "endpoint_url": proxy.url})
        started = time.perf_counter()
        for _ in range(10):
            assert through.get_head("a.jpg") == (b"a", 1)
        assert time.perf_counter() - started >= 0.5
        assert proxy.counts() == {"GET range a.jpg": 10}


CHILD = """
import os, sys, time
data = bytearray(120 * 1024 * 1024)  # resident: every page written
for i in range(0, len(data), 4096):
    data[i] = 1
del data
started = time.process_time()
while time.process_time() - started < 0.5:
    pass
sys.stdout.write("done\\n"); sys.stdout.flush()
time.sleep(30)
"""


def test_the_meter_counts_a_trees_cpu_and_the_peak_of_a_child_that_freed_its_memory() -> None:
    # A parent whose child used 0.5 s of CPU and held 120 MB once, then freed it.
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, "
                               f"'-c', {CHILD!r}])"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        with ProcessMeter({"tree": parent.pid}, every_s=0.1) as meter:
            assert parent.stdout.readline() == "done\n"
            cpu = meter.cpu_s()["tree"]
            peaks = meter.peak_rss_mb()["tree"]
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # the child too
        parent.wait()
    assert cpu >= 0.5
    assert peaks["children"] >= 120
    assert peaks["main"] < 120

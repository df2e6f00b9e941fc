"""Decoding in a pool of processes (FACEREC_DECODE_PROCESSES, for GPU nodes) gives what decoding on the
detection thread gives: the same pixels and sizes, the same errors for broken photos, in the same order."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.decode import DecodePool, Photo, decode_photo
from pipeline.faces import FacePipeline

pytestmark = pytest.mark.system  # decoding processes

PHOTOS = 60


def photo_stream(lfw_dir: Path) -> list[tuple[str, bytes]]:
    """LFW photos, with broken ones among them: empty, truncated, not an image, and one large photo
    that is decoded at the working size."""
    files = sorted(lfw_dir.glob("*/*.jpg"))[::97][:PHOTOS]
    photos = [(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in files]
    large = io.BytesIO()
    Image.open(files[0]).resize((3000, 3000)).save(large, "JPEG")
    photos.insert(5, ("broken/empty.jpg", b""))
    photos.insert(17, ("broken/truncated.jpg", photos[16][1][:200]))
    photos.insert(30, ("broken/text.jpg", b"not a photo at all"))
    photos.insert(41, ("large/3000.jpg", large.getvalue()))
    return photos


@pytest.fixture(scope="module")
def pool():
    pool = DecodePool(processes=2, group=4)
    yield pool
    pool.close()


def test_the_pool_decodes_every_photo_in_order_as_decode_photo_does(lfw_dir, pool):
    photos = photo_stream(lfw_dir)
    decoded = list(pool.decode(iter(photos)))
    assert [key for key, _ in decoded] == [key for key, _ in photos]
    errors = {key: result for key, result in decoded if isinstance(result, str)}
    assert set(errors) == {"broken/empty.jpg", "broken/truncated.jpg", "broken/text.jpg"}
    assert "empty" in errors["broken/empty.jpg"]
    for (key, data), (_, result) in zip(photos, decoded):
        if key in errors:
            continue
        expected = decode_photo(data)
        assert isinstance(result, Photo)
        assert (result.width, result.height) == (expected.width, expected.height)
        np.testing.assert_array_equal(result.pixels, expected.pixels)
    large = dict(decoded)["large/3000.jpg"]
    assert (large.width, large.height) == (3000, 3000) and max(large.pixels.shape) <= 2000


def test_the_pool_reads_only_a_bounded_number_of_photos_ahead(lfw_dir, pool):
    """A bulk job streams its photos: the pool must not read the whole input before yielding."""
    photos = photo_stream(lfw_dir)
    read = 0

    def counted():
        nonlocal read
        for photo in photos:
            read += 1
            yield photo

    stream = pool.decode(counted())
    next(stream)
    assert read <= pool.ahead * pool.group < len(photos)


def test_the_pipeline_finds_the_same_faces_with_decode_processes(lfw_dir, face_pipeline):
    photos = photo_stream(lfw_dir)
    expected = list(face_pipeline.process_stream(photos, batch_size=16))
    pooled = FacePipeline(face_pipeline.detector, face_pipeline.embedder, batch_size=16, decode_processes=2)
    try:
        found = list(pooled.process_stream(photos))
    finally:
        pooled.close()
    assert [r.key for r in found] == [r.key for r in expected]
    assert [r.error for r in found] == [r.error for r in expected]
    assert sum(len(r.faces) for r in found) >= PHOTOS
    for a, b in zip(found, expected):
        assert a.size == b.size and len(a.faces) == len(b.faces)
        np.testing.assert_array_equal(a.embeddings, b.embeddings)


def child_processes(pid: int) -> set[int]:
    """The pids whose parent is pid (from /proc)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


def decode_then_wait(files: list[str], ready) -> None:
    """In a daemonic billiard process, as Celery's prefork pool runs a task: decode through a pool, then wait."""
    pool = DecodePool(processes=2, group=4)
    decoded = list(pool.decode((name, Path(name).read_bytes()) for name in files))
    ready.put(sum(isinstance(photo, Photo) for _, photo in decoded))
    time.sleep(600)


def test_a_pool_works_in_a_celery_prefork_child_and_dies_with_it(lfw_dir):
    import billiard

    files = [str(p) for p in sorted(lfw_dir.glob("*/*.jpg"))[:24]]
    ready = billiard.Queue()
    child = billiard.Process(target=decode_then_wait, args=(files, ready), daemon=True)
    child.start()
    try:
        assert ready.get(timeout=120) == len(files)
        decoders = child_processes(child.pid)
        assert len(decoders) >= 2
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    deadline = time.monotonic() + 30
    while (alive := {pid for pid in decoders if Path(f"/proc/{pid}").exists()}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"decode processes {alive} outlived their killed parent"


def test_a_decoding_process_killed_midway_loses_no_photo_and_the_pool_works_on(lfw_dir):
    """As when the out-of-memory killer takes a decoding process: the pool starts again and decodes every photo.
    (Killed while writing a result, the process leaves the pool waiting: the group's timeout ends that.)"""
    files = sorted(lfw_dir.glob("*/*.jpg"))[:400]
    photos = [(str(p), p.read_bytes()) for p in files]
    pool = DecodePool(processes=2, group=4, groups_ahead_per_process=2, timeout_s=10)
    try:
        stream = pool.decode(iter(photos))
        decoded = [next(stream)]
        os.kill(next(iter(pool._executor._processes)), signal.SIGKILL)
        decoded += list(stream)
        assert pool.restarts >= 1
        assert [key for key, _ in decoded] == [key for key, _ in photos]
        assert all(isinstance(photo, Photo) for _, photo in decoded)
        for (_, data), (_, photo) in list(zip(photos, decoded))[::37]:
            np.testing.assert_array_equal(photo.pixels, decode_photo(data).pixels)
        assert isinstance(dict(pool.decode(iter(photos[:3])))[photos[0][0]], Photo)  # still working
    finally:
        pool.close()


def test_a_pool_needs_at_least_one_process():
    with pytest.raises(ValueError, match="at least 1"):
        DecodePool(processes=0)


def die_halfway_through_writing_a_result() -> None:
    """In a pool process: write the first bytes of a result into the pool's result pipe, then die, as a process
    that the out-of-memory killer takes while it sends a large decoded photo back."""
    import gc
    import struct
    from multiprocessing.queues import SimpleQueue

    (results,) = [q for q in gc.get_objects() if isinstance(q, SimpleQueue) and not q._writer.closed]
    os.write(results._writer.fileno(), struct.pack("!i", 1_000_000) + b"part of a photo")
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_process_whose_decoder_died_halfway_through_a_result_still_exits(lfw_dir):
    """The pool's result reader, left waiting for the rest of the message, must not keep the process alive:
    an interpreter waits for that thread at exit, so a worker (or the test run: CI hung so) would never end."""
    files = [str(p) for p in sorted(lfw_dir.glob("*/*.jpg"))[:8]]
    script = f"""
from pathlib import Path
from pipeline.decode import DecodePool, Photo
from tests.test_decode_pool import die_halfway_through_writing_a_result

if __name__ == "__main__":
    pool = DecodePool(processes=1, group=4, timeout_s=3)
    pool._executor.submit(die_halfway_through_writing_a_result)
    for process in list(pool._executor._processes.values()):
        process.join(120)  # gone once it has written half a result
    decoded = list(pool.decode((name, Path(name).read_bytes()) for name in {files!r}))
    pool.close()
    print("decoded", sum(isinstance(photo, Photo) for _, photo in decoded), "restarts", pool.restarts)
"""
    # The script may wait up to 120 s for the process to die: more than that means it hung.
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                         cwd=Path(__file__).parent.parent, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["decoded", str(len(files)), "restarts", "1"]

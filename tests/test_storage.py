"""Storage behaviour, specified once and checked on both backends: a local directory and S3 on a
real SeaweedFS server."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pipeline.decode import MAX_BYTES as DECODER_MAX_BYTES
from pipeline.storage import InvalidKey, LocalStorage, MissingKey, ObjectTooLarge, S3Storage, Storage, StorageError

S3 = pytest.param("s3", marks=pytest.mark.system)  # a real SeaweedFS: the system tier
# S3 with every read through boto3: what a process forked from one that read through obstore uses.
S3_BOTO3 = pytest.param("s3-boto3", marks=pytest.mark.system)

MB = 1024 * 1024


@pytest.fixture(params=["local", S3, S3_BOTO3])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    if request.param == "s3-boto3":
        return same_bucket(request.getfixturevalue("s3_storage"), request.getfixturevalue("seaweedfs"),
                           reader="boto3")
    return request.getfixturevalue("s3_storage")


def same_bucket(storage: S3Storage, seaweedfs: dict[str, str], **options) -> S3Storage:
    """A second client on the bucket of `storage`, configured differently."""
    return S3Storage(storage.bucket, **seaweedfs, **options)


def test_put_then_get_returns_the_same_bytes(storage: Storage) -> None:
    data = bytes(range(256)) * 4  # every byte value, including NUL and non-UTF-8
    storage.put("photos/alice/0001.jpg", data)
    assert storage.get("photos/alice/0001.jpg") == data


def test_put_of_empty_bytes_round_trips(storage: Storage) -> None:
    storage.put("empty.bin", b"")
    assert storage.exists("empty.bin")
    assert storage.get("empty.bin") == b""


def test_put_over_an_existing_key_replaces_its_content(storage: Storage) -> None:
    storage.put("jobs/1/summary.json", b"a long first version of the object")
    storage.put("jobs/1/summary.json", b"short")
    assert storage.get("jobs/1/summary.json") == b"short"
    assert list(storage.list()) == ["jobs/1/summary.json"]


def test_missing_key_raises_missing_key_naming_it(storage: Storage) -> None:
    with pytest.raises(MissingKey) as raised:
        storage.get("jobs/nope/job.json")
    assert isinstance(raised.value, KeyError)
    assert "jobs/nope/job.json" in str(raised.value)


def test_a_key_that_is_only_a_prefix_of_other_keys_is_missing(storage: Storage) -> None:
    storage.put("jobs/1/job.json", b"{}")
    assert not storage.exists("jobs/1")
    assert not storage.exists("jobs")
    with pytest.raises(MissingKey):
        storage.get("jobs/1")


def test_exists_is_true_only_after_put(storage: Storage) -> None:
    assert not storage.exists("models/m/current")
    storage.put("models/m/current", b"v1")
    assert storage.exists("models/m/current")


KEYS = [
    "jobs/b/1",
    "jobs/a/2",
    "other/a/1",
    "jobs/ab/1",
    "jobs/a/1",
    "jobsx",
    "jobs/a/10",
]


def test_list_by_prefix_returns_exactly_the_keys_under_it_sorted(storage: Storage) -> None:
    for key in KEYS:
        storage.put(key, key.encode())
    assert list(storage.list("jobs/a/")) == ["jobs/a/1", "jobs/a/10", "jobs/a/2"]
    # A prefix is a string prefix, not a folder: "jobs/a" also matches "jobs/ab/...".
    assert list(storage.list("jobs/a")) == ["jobs/a/1", "jobs/a/10", "jobs/a/2", "jobs/ab/1"]
    assert list(storage.list("jobs/")) == ["jobs/a/1", "jobs/a/10", "jobs/a/2", "jobs/ab/1", "jobs/b/1"]
    assert list(storage.list()) == sorted(KEYS)
    assert list(storage.list("nothing/")) == []
    # A prefix no valid key can start with, and one that runs through an object as if it were a folder.
    assert list(storage.list("../")) == []
    assert list(storage.list("jobs/a/1/")) == []


# Keys whose lexicographic order differs from a folder-by-folder walk: '-' and '.' sort before '/'.
KEYS_ACROSS_FOLDERS = ["in/a/1", "in/a-b.jpg", "in/a.jpg", "in/a0.jpg", "in/b/c/d", "in/b/c-d", "in/b!"]


def test_local_list_is_in_lexicographic_order_even_across_folders(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    for key in reversed(KEYS_ACROSS_FOLDERS):
        storage.put(key, b"x")
    assert list(storage.list("in/")) == sorted(KEYS_ACROSS_FOLDERS)


def test_s3_list_returns_every_key_across_folders(s3_storage: S3Storage) -> None:
    # SeaweedFS lists folder by folder, AWS lexicographically: callers sort when order matters.
    for key in reversed(KEYS_ACROSS_FOLDERS):
        s3_storage.put(key, b"x")
    assert sorted(s3_storage.list("in/")) == sorted(KEYS_ACROSS_FOLDERS)


def test_s3_list_pages_through_all_keys(s3_storage: S3Storage, seaweedfs: dict[str, str]) -> None:
    keys = [f"batch/{i:02d}.jpg" for i in range(10)]
    for key in keys:
        s3_storage.put(key, b"x")
    paged = same_bucket(s3_storage, seaweedfs, page_size=3)
    calls = []
    paged.client.meta.events.register("after-call.s3.ListObjectsV2", lambda **_: calls.append(1))

    assert list(paged.list("batch/")) == keys
    assert len(calls) == 4  # 3 + 3 + 3 + 1: the listing really went through pages


def test_scan_gives_each_key_under_a_prefix_with_when_it_was_written_and_a_folders_keys_together(
        storage: Storage) -> None:
    before = time.time()
    for key in reversed(KEYS_ACROSS_FOLDERS):
        storage.put(key, b"x")
    after = time.time()
    scanned = list(storage.scan("in/"))
    assert sorted(key for key, _ in scanned) == sorted(KEYS_ACROSS_FOLDERS)
    assert all(int(before) <= written <= after + 1 for _, written in scanned), "S3 keeps whole seconds"
    order = [key for key, _ in scanned]
    for folder in ("in/a/", "in/b/", "in/b/c/"):
        at = [index for index, key in enumerate(order) if key.startswith(folder)]
        assert at == list(range(at[0], at[-1] + 1)), f"the keys of {folder} one after another"
    # A prefix is a string prefix, as in list.
    assert sorted(key for key, _ in storage.scan("in/a")) == ["in/a-b.jpg", "in/a.jpg", "in/a/1", "in/a0.jpg"]
    assert list(storage.scan("nothing/")) == [] and list(storage.scan("../")) == []


def test_local_scan_holds_no_listing_in_memory(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    for number in range(3000):
        (tmp_path / "interactive" / f"{number:032x}").mkdir(parents=True)
        (tmp_path / "interactive" / f"{number:032x}" / "photo").write_bytes(b"x")
    tracemalloc.start()
    try:
        assert sum(1 for _ in storage.scan("interactive/")) == 3000
        scanning = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        assert sum(1 for _ in storage.list("interactive/")) == 3000
        listing = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert scanning < 100_000 < listing, (scanning, listing)


def test_delete_empty_folders_removes_only_what_deletes_emptied(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    for key in ("jobs/1/chunks/0.json", "jobs/1/chunks/deeper/1.json", "jobs/1/job.json", "jobs/2/chunks/0.json"):
        storage.put(key, b"{}")
    storage.delete("jobs/1/chunks/0.json")
    storage.delete("jobs/1/chunks/deeper/1.json")
    storage.delete_empty_folders("jobs/1/chunks/")
    storage.delete_empty_folders("jobs/2/chunks/")
    storage.delete_empty_folders("jobs/3/chunks/")  # nothing there
    assert not (tmp_path / "jobs" / "1" / "chunks").exists()
    assert sorted(storage.list()) == ["jobs/1/job.json", "jobs/2/chunks/0.json"]


def test_delete_makes_the_key_missing_and_is_idempotent(storage: Storage) -> None:
    storage.put("tmp/a", b"1")
    storage.put("tmp/b", b"2")
    storage.delete("tmp/a")
    assert not storage.exists("tmp/a")
    with pytest.raises(MissingKey):
        storage.get("tmp/a")
    assert list(storage.list()) == ["tmp/b"]
    storage.delete("tmp/a")  # already gone: no error
    storage.delete("never/existed")


def test_get_many_reads_every_key_in_order_and_names_the_missing_ones(storage: Storage) -> None:
    # More keys than it reads ahead, so that the window slides.
    keys = [f"many/{i:03d}" for i in range(150)]
    for i, key in enumerate(keys):
        if i % 7:
            storage.put(key, f"photo {i}".encode())
    read = list(storage.get_many(keys, threads=4, ahead=16))
    assert [key for key, _ in read] == keys
    for i, (key, data) in enumerate(read):
        if i % 7:
            assert data == f"photo {i}".encode()
        else:
            assert isinstance(data, MissingKey) and key in str(data)


def test_get_many_of_nothing_reads_nothing(storage: Storage) -> None:
    assert list(storage.get_many([])) == []


def test_size_is_the_objects_length_in_bytes_and_missing_keys_are_missing(storage: Storage) -> None:
    storage.put("photos/a.jpg", b"x" * 1234)
    storage.put("photos/empty.jpg", b"")
    assert storage.size("photos/a.jpg") == 1234
    assert storage.size("photos/empty.jpg") == 0
    for missing in ("photos/b.jpg", "photos"):  # nothing there, and a folder rather than an object
        with pytest.raises(MissingKey):
            storage.size(missing)


def test_get_many_refuses_an_object_over_its_limit_without_reading_it(storage: Storage) -> None:
    storage.put("inbox/a.jpg", b"a" * 100)
    storage.put("inbox/huge.jpg", np.random.default_rng(3).bytes(8 * MB))
    storage.put("inbox/b.jpg", b"b" * 1000)

    tracemalloc.start()
    try:
        read = list(storage.get_many(["inbox/a.jpg", "inbox/huge.jpg", "inbox/b.jpg"], max_bytes=1000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert [key for key, _ in read] == ["inbox/a.jpg", "inbox/huge.jpg", "inbox/b.jpg"]
    assert read[0][1] == b"a" * 100 and read[2][1] == b"b" * 1000  # at the limit: read
    refused = read[1][1]
    assert isinstance(refused, ObjectTooLarge) and isinstance(refused, StorageError)
    assert str(refused) == f"object too large: inbox/huge.jpg is {8 * MB} bytes, limit 1000 bytes; it was not read"
    assert peak < 2 * MB, f"{peak} bytes allocated: the 8 MB object was read"
    if isinstance(storage, LocalStorage):
        assert str(storage.root) not in str(refused)


def test_get_many_refuses_by_default_what_the_decoder_would_refuse(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("inbox/limit.jpg", b"")
    os.truncate(tmp_path / "inbox" / "limit.jpg", DECODER_MAX_BYTES)  # sparse: no disk used
    storage.put("inbox/over.jpg", b"")
    os.truncate(tmp_path / "inbox" / "over.jpg", DECODER_MAX_BYTES + 1)
    (_, at_limit), (_, over) = storage.get_many(["inbox/limit.jpg", "inbox/over.jpg"])
    assert len(at_limit) == DECODER_MAX_BYTES
    assert isinstance(over, ObjectTooLarge) and (over.size, over.limit) == (DECODER_MAX_BYTES + 1, DECODER_MAX_BYTES)


def test_get_many_gives_an_invalid_key_its_own_error_and_reads_the_rest(storage: Storage) -> None:
    storage.put("inbox/a.jpg", b"a")
    read = dict(storage.get_many(["../../etc/passwd", "inbox/a.jpg", "inbox//b.jpg"]))
    assert read["inbox/a.jpg"] == b"a"
    for key in ("../../etc/passwd", "inbox//b.jpg"):
        assert isinstance(read[key], InvalidKey) and isinstance(read[key], StorageError)
        assert repr(key) in str(read[key]) and "invalid storage key" in str(read[key])


class CountingStorage(LocalStorage):
    """Local storage that counts the objects it has begun to read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads = 0

    def get_at_most(self, key: str, max_bytes: int) -> bytes:
        self.reads += 1
        return super().get_at_most(key, max_bytes)


def test_get_many_holds_at_most_about_ahead_bytes_of_data_the_caller_has_not_taken(tmp_path: Path) -> None:
    storage = CountingStorage(tmp_path)
    keys = [f"inbox/{i:02d}.jpg" for i in range(30)]
    for key in keys:
        storage.put(key, b"x" * MB)
    reading = storage.get_many(keys, threads=2, ahead=64, ahead_bytes=4 * MB)
    first_key, _ = next(reading)
    time.sleep(0.5)  # the reading threads would have read all 30 by now
    assert first_key == keys[0]
    # 4 MB held, up to 2 more being read, and the one that was taken.
    assert storage.reads <= 4 + 2 + 1, storage.reads
    assert [key for key, _ in reading] == keys[1:]
    assert storage.reads == 30


def test_put_new_writes_once_and_refuses_the_second_time(storage: Storage) -> None:
    assert storage.put_new("models/m/versions/1/version.json", b"first") is True
    assert storage.put_new("models/m/versions/1/version.json", b"second") is False
    assert storage.get("models/m/versions/1/version.json") == b"first"
    assert list(storage.list()) == ["models/m/versions/1/version.json"]


@pytest.mark.parametrize("storage", ["local", S3], indirect=True)
def test_put_new_from_concurrent_writers_lets_exactly_one_win(storage: Storage,
                                                              request: pytest.FixtureRequest) -> None:
    writers = 8
    if isinstance(storage, S3Storage):  # one client per writer, as separate workers would have
        seaweedfs = request.getfixturevalue("seaweedfs")
        clients: list[Storage] = [same_bucket(storage, seaweedfs) for _ in range(writers)]
    else:
        clients = [storage] * writers
    for round_ in range(3):
        key = f"models/m/versions/{round_}/version.json"
        winners = race_put_new(clients, key)
        assert len(winners) == 1, f"round {round_}: writers {winners} all think they created {key}"
        assert storage.get(key) == f"writer {winners[0]}".encode()


def race_put_new(clients: list[Storage], key: str) -> list[int]:
    """Let every client call put_new(key) at the same moment; return the indexes of those it says wrote."""
    barrier = threading.Barrier(len(clients))
    won = [False] * len(clients)

    def write(i: int) -> None:
        barrier.wait()
        won[i] = clients[i].put_new(key, f"writer {i}".encode())

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [i for i, w in enumerate(won) if w]


INVALID_KEYS = [
    ("../x", "'..'"),
    ("/abs", "relative path"),
    ("a//b", "empty"),
    ("", "non-empty"),
]


@pytest.mark.parametrize(("key", "problem"), INVALID_KEYS, ids=["dotdot", "absolute", "empty-segment", "empty"])
def test_invalid_keys_raise_value_error_naming_the_problem_and_write_nothing(
        storage: Storage, tmp_path: Path, key: str, problem: str) -> None:
    for write in (storage.put, storage.put_new):
        with pytest.raises(ValueError) as raised:
            write(key, b"should not be written")
        assert repr(key) in str(raised.value)
        assert problem in str(raised.value)
    for read in (storage.get, storage.exists, storage.delete):
        with pytest.raises(ValueError):
            read(key)
    assert list(storage.list()) == []
    # Nothing escaped the storage root either (e.g. "../x" next to it, or "/abs").
    assert sorted(p.name for p in tmp_path.iterdir()) == (["store"] if isinstance(storage, LocalStorage) else [])
    assert not Path("/abs").exists()


def test_large_object_round_trips_byte_identical(storage: Storage) -> None:
    data = np.random.default_rng(20).bytes(20 * MB + 123)
    storage.put("big/object.bin", data)
    assert storage.get("big/object.bin") == data


def test_s3_large_object_is_uploaded_in_parts_and_round_trips(
        s3_storage: S3Storage, seaweedfs: dict[str, str]) -> None:
    data = np.random.default_rng(5).bytes(20 * MB)
    multipart = same_bucket(s3_storage, seaweedfs, multipart_threshold=5 * MB)
    multipart.put("big/parts.bin", data)
    etag = multipart.client.head_object(Bucket=multipart.bucket, Key="big/parts.bin")["ETag"]
    assert etag.strip('"').endswith("-4")  # S3's ETag of a 4-part multipart upload
    assert s3_storage.get("big/parts.bin") == data


def test_s3_put_file_uploads_a_file_in_parts(s3_storage: S3Storage, seaweedfs: dict[str, str],
                                             tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    path.write_bytes(np.random.default_rng(6).bytes(12 * MB))
    same_bucket(s3_storage, seaweedfs, multipart_threshold=5 * MB).put_file("models/m.keras", path)
    assert s3_storage.get("models/m.keras") == path.read_bytes()


def test_local_storage_never_shows_temp_files_in_list(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    storage.put("a/1", b"1")
    storage.put("a/1", b"replaced")
    storage.put_new("a/2", b"2")
    storage.put_new("a/2", b"refused")
    # A writer that crashed between writing its temporary file and renaming it leaves one behind.
    (tmp_path / "store" / "a" / ".tmp-crashed").write_bytes(b"half an obj")

    assert list(storage.list()) == ["a/1", "a/2"]
    assert list(storage.list("a/")) == ["a/1", "a/2"]
    # Our own writes cleaned up after themselves: the crashed writer's file is the only temp file.
    leftovers = [name for _, _, files in os.walk(tmp_path / "store") for name in files if name.startswith(".tmp-")]
    assert leftovers == [".tmp-crashed"]


def test_local_storage_keeps_objects_as_files_under_its_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    storage.put("jobs/1/job.json", b"{}")
    assert (tmp_path / "store" / "jobs" / "1" / "job.json").read_bytes() == b"{}"
    assert LocalStorage(tmp_path / "store").get("jobs/1/job.json") == b"{}"  # a second instance sees it


# -- reads in flight, headers, streaming writes ------------------------------------------------

class SlowStorage(LocalStorage):
    """Local storage whose every read takes 20 ms, as a request to S3 in-region does; it records the most
    reads in flight at once."""

    def __init__(self, root: Path, **options) -> None:
        super().__init__(root, **options)
        self.lock = threading.Lock()
        self.running = self.most_running = 0

    def get_at_most(self, key: str, max_bytes: int) -> bytes:
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            time.sleep(0.02)
            return super().get_at_most(key, max_bytes)
        finally:
            with self.lock:
                self.running -= 1


def test_get_many_keeps_the_storages_reads_in_flight_to_hide_latency(tmp_path: Path) -> None:
    storage = SlowStorage(tmp_path, read_threads=64)
    keys = [f"inbox/{i:03d}.jpg" for i in range(640)]
    for key in keys:
        storage.put(key, key.encode())
    started = time.perf_counter()
    read = list(storage.get_many(keys))
    elapsed = time.perf_counter() - started
    assert [key for key, _ in read] == keys and all(data == key.encode() for key, data in read)
    assert storage.most_running == 64
    assert elapsed < 2.0, f"{elapsed:.2f} s: 640 reads of 20 ms on 64 threads take 0.2 s, on 8 threads 1.6 s"


def test_get_many_on_many_threads_yields_in_order_with_each_keys_error(storage: Storage) -> None:
    keys = [f"many/{i:03d}" for i in range(300)]
    for i, key in enumerate(keys):
        if i % 5:
            storage.put(key, f"photo {i}".encode() * (i % 50))
    keys[100] = "many//bad"
    read = list(storage.get_many(keys, threads=64, max_bytes=40 * 8))
    assert [key for key, _ in read] == keys
    for i, (key, data) in enumerate(read):
        if i == 100:
            assert isinstance(data, InvalidKey)
        elif i % 5 == 0:
            assert isinstance(data, MissingKey) and key in str(data)
        elif len(f"photo {i}") * (i % 50) > 40 * 8:
            assert isinstance(data, ObjectTooLarge)
        else:
            assert data == f"photo {i}".encode() * (i % 50)


class FailingStorage(LocalStorage):
    """Local storage whose store fails (not a key's own problem) on one key."""

    def get_at_most(self, key: str, max_bytes: int) -> bytes:
        if key.endswith("/150"):
            raise StorageError("the store is unreachable")
        return super().get_at_most(key, max_bytes)


def test_get_many_on_many_threads_raises_an_error_of_the_store_where_it_comes(tmp_path: Path) -> None:
    storage = FailingStorage(tmp_path)
    keys = [f"many/{i}" for i in range(300)]
    for key in keys:
        storage.put(key, b"x")
    taken = []
    with pytest.raises(StorageError, match="unreachable"):
        for key, _ in storage.get_many(keys, threads=64):
            taken.append(key)
    assert taken == keys[:150]


def test_s3_pool_has_a_connection_for_every_read_in_flight(s3_storage: S3Storage, seaweedfs: dict[str, str],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    # Past botocore's pool (10 connections by default) each read opens a connection and drops it after.
    keys = [f"inbox/{i:03d}" for i in range(200)]
    for key in keys:
        s3_storage.put(key, b"x" * 1000)
    reader = same_bucket(s3_storage, seaweedfs, read_threads=48)
    with caplog.at_level("WARNING", logger="urllib3.connectionpool"):
        assert all(data == b"x" * 1000 for _, data in reader.get_many(keys))
    assert "Connection pool is full" not in caplog.text


HEAD_CASES = {"empty.jpg": b"", "small.jpg": b"\xff\xd8\xff" + b"a" * 97,
              "exact.jpg": bytes(range(256)) * 4, "large.jpg": bytes(range(256)) * 800}


def test_get_head_returns_the_first_bytes_and_the_size_that_get_returns(storage: Storage) -> None:
    for key, data in HEAD_CASES.items():
        storage.put(f"inbox/{key}", data)
    for key in HEAD_CASES:
        whole = storage.get(f"inbox/{key}")
        assert storage.get_head(f"inbox/{key}", max_bytes=1024) == (whole[:1024], len(whole)), key
        assert storage.get_head(f"inbox/{key}") == (whole[:65536], len(whole)), key


def test_get_head_of_a_missing_or_invalid_key_fails_as_get_does(storage: Storage) -> None:
    storage.put("inbox/a/b.jpg", b"x")
    for missing in ("inbox/none.jpg", "inbox/a"):
        with pytest.raises(MissingKey) as raised:
            storage.get_head(missing)
        assert missing in str(raised.value)
    with pytest.raises(InvalidKey):
        storage.get_head("../inbox/a/b.jpg")


@pytest.mark.parametrize("reader", ["obstore", "boto3"])
def test_s3_get_head_is_one_ranged_get(s3_storage: S3Storage, seaweedfs: dict[str, str], reader: str) -> None:
    from bench.s3_proxy import S3Proxy

    s3_storage.put("inbox/large.jpg", HEAD_CASES["large.jpg"])
    with S3Proxy(seaweedfs["endpoint_url"]) as proxy:  # counts the requests that reach the server
        counted = S3Storage(s3_storage.bucket, **{**seaweedfs, "endpoint_url": proxy.url}, reader=reader)
        assert counted.get_head("inbox/large.jpg", max_bytes=100) == (HEAD_CASES["large.jpg"][:100],
                                                                      len(HEAD_CASES["large.jpg"]))
        assert proxy.counts() == {"GET range inbox": 1}


def test_writer_writes_exactly_the_bytes_written_in_pieces(storage: Storage) -> None:
    pieces = [np.random.default_rng(i).bytes(n) for i, n in enumerate([0, 1, 4095, 300_000, 17])]
    with storage.open_writer("jobs/1/output/results.jsonl") as writer:
        for piece in pieces:
            writer.write(piece)
    assert storage.get("jobs/1/output/results.jsonl") == b"".join(pieces)
    assert list(storage.list()) == ["jobs/1/output/results.jsonl"]


def test_writer_of_nothing_writes_an_empty_object(storage: Storage) -> None:
    with storage.open_writer("jobs/1/output/results.jsonl"):
        pass
    assert storage.get("jobs/1/output/results.jsonl") == b""


def test_writer_that_fails_leaves_nothing_and_the_previous_object_as_it_was(storage: Storage) -> None:
    storage.put("jobs/1/output/results.jsonl", b"the previous results")
    with pytest.raises(RuntimeError, match="chunk 3 unreadable"), \
            storage.open_writer("jobs/1/output/results.jsonl", part_size=5 * MB) as writer:
        writer.write(np.random.default_rng(1).bytes(6 * MB))  # one part uploaded on S3
        raise RuntimeError("chunk 3 unreadable")
    assert storage.get("jobs/1/output/results.jsonl") == b"the previous results"
    with pytest.raises(RuntimeError), storage.open_writer("jobs/1/output/new.jsonl") as writer:
        writer.write(b"half")
        raise RuntimeError
    assert list(storage.list()) == ["jobs/1/output/results.jsonl"]
    if isinstance(storage, LocalStorage):
        assert [name for _, _, files in os.walk(storage.root) for name in files] == ["results.jsonl"]
    else:  # the parts uploaded were aborted: no upload is left open
        assert "Uploads" not in storage.client.list_multipart_uploads(Bucket=storage.bucket)


def test_writer_keeps_the_object_invisible_until_the_end(storage: Storage) -> None:
    with storage.open_writer("out/results.jsonl", part_size=5 * MB) as writer:
        writer.write(b"x" * (6 * MB))
        assert not storage.exists("out/results.jsonl")
        assert list(storage.list()) == []
    assert storage.size("out/results.jsonl") == 6 * MB


def test_s3_writer_uploads_parts_of_part_size_holding_a_few_parts_at_most(s3_storage: S3Storage) -> None:
    data = np.random.default_rng(7).bytes(25 * MB + 5)
    tracemalloc.start()
    try:
        with s3_storage.open_writer("out/results.jsonl", part_size=5 * MB) as writer:
            for start in range(0, len(data), 64 * 1024):
                writer.write(data[start:start + 64 * 1024])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    etag = s3_storage.client.head_object(Bucket=s3_storage.bucket, Key="out/results.jsonl")["ETag"]
    assert etag.strip('"').endswith("-6")  # 5 parts of 5 MB and the last 5 bytes
    assert s3_storage.get("out/results.jsonl") == data
    # The part being filled, its copy being sent, and botocore's own: not the 25 MB written.
    assert peak < 3 * 5 * MB, f"{peak} bytes held while writing 25 MB in parts of 5 MB"


def test_s3_writer_refuses_parts_smaller_than_s3_takes(s3_storage: S3Storage) -> None:
    with pytest.raises(ValueError, match="at least 5242880 bytes"), \
            s3_storage.open_writer("out/results.jsonl", part_size=MB):
        pass


def test_writer_refuses_an_invalid_key_before_writing(storage: Storage) -> None:
    with pytest.raises(InvalidKey), storage.open_writer("../escape.jsonl") as writer:
        writer.write(b"x")
    assert list(storage.list()) == []


def read_in_this_process(storage: S3Storage, keys: list[str], answers: multiprocessing.Queue) -> None:
    answers.put([(key, data) for key, data in storage.get_many(keys)] + [storage.get_head(keys[0], 2)])


def test_s3_reads_in_a_process_forked_from_one_that_read(s3_storage: S3Storage) -> None:
    # Celery's pool children are forked from the worker, decoding processes from a pool child; obstore's
    # runtime does not survive a fork, so a forked child reads with boto3 instead of hanging.
    keys = [f"inbox/{i}.jpg" for i in range(20)]
    for key in keys:
        s3_storage.put(key, key.encode())
    assert dict(s3_storage.get_many(keys)) == {key: key.encode() for key in keys}  # this process's reads
    answers = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=read_in_this_process, args=(s3_storage, keys, answers))
    child.start()
    child.join(30)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0, "the forked process did not read (hung, or failed)"
    assert answers.get(timeout=5) == [(key, key.encode()) for key in keys] + [(b"in", len(keys[0]))]


def test_get_heads_reads_each_keys_head_and_size_in_order_with_each_keys_error(storage: Storage) -> None:
    for key, data in HEAD_CASES.items():
        storage.put(f"inbox/{key}", data)
    keys = [f"inbox/{key}" for key in HEAD_CASES] * 20 + ["inbox/none.jpg", "inbox//bad.jpg"]
    read = list(storage.get_heads(keys, max_bytes=100, threads=16))
    assert [key for key, _ in read] == keys
    for key, head in read[:-2]:
        whole = HEAD_CASES[key.removeprefix("inbox/")]
        assert head == (whole[:100], len(whole)), key
    assert isinstance(read[-2][1], MissingKey) and isinstance(read[-1][1], InvalidKey)

"""Object storage: one small interface, two backends (a local directory and any S3 endpoint).

Keys are '/'-separated relative paths such as ``jobs/abc/summary.json``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from pipeline.decode import MAX_BYTES as MAX_PHOTO_BYTES


class StorageError(Exception):
    """A storage operation failed."""


class MissingKey(StorageError, KeyError):
    """The key does not exist."""

    def __str__(self) -> str:
        return f"no such key: {self.args[0]}"


class ObjectTooLarge(StorageError):
    """The object is larger than the reader accepts; it was not read."""

    def __init__(self, key: str, size: int, limit: int) -> None:
        super().__init__(key, size, limit)
        self.key, self.size, self.limit = key, size, limit

    def __str__(self) -> str:
        return f"object too large: {self.key} is {self.size} bytes, limit {self.limit} bytes; it was not read"


class InvalidKey(StorageError, ValueError):
    """A key no object can have (see check_key), or one whose folder is an object: the caller's mistake,
    never worth retrying. The message names the problem."""


class StorageFull(StorageError):
    """The disk under local storage (or the embedded broker) is full: nothing more can be written until
    space is freed."""


# Reads a process keeps in flight by default (FACEREC_READ_THREADS): at 20 ms a request, 32 reads move
# 1,600 photos/s, more than one worker process's host work lets it use (README, GPU workers;
# bench/results/storage_client.json measures it).
READ_THREADS = 32
# A streaming writer's part: S3 takes at least 5 MiB for every part but the last.
PART_SIZE = 8 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024
# What get_head reads by default: enough for a JPEG's, PNG's or WebP's header and EXIF orientation.
HEAD_BYTES = 64 * 1024

# Every backend takes the strictest bounds of them all, so a key valid on one is valid on every other:
# a file system's name length (255 bytes a segment, ext4 and most others) and S3's key length.
MAX_SEGMENT_BYTES = 255
MAX_KEY_BYTES = 1024


def check_key(key: str) -> str:
    """Return key if it is a safe relative object key, else raise InvalidKey (a ValueError) naming the problem."""
    shown = key if len(key) <= 80 else key[:77] + "..."
    if not key or key.startswith("/") or "\\" in key:
        raise InvalidKey(f"invalid storage key {shown!r}: must be a non-empty relative path")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidKey(f"invalid storage key {shown!r}: empty, '.' or '..' path segment")
    if any(ord(c) < 32 or c == "\x7f" for c in key):
        raise InvalidKey(f"invalid storage key {shown!r}: control characters are not allowed")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidKey(f"invalid storage key {shown!r}: {len(key.encode())} bytes long, at most {MAX_KEY_BYTES}")
    long = next((part for part in key.split("/") if len(part.encode()) > MAX_SEGMENT_BYTES), None)
    if long is not None:
        raise InvalidKey(f"invalid storage key {shown!r}: the name {long[:40] + '...'!r} is {len(long.encode())} "
                         f"bytes long, at most {MAX_SEGMENT_BYTES} between two '/'")
    return key


@contextlib.contextmanager
def _os_errors(key: str) -> Iterator[None]:
    """What the file system refuses, as storage errors: a full disk, or a key whose folder is an object."""
    try:
        yield
    except (NotADirectoryError, FileExistsError):
        raise InvalidKey(f"cannot write {key}: part of its path is an object on local storage") from None
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(f"cannot write {key}: the disk under local storage is full") from None
        if err.errno == errno.ENAMETOOLONG:
            raise InvalidKey(f"cannot write {key}: the file system refuses a name this long") from None
        raise


class Writer(Protocol):
    """What open_writer yields: the object's bytes, written in order."""

    def write(self, data: bytes) -> None: ...


class _MemoryWriter:
    """A writer that holds everything written, for backends with no streaming write of their own."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(bytes(data))


class Storage(ABC):
    """Bytes under string keys. Writes are whole-object and atomic."""

    read_threads = READ_THREADS  # get_many's reads in flight unless the caller says otherwise

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write data under key, replacing any previous object."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Read the object under key; raise MissingKey if there is none."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists under key."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield every key that starts with prefix, in the backend's order (sort if order matters:
        AWS and local disk list lexicographically, SeaweedFS folder by folder)."""

    @abstractmethod
    def scan(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        """Yield (key, when it was last written, in seconds since the epoch) for every key that starts with
        prefix, streamed: memory holds a page of the listing (S3) or the open folders (local disk), never the
        whole of it. In no particular order, but the keys of one folder come one after another."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object under key; no error if it is already gone."""

    @abstractmethod
    def delete_empty_folders(self, prefix: str) -> None:
        """Remove the folders under prefix that deletes left empty."""

    def put_new(self, key: str, data: bytes) -> bool:
        """Write data only if key does not exist yet; return whether it was written."""
        if self.exists(key):
            return False
        self.put(key, data)
        return True

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's size in bytes, without reading it; raise MissingKey if there is none."""

    def get_at_most(self, key: str, max_bytes: int) -> bytes:
        """get(key), but raise ObjectTooLarge, before reading it, if the object is larger than max_bytes."""
        size = self.size(key)
        if size > max_bytes:
            raise ObjectTooLarge(key, size, max_bytes)
        return self.get(key)

    def get_head(self, key: str, max_bytes: int = HEAD_BYTES) -> tuple[bytes, int]:
        """The object's first max_bytes bytes (all of it if smaller) and its whole size, in one request on
        each backend (this default takes two); raise MissingKey if there is none."""
        size = self.size(key)
        return self.get(key)[:max_bytes], size

    @contextlib.contextmanager
    def open_writer(self, key: str, part_size: int = PART_SIZE) -> Iterator[Writer]:
        """A writer for an object too large to hold: what is written appears under key, whole, when the
        block ends without an error, and nothing does if it raises. Backends stream it (a multipart
        upload, a temporary file); this default holds it in memory and puts it at the end."""
        check_key(key)
        writer = _MemoryWriter()
        yield writer
        self.put(key, b"".join(writer.parts))

    def get_many(self, keys: Iterable[str], threads: int | None = None, ahead: int | None = None, *,
                 max_bytes: int = MAX_PHOTO_BYTES, ahead_bytes: int = 256 * 1024 * 1024
                 ) -> Iterator[tuple[str, bytes | StorageError]]:
        """(key, data) for each key, in order. A key that cannot be read for a reason of its own comes
        with that error in place of the data: MissingKey, ObjectTooLarge (larger than max_bytes, the
        decoder's limit by default: refused by its size, never downloaded) or InvalidKey. Each error's
        str() is a message for the user. Errors of the store itself (unreachable, refused) are raised.

        Reads run on `threads` threads (default: the storage's read_threads), at most `ahead` keys
        (default: twice the threads) and about `ahead_bytes` of read data before the caller: a remote
        store answers one request at a time far slower than it answers several, and 64 photos of 50 MB
        must not all be held at once."""
        return self._read_many(keys, lambda key: self.get_at_most(key, max_bytes), len, threads, ahead, ahead_bytes)

    def get_heads(self, keys: Iterable[str], max_bytes: int = HEAD_BYTES, threads: int | None = None,
                  ahead: int | None = None) -> Iterator[tuple[str, tuple[bytes, int] | StorageError]]:
        """(key, (first bytes, size)) for each key, in order: get_head of each, read as get_many reads (one
        request a key, `threads` in flight), with a key's own error (MissingKey, InvalidKey) in place."""
        return self._read_many(keys, lambda key: self.get_head(key, max_bytes), lambda head: len(head[0]),
                               threads, ahead, 256 * 1024 * 1024)

    def _read_many(self, keys: Iterable[str], read_one: Callable[[str], Any], size_of: Callable[[Any], int],
                   threads: int | None, ahead: int | None, ahead_bytes: int) -> Iterator[tuple[str, Any]]:
        """read_one(key) for each key, in order, on threads (get_many says how)."""
        threads = threads or self.read_threads
        ahead = max(ahead or 2 * threads, 1)
        # Reads running and bytes read but not yet taken, kept as counts (not recomputed from the reads
        # pending, which costs a scan per key: half a millisecond a photo at 128 threads).
        state = threading.Condition()
        running, held = 0, 0

        def read(key: str) -> Any:
            nonlocal running, held
            data = None
            try:
                data = read_one(check_key(key))
            except (MissingKey, ObjectTooLarge) as refused:
                data = refused
            except ValueError as invalid:
                data = InvalidKey(str(invalid))
            finally:  # counted before the future's result is set, so the caller sees the counts first
                with state:
                    running -= 1
                    held += size_of(data) if data is not None and not isinstance(data, StorageError) else 0
                    state.notify()
            return data

        def full() -> bool:
            return len(pending) >= ahead or held >= ahead_bytes

        def take() -> tuple[str, Any]:
            nonlocal held
            key, future = pending.popleft()
            data = future.result()
            if not isinstance(data, StorageError):
                with state:
                    held -= size_of(data)
            return key, data

        with ThreadPoolExecutor(threads, thread_name_prefix="storage-read") as pool:
            pending: deque = deque()
            for key in keys:
                # A read starts only when a thread is free for it (queued reads would all run, whatever
                # the caller takes) and the data held is under both limits.
                while pending:
                    with state:
                        while not full() and running >= threads:
                            state.wait()
                        if not full():
                            break
                    yield take()
                with state:
                    running += 1
                pending.append((key, pool.submit(read, key)))
            while pending:
                yield take()

    def put_json(self, key: str, value: Any) -> None:
        self.put(key, json.dumps(value, indent=2, sort_keys=True).encode())

    def get_json(self, key: str) -> Any:
        return json.loads(self.get(key))

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        self.put(key, Path(path).read_bytes())

    def get_file(self, key: str, path: str | os.PathLike) -> None:
        """Copy the object under key to the file path (MissingKey if there is none)."""
        Path(path).write_bytes(self.get(key))

    def read_lines(self, key: str) -> Iterator[bytes]:
        """The object's lines as it is read (a manifest of a million keys is never held whole)."""
        yield from self.get(key).splitlines()

    def describe(self) -> str:
        """Where the objects live, for people reading the output."""
        return type(self).__name__


class LocalStorage(Storage):
    """Objects as files under a root directory."""

    def __init__(self, root: str | os.PathLike, read_threads: int = READ_THREADS) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.read_threads = read_threads

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _make_parent(self, key: str) -> Path:
        path = self.path(key)
        with _os_errors(key):
            path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _temporary(self, key: str, data: bytes) -> str:
        """The data in a temporary file beside where key goes (removed again if it cannot be written whole)."""
        path = self._make_parent(key)
        with _os_errors(key):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return tmp

    def put(self, key: str, data: bytes) -> None:
        # Write to a temporary file then rename, so readers never see half an object.
        tmp = self._temporary(key, data)
        try:
            with _os_errors(key):
                os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        tmp = self._temporary(key, b"")
        try:
            with _os_errors(key):
                shutil.copyfile(path, tmp)  # a search graph is 0.8 GB a million faces: never whole in memory
                os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_new(self, key: str, data: bytes) -> bool:
        tmp = self._temporary(key, data)
        try:
            with _os_errors(key):
                try:
                    os.link(tmp, self.path(key))  # atomic create-if-absent
                except FileExistsError:
                    return False
            return True
        finally:
            os.unlink(tmp)

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise MissingKey(key) from None

    def size(self, key: str) -> int:
        path = self.path(key)
        try:
            if path.is_file():
                return path.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            pass
        raise MissingKey(key)

    def get_at_most(self, key: str, max_bytes: int) -> bytes:
        # The size of the file opened, then at most one byte more than the limit read: a file that
        # grows in between is refused too, never read whole.
        try:
            with open(self.path(key), "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size <= max_bytes:
                    data = file.read(max_bytes + 1)
                    if len(data) <= max_bytes:
                        return data
                    size = len(data)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise MissingKey(key) from None
        raise ObjectTooLarge(key, size, max_bytes)

    def get_head(self, key: str, max_bytes: int = HEAD_BYTES) -> tuple[bytes, int]:
        if max_bytes < 1:
            raise ValueError(f"get_head reads at least one byte, not {max_bytes}")
        try:
            with open(self.path(key), "rb") as file:
                return file.read(max_bytes), os.fstat(file.fileno()).st_size
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise MissingKey(key) from None

    @contextlib.contextmanager
    def open_writer(self, key: str, part_size: int = PART_SIZE) -> Iterator[Writer]:
        # Appends to a temporary file beside the key, renamed onto it at the end: atomic, as put is.
        tmp = self._temporary(key, b"")
        try:
            with open(tmp, "ab") as file:
                yield _FileWriter(file, key)
            with _os_errors(key):
                os.replace(tmp, self.path(key))
        finally:
            Path(tmp).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def read_lines(self, key: str) -> Iterator[bytes]:
        try:
            with open(self.path(key), "rb") as file:
                for line in file:
                    yield line.rstrip(b"\r\n")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise MissingKey(key) from None

    def list(self, prefix: str = "") -> Iterator[str]:
        # Walk only the folder the prefix names, not the whole store (datasets, jobs and models).
        folder = prefix.rpartition("/")[0]
        try:
            start = self.path(folder) if folder else self.root
        except ValueError:  # a prefix no valid key can start with
            return
        keys = []
        for dirpath, _dirs, files in os.walk(start):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        yield from sorted(keys)

    def scan(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        folder = prefix.rpartition("/")[0]
        try:
            start = self.path(folder) if folder else self.root
        except ValueError:  # a prefix no valid key can start with
            return
        yield from self._scan(str(start), folder, prefix)

    def _scan(self, path: str, folder: str, prefix: str) -> Iterator[tuple[str, float]]:
        # Keys are built as strings: pathlib would intern every name, and the interpreter's table of interned
        # strings grows with them.
        try:
            entries = os.scandir(path)  # read as it goes: a folder of a million requests is never held whole
        except (FileNotFoundError, NotADirectoryError):
            return
        with entries:
            for entry in entries:
                key = f"{folder}/{entry.name}" if folder else entry.name
                if entry.is_dir(follow_symlinks=False):
                    if (key + "/").startswith(prefix):
                        yield from self._scan(entry.path, key, prefix)
                elif key.startswith(prefix) and not entry.name.startswith(".tmp-"):
                    with contextlib.suppress(FileNotFoundError):  # deleted since the folder was read
                        yield key, entry.stat(follow_symlinks=False).st_mtime

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # nothing there: nothing to delete
            self.path(key).unlink()

    def delete_empty_folders(self, prefix: str) -> None:
        folder = self.path(prefix.rstrip("/"))
        for path, _folders, _files in os.walk(folder, topdown=False):
            with contextlib.suppress(OSError):  # not empty (written meanwhile): kept
                os.rmdir(path)

    def describe(self) -> str:
        return str(self.root)


class _FileWriter:
    """Appends to an open file; a full disk is StorageFull, as in put."""

    def __init__(self, file: io.BufferedWriter, key: str) -> None:
        self.file, self.key = file, key

    def write(self, data: bytes) -> None:
        with _os_errors(self.key):
            self.file.write(data)


class S3Storage(Storage):
    """Objects in one bucket of any S3-compatible server (AWS, MinIO, Ceph, SeaweedFS)."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        region: str = "us-east-1",
        page_size: int = 1000,
        multipart_threshold: int = 16 * 1024 * 1024,
        max_attempts: int = 5,
        read_threads: int = READ_THREADS,
        reader: str = "obstore",
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.page_size = page_size
        self.read_threads = read_threads
        self._reader = _PhotoReader(bucket, endpoint_url, access_key_id, secret_access_key, region, max_attempts,
                                    read_threads) if reader == "obstore" else None
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            region_name=region,
            # botocore's standard mode retries throttling, 5xx and connection errors with backoff.
            config=Config(retries={"max_attempts": max_attempts, "mode": "standard"},
                          s3={"addressing_style": "path"},
                          # A connection for each read in flight, and botocore's default 10 for the rest
                          # of the process: past its pool, botocore opens and drops a connection per request.
                          max_pool_connections=read_threads + 10),
        )
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold,
                                       multipart_chunksize=multipart_threshold)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes) -> None:
        # upload_fileobj switches to multipart above the threshold.
        self.client.upload_fileobj(io.BytesIO(data), self.bucket, check_key(key), Config=self.transfer)

    def put_new(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            # A conditional write: the server refuses it if the key exists, so one writer wins.
            self.client.put_object(Bucket=self.bucket, Key=check_key(key), Body=data, IfNoneMatch="*")
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise StorageError(f"cannot write {key}: {err}") from err

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        self.client.upload_file(str(path), self.bucket, check_key(key), Config=self.transfer)

    def get_file(self, key: str, path: str | os.PathLike) -> None:
        from botocore.exceptions import ClientError

        try:  # in parts, several at once, never whole in memory (a search graph is 0.8 GB a million faces)
            self.client.download_file(self.bucket, check_key(key), str(path), Config=self.transfer)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise MissingKey(key) from None
            raise StorageError(f"cannot read {key}: {err}") from err

    def read_lines(self, key: str) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=check_key(key))["Body"]
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise MissingKey(key) from None
            raise StorageError(f"cannot read {key}: {err}") from err
        yield from body.iter_lines()

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=check_key(key))["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise MissingKey(key) from None
            raise StorageError(f"cannot read {key}: {err}") from err

    def size(self, key: str) -> int:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=check_key(key))["ContentLength"]
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise MissingKey(key) from None
            raise StorageError(f"cannot check {key}: {err}") from err

    def get_at_most(self, key: str, max_bytes: int) -> bytes:
        from botocore.exceptions import ClientError

        if self._reader is not None and self._reader.usable():
            return self._reader.get_at_most(check_key(key), max_bytes)
        # One GET whose headers say the size before the body is read: an object over the limit is
        # refused and its connection closed without downloading it (a HEAD first would double the
        # requests for every photo). The read is bounded too, in case the server's length was wrong.
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=check_key(key))
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise MissingKey(key) from None
            raise StorageError(f"cannot read {key}: {err}") from err
        body = response["Body"]
        try:
            size = response["ContentLength"]
            if size <= max_bytes:
                data = body.read(max_bytes + 1)
                if len(data) <= max_bytes:
                    return data
                size = max(size, len(data))
        finally:
            body.close()
        raise ObjectTooLarge(key, size, max_bytes)

    def get_head(self, key: str, max_bytes: int = HEAD_BYTES) -> tuple[bytes, int]:
        from botocore.exceptions import ClientError

        if max_bytes < 1:
            raise ValueError(f"get_head reads at least one byte, not {max_bytes}")
        if self._reader is not None and self._reader.usable():
            return self._reader.get_head(check_key(key), max_bytes)
        # One ranged GET: the total size comes back in Content-Range ("bytes 0-N/TOTAL").
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=check_key(key), Range=f"bytes=0-{max_bytes - 1}")
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise MissingKey(key) from None
            if code == "InvalidRange":  # no byte 0: the object is empty
                return b"", 0
            raise StorageError(f"cannot read {key}: {err}") from err
        body = response["Body"]
        try:
            head = body.read(max_bytes)
        finally:
            body.close()  # a server that ignored the range: the rest is not downloaded
        content_range = response.get("ContentRange", "")
        return head, int(content_range.rpartition("/")[2]) if content_range else response["ContentLength"]

    @contextlib.contextmanager
    def open_writer(self, key: str, part_size: int = PART_SIZE) -> Iterator[Writer]:
        from botocore.exceptions import ClientError

        if part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 parts are at least {MIN_PART_SIZE} bytes, not {part_size}")
        writer = _MultipartWriter(self, check_key(key), part_size)
        try:
            yield writer
            writer.close()
        except ClientError as err:
            writer.abort()
            raise StorageError(f"cannot write {key}: {err}") from err
        except BaseException:
            writer.abort()
            raise

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=check_key(key))
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise StorageError(f"cannot check {key}: {err}") from err

    def list(self, prefix: str = "") -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix,
                                   PaginationConfig={"PageSize": self.page_size})
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"]

    def scan(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix,
                                   PaginationConfig={"PageSize": self.page_size})
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"], item["LastModified"].timestamp()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=check_key(key))

    def delete_empty_folders(self, prefix: str) -> None:
        """S3 has no folders: a folder is gone with its last object."""

    def describe(self) -> str:
        return f"s3://{self.bucket} at {self.endpoint_url or 'AWS'}"


# The process that first read through obstore: its runtime's threads do not survive a fork, and a process
# forked from this one would hang on its first read (celery's pool children, the decoding pool).
_obstore_process: int | None = None


class _PhotoReader:
    """Photo reads (get_at_most, get_head) through obstore, Rust's object_store: a small GET costs the reading
    process 0.14 ms of CPU against boto3's 1.1 ms (bench/results/storage_client.json), so a worker's reads
    do not take its Python thread from the pipeline. Everything else stays on boto3. Made in the process
    that first uses it; a process forked from one that used it reads with boto3 (see usable)."""

    def __init__(self, bucket: str, endpoint_url: str | None, access_key_id: str | None,
                 secret_access_key: str | None, region: str, max_attempts: int, connections: int) -> None:
        self.settings = (bucket, endpoint_url, access_key_id, secret_access_key, region, max_attempts, connections)
        self._store = None
        self._lock = threading.Lock()

    def usable(self) -> bool:
        """Whether this process may read through obstore: installed, and not forked from a process that did."""
        global _obstore_process
        if _obstore_process not in (None, os.getpid()):
            return False
        with self._lock:
            if self._store is None:
                try:
                    self._store = self._open()
                except ImportError:
                    return False
            _obstore_process = os.getpid()
        return True

    def _open(self):
        from obstore.store import S3Store

        bucket, endpoint_url, access_key_id, secret_access_key, region, max_attempts, connections = self.settings
        if access_key_id:
            credentials = {"access_key_id": access_key_id, "secret_access_key": secret_access_key}
        else:  # boto3's chain (environment, profile, instance or pod role), as the boto3 client has
            import boto3
            from obstore.auth.boto3 import Boto3CredentialProvider

            credentials = {"credential_provider": Boto3CredentialProvider(boto3.Session(region_name=region))}
        return S3Store(bucket, region=region, virtual_hosted_style_request=False,
                       **({"endpoint": endpoint_url} if endpoint_url else {}), **credentials,
                       client_options={"allow_http": bool(endpoint_url and endpoint_url.startswith("http:")),
                                       "pool_max_idle_per_host": str(connections + 10)},
                       retry_config={"max_retries": max_attempts - 1})

    def _get(self, key: str, options: dict | None = None):
        import obstore
        from obstore.exceptions import BaseError

        try:
            return obstore.get(self._store, key, options=options)
        except FileNotFoundError:
            raise MissingKey(key) from None
        except BaseError as err:
            if "416" in str(err).splitlines()[0]:  # a range of an empty object: not satisfiable
                raise _EmptyObject from None
            raise StorageError(f"cannot read {key}: {str(err).splitlines()[0][:300]}") from None

    def get_at_most(self, key: str, max_bytes: int) -> bytes:
        # The size comes with the answer's headers: an object over the limit is dropped unread.
        answer = self._get(key)
        size = answer.meta["size"]
        if size > max_bytes:
            raise ObjectTooLarge(key, size, max_bytes)
        return bytes(answer.bytes())

    def get_head(self, key: str, max_bytes: int) -> tuple[bytes, int]:
        try:
            answer = self._get(key, {"range": (0, max_bytes)})
        except _EmptyObject:
            return b"", 0
        return bytes(answer.bytes()), answer.meta["size"]


class _EmptyObject(Exception):
    """A range of an object with no bytes was asked for."""


class _MultipartWriter:
    """An S3 object written in parts of part_size bytes, holding at most one part: a multipart upload
    begun with the first full part; output that never fills one is a plain put (an empty object too)."""

    def __init__(self, storage: S3Storage, key: str, part_size: int) -> None:
        self.storage, self.key, self.part_size = storage, key, part_size
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict] = []

    def write(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) < self.part_size:
            return
        # Every part the same size (some S3 servers ask for that), the rest kept for the next one.
        sent = 0
        with memoryview(self.buffer) as view:
            while len(self.buffer) - sent >= self.part_size:
                self._upload_part(bytes(view[sent:sent + self.part_size]))
                sent += self.part_size
        del self.buffer[:sent]

    def _upload_part(self, data: bytes) -> None:
        client, bucket = self.storage.client, self.storage.bucket
        if self.upload_id is None:
            self.upload_id = client.create_multipart_upload(Bucket=bucket, Key=self.key)["UploadId"]
        number = len(self.parts) + 1
        answer = client.upload_part(Bucket=bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number,
                                    Body=data)
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def close(self) -> None:
        """Make the object visible: the last part and the completion, or a plain put."""
        if self.upload_id is None:
            self.storage.client.put_object(Bucket=self.storage.bucket, Key=self.key, Body=bytes(self.buffer))
            return
        if self.buffer:
            self._upload_part(bytes(self.buffer))
        self.storage.client.complete_multipart_upload(Bucket=self.storage.bucket, Key=self.key,
                                                      UploadId=self.upload_id,
                                                      MultipartUpload={"Parts": self.parts})

    def abort(self) -> None:
        """Drop the parts uploaded so far (they are stored, and billed, until aborted)."""
        if self.upload_id is not None:
            with contextlib.suppress(Exception):  # the error that got us here is the one to report
                self.storage.client.abort_multipart_upload(Bucket=self.storage.bucket, Key=self.key,
                                                           UploadId=self.upload_id)


def storage_from_settings(settings) -> Storage:
    """The storage the settings name: S3 when an endpoint is configured, else data_dir/storage."""
    if settings.uses_s3:
        storage = S3Storage(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            region=settings.s3_region,
            read_threads=settings.read_threads,
        )
        storage.ensure_bucket()
        return storage
    return LocalStorage(Path(settings.data_dir) / "storage", read_threads=settings.read_threads)

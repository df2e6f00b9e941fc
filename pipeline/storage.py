"""Object storage: one small interface, two backends (a local directory and any S3 endpoint).

Keys are '/'-separated relative paths such as ``jobs/abc/summary.json``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


class StorageError(Exception):
    """A storage operation failed."""


class MissingKey(StorageError, KeyError):
    """The key does not exist."""

    def __str__(self) -> str:
        return f"no such key: {self.args[0]}"


def check_key(key: str) -> str:
    """Return key if it is a safe relative object key, else raise ValueError naming the problem."""
    if not key or key.startswith("/") or "\\" in key:
        raise ValueError(f"invalid storage key {key!r}: must be a non-empty relative path")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid storage key {key!r}: empty, '.' or '..' path segment")
    return key


class Storage(ABC):
    """Bytes under string keys. Writes are whole-object and atomic."""

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
    def delete(self, key: str) -> None:
        """Remove the object under key; no error if it is already gone."""

    def put_new(self, key: str, data: bytes) -> bool:
        """Write data only if key does not exist yet; return whether it was written."""
        if self.exists(key):
            return False
        self.put(key, data)
        return True

    def get_many(self, keys: Iterable[str], threads: int = 8, ahead: int = 64
                 ) -> Iterator[tuple[str, bytes | MissingKey]]:
        """(key, data) for each key, in order; a missing key comes with its MissingKey in place of the
        data. Reads run on a few threads, at most `ahead` keys before the caller: a remote store
        answers one request at a time far slower than it answers several."""
        def read(key: str) -> bytes | MissingKey:
            try:
                return self.get(key)
            except MissingKey as missing:
                return missing

        with ThreadPoolExecutor(threads, thread_name_prefix="storage-read") as pool:
            pending: deque = deque()
            for key in keys:
                pending.append((key, pool.submit(read, key)))
                if len(pending) >= ahead:
                    key, data = pending.popleft()
                    yield key, data.result()
            while pending:
                key, data = pending.popleft()
                yield key, data.result()

    def put_json(self, key: str, value: Any) -> None:
        self.put(key, json.dumps(value, indent=2, sort_keys=True).encode())

    def get_json(self, key: str) -> Any:
        return json.loads(self.get(key))

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        self.put(key, Path(path).read_bytes())

    def describe(self) -> str:
        """Where the objects live, for people reading the output."""
        return type(self).__name__


class LocalStorage(Storage):
    """Objects as files under a root directory."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _make_parent(self, key: str) -> Path:
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StorageError(f"cannot write {key}: part of its path is an object on local storage") from None
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._make_parent(key)
        # Write to a temporary file then rename, so readers never see half an object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_new(self, key: str, data: bytes) -> bool:
        path = self._make_parent(key)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)  # atomic create-if-absent
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise MissingKey(key) from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

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

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def describe(self) -> str:
        return str(self.root)


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
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.page_size = page_size
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            region_name=region,
            # botocore's standard mode retries throttling, 5xx and connection errors with backoff.
            config=Config(retries={"max_attempts": max_attempts, "mode": "standard"},
                          s3={"addressing_style": "path"}),
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

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=check_key(key))["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise MissingKey(key) from None
            raise StorageError(f"cannot read {key}: {err}") from err

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

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=check_key(key))

    def describe(self) -> str:
        return f"s3://{self.bucket} at {self.endpoint_url or 'AWS'}"


def storage_from_settings(settings) -> Storage:
    """The storage the settings name: S3 when an endpoint is configured, else data_dir/storage."""
    if settings.uses_s3:
        storage = S3Storage(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            region=settings.s3_region,
        )
        storage.ensure_bucket()
        return storage
    return LocalStorage(Path(settings.data_dir) / "storage")

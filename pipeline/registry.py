"""Model registry in storage: immutable versions under a versioned prefix, and a `current` pointer.

Layout: ``models/<name>/versions/<version>/...`` holds a version's files; its ``version.json`` is
written last and only if absent, so a version exists once complete and never changes afterwards.

The `current` pointer is a sequence of immutable, numbered records
``models/<name>/pointer/<000000123>.json``; the highest number is the current one. A change writes
number + 1 with the storage's create-if-absent (``Storage.put_new``: If-None-Match on S3, a hard link
on local disk), so of two writers that read the same pointer exactly one succeeds and the other reads
again: a compare-and-swap. A plain read-change-write of one object let the last writer win, losing a
concurrently enrolled person or a promote's history. Older stores kept the pointer in
``models/<name>/current.json``: it is read while no numbered record exists, and the first change
carries it over as record 1. Records are never deleted: an old number written again would undo the
compare-and-swap.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime

from pipeline.storage import MissingKey, Storage

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VERSION_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")  # what new_version_id makes
POINTER_RECORD = re.compile(r"^(\d{9})\.json$")
POINTER_ATTEMPTS = 50  # changes in a row lost to other writers before giving up


class PointerMoved(Exception):
    """The current version is not the one the caller expected (or others kept changing it)."""


class _AnyVersion:
    def __repr__(self) -> str:
        return "ANY"


ANY = _AnyVersion()  # set_current's `expected` default: whatever is current


class VersionExists(Exception):
    """A model version with this id was already written."""


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(f"invalid model name {_shown(name)}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def check_version(version: str) -> str:
    """Return version if it has the form new_version_id makes, else raise ValueError naming the problem."""
    if not isinstance(version, str) or not VERSION_PATTERN.match(version):
        raise ValueError(f"invalid model version {_shown(version)}: versions look like 20240131T120000Z-a1b2c3")
    return version


def _shown(value: object) -> str:
    """value for an error message, cut short: a hostile id may be thousands of characters long."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def version_prefix(name: str, version: str) -> str:
    return f"models/{check_model_name(name)}/versions/{check_version(version)}"


def new_version_id() -> str:
    """Sortable by creation time, unique across workers."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def publish_version(storage: Storage, name: str, version: str, files: dict[str, bytes], record: dict) -> dict:
    """Write a complete version: its files first, then version.json as the commit marker. Returns
    the record written: the given one with the model, version, file names and creation time."""
    prefix = version_prefix(name, version)
    if storage.exists(f"{prefix}/version.json"):
        raise VersionExists(f"model {name} version {version} already exists")
    for filename, data in files.items():
        storage.put(f"{prefix}/{filename}", data)
    record = {**record, "model": name, "version": version, "files": sorted(files), "created_at": _now()}
    if not storage.put_new(f"{prefix}/version.json", json.dumps(record, indent=2, sort_keys=True).encode()):
        raise VersionExists(f"model {name} version {version} already exists")
    return record


def get_version(storage: Storage, name: str, version: str) -> dict:
    """The version's record; LookupError if there is none, or if the id could not be one (then
    without asking storage)."""
    check_model_name(name)
    try:
        check_version(version)
    except ValueError as err:
        raise LookupError(f"model {name} has no version: {err}") from None
    try:
        record = storage.get_json(f"{version_prefix(name, version)}/version.json")
    except MissingKey:
        raise LookupError(f"model {name} has no version {version}") from None
    if record.get("retired"):
        raise LookupError(f"model {name} version {version} was retired by erasure {record['retired']['erasure']} "
                          "(it held a person erased since): it cannot be loaded or made current")
    return record


def list_versions(storage: Storage, name: str) -> list[dict]:
    """Every complete version of a model, oldest first (to the second: ids made within one second
    follow their random part)."""
    prefix = f"models/{check_model_name(name)}/versions/"
    versions = [storage.get_json(key) for key in storage.list(prefix) if key.endswith("/version.json")]
    return sorted(versions, key=lambda v: (v.get("created_at", ""), v["version"]))


def list_models(storage: Storage) -> list[str]:
    names = {key.split("/")[1] for key in storage.list("models/") if key.endswith("/version.json")}
    return sorted(names)


def current_version(storage: Storage, name: str) -> str | None:
    return _read_pointer(storage, name)[1].get("version")


def current_pointer(storage: Storage, name: str) -> dict:
    """The current pointer record: version, history (earlier current versions, oldest first) and
    updated_at; empty when the model has none."""
    return _read_pointer(storage, name)[1]


def set_current(storage: Storage, name: str, version: str, expected: str | None | _AnyVersion = ANY) -> dict:
    """Point `current` at an existing version (promotion), remembering the one it replaces; returns
    the pointer record.

    With `expected` (a version, or None for "no current version yet"), the change happens only if
    that is still the current version, else PointerMoved. Without it, a change lost to another
    writer is made again on top of theirs, so no history is lost.
    """
    get_version(storage, name, version)

    def change(pointer: dict) -> dict | None:
        if expected is not ANY and pointer.get("version") != expected:
            raise PointerMoved(f"model {name}: the current version is {pointer.get('version')}, "
                               f"not {expected} as expected")
        if pointer.get("version") == version:
            return None  # already current: nothing to write
        history = pointer.get("history", [])
        if pointer.get("version"):
            history = history + [pointer["version"]]
        return {"version": version, "history": history}

    return _change_pointer(storage, name, change)


def roll_back(storage: Storage, name: str, expected: str | None | _AnyVersion = ANY) -> dict:
    """Make the version that was current before the present one current again; with `expected`,
    only if that is still the present one (else PointerMoved)."""

    def change(pointer: dict) -> dict:
        if expected is not ANY and pointer.get("version") != expected:
            raise PointerMoved(f"model {name}: the current version is {pointer.get('version')}, "
                               f"not {expected} as expected")
        history = [version for version in pointer.get("history", []) if not _retired(storage, name, version)]
        if not history:
            raise LookupError(f"model {name} has no earlier current version to roll back to (that was not "
                              "retired by an erasure)")
        return {"version": history[-1], "history": history[:-1]}

    return _change_pointer(storage, name, change)


def _retired(storage: Storage, name: str, version: str) -> bool:
    try:
        return bool(storage.get_json(f"{version_prefix(name, version)}/version.json").get("retired"))
    except MissingKey:
        return True  # no longer there: nothing to roll back to


def _pointer_prefix(name: str) -> str:
    return f"models/{check_model_name(name)}/pointer/"


def _read_pointer(storage: Storage, name: str) -> tuple[int, dict]:
    """(number, record) of the current pointer: the highest numbered record; (0, current.json's
    record or {}) in a store that has none yet."""
    prefix = _pointer_prefix(name)
    numbers = [int(match.group(1)) for key in storage.list(prefix)
               if (match := POINTER_RECORD.match(key[len(prefix):]))]
    if numbers:
        number = max(numbers)
        return number, storage.get_json(f"{prefix}{number:09d}.json")
    try:
        return 0, storage.get_json(f"models/{check_model_name(name)}/current.json")
    except MissingKey:
        return 0, {}


def _change_pointer(storage: Storage, name: str, change) -> dict:
    """Compare-and-swap: read the pointer, let change() make the next record (None: keep it), write
    it as the next number only if nobody wrote that number first; else read again and retry."""
    for _ in range(POINTER_ATTEMPTS):
        number, pointer = _read_pointer(storage, name)
        record = change(pointer)
        if record is None:
            return pointer
        record = {**record, "updated_at": _now()}
        data = json.dumps(record, indent=2, sort_keys=True).encode()
        if storage.put_new(f"{_pointer_prefix(name)}{number + 1:09d}.json", data):
            return record
    raise PointerMoved(f"model {name}: the current pointer changed {POINTER_ATTEMPTS} times while "
                       "this change was being made; try again")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def resolve_version(storage: Storage, name: str, version: str | None = None) -> str:
    """The version to use: the one asked for if it exists, else the current one."""
    if version:
        get_version(storage, name, version)
        return version
    current = current_version(storage, name)
    if current is None:
        raise LookupError(f"model {name} has no current version: train it first")
    return current

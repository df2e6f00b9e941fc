"""Model registry in storage: immutable versions under a versioned prefix, and a `current` pointer.

Layout: ``models/<name>/versions/<version>/...`` holds a version's files; its ``version.json`` is
written last and only if absent, so a version exists once complete and never changes afterwards.
``models/<name>/current.json`` names the current version.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime

from pipeline.storage import MissingKey, Storage

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class VersionExists(Exception):
    """A model version with this id was already written."""


def check_model_name(name: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise ValueError(f"invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def version_prefix(name: str, version: str) -> str:
    return f"models/{check_model_name(name)}/versions/{version}"


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
    try:
        return storage.get_json(f"{version_prefix(name, version)}/version.json")
    except MissingKey:
        raise LookupError(f"model {name} has no version {version}") from None


def list_versions(storage: Storage, name: str) -> list[dict]:
    """Every complete version of a model, oldest first."""
    prefix = f"models/{check_model_name(name)}/versions/"
    return [storage.get_json(key) for key in storage.list(prefix) if key.endswith("/version.json")]


def list_models(storage: Storage) -> list[str]:
    names = {key.split("/")[1] for key in storage.list("models/") if key.endswith("/version.json")}
    return sorted(names)


def current_version(storage: Storage, name: str) -> str | None:
    return _pointer(storage, name).get("version")


def set_current(storage: Storage, name: str, version: str) -> dict:
    """Point `current` at an existing version (promotion), remembering the one it replaces."""
    get_version(storage, name, version)
    pointer = _pointer(storage, name)
    history = pointer.get("history", [])
    if pointer.get("version") and pointer["version"] != version:
        history = history + [pointer["version"]]
    pointer = {"version": version, "history": history, "updated_at": _now()}
    storage.put_json(f"models/{check_model_name(name)}/current.json", pointer)
    return pointer


def roll_back(storage: Storage, name: str) -> dict:
    """Make the version that was current before the present one current again."""
    pointer = _pointer(storage, name)
    if not pointer.get("history"):
        raise LookupError(f"model {name} has no earlier current version to roll back to")
    previous = pointer["history"][-1]
    pointer = {"version": previous, "history": pointer["history"][:-1], "updated_at": _now()}
    storage.put_json(f"models/{check_model_name(name)}/current.json", pointer)
    return pointer


def _pointer(storage: Storage, name: str) -> dict:
    try:
        return storage.get_json(f"models/{check_model_name(name)}/current.json")
    except MissingKey:
        return {}


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

"""Labelled datasets: manifests of (photo key, person), their hash, and stratified splits."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from pipeline.storage import Storage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Item:
    key: str
    label: str


def is_image_key(key: str) -> bool:
    return key.lower().endswith(IMAGE_SUFFIXES)


def manifest_from_prefix(storage: Storage, prefix: str) -> list[Item]:
    """One folder per person under prefix: ``prefix/Person_Name/photo.jpg`` -> Item(key, 'Person_Name')."""
    prefix = prefix.rstrip("/") + "/"
    items = []
    for key in storage.list(prefix):
        parts = key[len(prefix):].split("/")
        if len(parts) == 2 and is_image_key(key):
            items.append(Item(key, parts[0]))
    if not items:
        raise ValueError(f"no labelled photos under {prefix!r}: expected {prefix}<person>/<photo>.jpg")
    return items


def read_manifest(storage: Storage, key: str) -> list[Item]:
    """A JSON Lines manifest: one {"key": ..., "label": ...} object per line."""
    items = []
    for number, line in enumerate(storage.get(key).decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            items.append(Item(str(record["key"]), str(record["label"])))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{key} line {number}: expected {{\"key\": ..., \"label\": ...}}: {err}") from None
    if not items:
        raise ValueError(f"manifest {key} lists no photos")
    return items


def load_items(storage: Storage, prefix: str | None = None, manifest: str | None = None) -> list[Item]:
    """Labelled photos from a JSONL manifest if given, else from a prefix with one folder per person."""
    if manifest:
        return read_manifest(storage, manifest)
    if prefix:
        return manifest_from_prefix(storage, prefix)
    raise ValueError("give a dataset prefix or a manifest")


def manifest_jsonl(items: list[Item]) -> bytes:
    lines = (json.dumps({"key": i.key, "label": i.label}) + "\n" for i in sorted(items, key=lambda i: i.key))
    return "".join(lines).encode()


def manifest_hash(items: list[Item]) -> str:
    """A hash that changes when any photo key or label changes."""
    return hashlib.sha256(manifest_jsonl(items)).hexdigest()


def stratified_split(items: list[Item], fraction: float, seed: int = 0) -> tuple[list[Item], list[Item], list[str]]:
    """Keep aside about `fraction` of each person's photos (at least one).

    Returns (kept, set_aside, skipped_people); a person with fewer than two photos cannot be in
    both parts and is skipped.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Item]] = {}
    for item in sorted(items, key=lambda i: i.key):
        by_label.setdefault(item.label, []).append(item)
    kept, aside, skipped = [], [], []
    for label in sorted(by_label):
        group = by_label[label]
        if len(group) < 2:
            skipped.append(label)
            continue
        order = rng.permutation(len(group))
        count = min(len(group) - 1, max(1, round(fraction * len(group))))
        aside.extend(group[i] for i in order[:count])
        kept.extend(group[i] for i in order[count:])
    return kept, aside, skipped

"""Labelled datasets: manifests of (photo key, person), their hash, and stratified splits."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.storage import Storage

# Formats Pillow names but cannot decode by itself: stubs for scientific data, and EPS (needs Ghostscript).
_NOT_PHOTOS = {"BUFR", "GRIB", "HDF5", "EPS"}


def _decoder_suffixes() -> tuple[str, ...]:
    """Every file suffix of a format Pillow (the decoder) can read, .pgm and .ppm included."""
    Image.init()
    return tuple(sorted(suffix for suffix, name in Image.registered_extensions().items()
                        if name in Image.OPEN and name not in _NOT_PHOTOS))


IMAGE_SUFFIXES = _decoder_suffixes()


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
    """A labelled manifest: one photo per line, as JSON {"key": ..., "label": ...} or as a plain key
    whose label is its folder (``people/Ada/1.jpg`` is Ada), as with a prefix."""
    items = []
    for number, line in _manifest_lines(storage, key):
        record = _manifest_record(key, number, line)
        label = record.get("label")
        if label is None:
            parts = record["key"].split("/")
            if len(parts) < 2:
                raise ValueError(f"{key} line {number}: no label: give {{\"key\": ..., \"label\": ...}} "
                                 "or a key inside a folder named for the person")
            label = parts[-2]
        items.append(Item(record["key"], str(label)))
    if not items:
        raise ValueError(f"manifest {key} lists no photos")
    return items


def read_key_list(storage: Storage, key: str) -> list[str]:
    """The photo keys of an unlabelled manifest: one per line, as a plain key or as JSON with a "key"
    (so a training manifest can be recognised as it is)."""
    return [_manifest_record(key, number, line)["key"] for number, line in _manifest_lines(storage, key)]


def iter_key_list(storage: Storage, key: str) -> Iterator[str]:
    """read_key_list as the manifest is read: for a manifest too large to hold whole."""
    for number, line in _manifest_lines(storage, key):
        yield _manifest_record(key, number, line)["key"]


def _manifest_lines(storage: Storage, key: str) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(storage.read_lines(key), start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ValueError(f"manifest {key} is not UTF-8 text (line {number})") from None
        if line:
            yield number, line


def _manifest_record(key: str, number: int, line: str) -> dict:
    """{"key": ..., maybe "label": ...} from one manifest line, JSON or a plain key."""
    if not line.startswith("{"):
        return {"key": line}
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{key} line {number}: not valid JSON: {err}") from None
    if not isinstance(record.get("key"), str):
        raise ValueError(f"{key} line {number}: expected a \"key\" string")
    return record


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


@dataclass
class Split:
    """A labelled dataset split three ways, and the people who could not be in every part."""

    training: list[Item]  # what the model is fitted on
    validation: list[Item]  # what it is tuned on: early stopping, the unknown threshold
    test: list[Item]  # what every reported figure is measured on: nothing is fitted or tuned on it
    only_in_training: list[str]  # people with one photo: learnt, but not measured
    not_in_validation: list[str]  # people with two photos: one to learn from, one to measure on
    validation_fraction: float
    test_fraction: float

    def describe(self) -> str:
        """How the split was made, in words, for the report."""
        return (f"each person's photos ordered by a hash of their key: the first {self.test_fraction:.0%} to the "
                f"test split, the next {self.validation_fraction:.0%} to validation, the rest to training; at least "
                f"one photo in each part for a person with three or more; for a person with two, one in training "
                f"and one in test ({len(self.not_in_validation)} people); for a person with one, that one in "
                f"training, so they are not measured ({len(self.only_in_training)} people)")


def three_way_split(items: list[Item], validation_fraction: float, test_fraction: float, seed: int = 0) -> Split:
    """Split each person's photos into training, validation and test, about the given shares of each
    (at least one photo in each part while the person has three or more).

    A person with two photos is trained on one and tested on the other: validation only tunes early
    stopping and the unknown threshold, which the other people's photos still do, while the person
    would otherwise go unmeasured. A person with one photo is trained on and left out of the figures.

    Photos are ordered by a hash of (seed, key), not by a random permutation: the order of a person's
    photos stays the same when photos are added, so a model retrained on a grown dataset is tested on
    photos the version before it was tested or validated on, or new ones, not on photos it was
    fitted on; the two can then be compared on photos neither was fitted on.
    """
    if not (0 < validation_fraction < 1 and 0 < test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise ValueError(f"validation and test fractions must each be between 0 and 1 and leave some photos to "
                         f"train on, got {validation_fraction} and {test_fraction}")
    by_label: dict[str, list[Item]] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    split = Split([], [], [], [], [], validation_fraction, test_fraction)
    for label in sorted(by_label):
        group = sorted(set(by_label[label]), key=lambda item: hashlib.sha256(f"{seed}:{item.key}".encode()).digest())
        n = len(group)
        if n == 1:
            split.only_in_training.append(label)
            test = validation = 0
        elif n == 2:
            split.not_in_validation.append(label)
            test, validation = 1, 0
        else:
            test = min(max(1, round(test_fraction * n)), n - 2)
            validation = min(max(1, round(validation_fraction * n)), n - 1 - test)
        split.test.extend(group[:test])
        split.validation.extend(group[test:test + validation])
        split.training.extend(group[test + validation:])
    return split

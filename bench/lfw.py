"""LFW for the benchmarks: the photos of the people with enough of them, and the verification pairs.

pairs.txt says which two photos, same person or not, and in which fold. The file starts with
"FOLDS PER_FOLD" (10 300 for the standard protocol); then each fold lists
PER_FOLD matched pairs ("name n1 n2") followed by PER_FOLD mismatched pairs ("name1 n1 name2 n2").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.dataset import Item
from pipeline.storage import Storage


def lfw_items(lfw_dir: Path, min_photos: int) -> list[Item]:
    """The photos of every LFW person with at least min_photos of them, keyed relative to lfw_dir."""
    items = []
    for person in sorted(p for p in lfw_dir.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.jpg"))
        if len(photos) >= min_photos:
            items.extend(Item(f"{person.name}/{photo.name}", person.name) for photo in photos)
    return items


@dataclass(frozen=True)
class Pair:
    first: str  # photo path relative to the LFW folder, e.g. "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    second: str
    same: bool  # True for a matched pair (same person)
    fold: int  # 0-based


def photo_path(name: str, number: int) -> str:
    """The relative path of a person's photo number `number` (1-based, as pairs.txt counts)."""
    return f"{name}/{name}_{number:04d}.jpg"


def read_pairs(path: str | Path) -> list[Pair]:
    """Every pair of pairs.txt, in file order; raises ValueError when the file breaks the format."""
    lines = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    folds, per_fold = (int(v) for v in lines[0])
    rows = lines[1:]
    if len(rows) != folds * 2 * per_fold:
        raise ValueError(f"{path}: header announces {folds} folds of 2 x {per_fold} pairs, found {len(rows)} lines")
    pairs = []
    for index, row in enumerate(rows):
        fold, position = divmod(index, 2 * per_fold)
        same = position < per_fold
        if same and len(row) == 3:
            name, first, second = row
            pairs.append(Pair(photo_path(name, int(first)), photo_path(name, int(second)), True, fold))
        elif not same and len(row) == 4:
            name1, first, name2, second = row
            pairs.append(Pair(photo_path(name1, int(first)), photo_path(name2, int(second)), False, fold))
        else:
            kind = "matched" if same else "mismatched"
            raise ValueError(f"{path}: line {index + 2} should be a {kind} pair, got {' '.join(row)!r}")
    return pairs


def upload_photos(storage: Storage, lfw_dir: Path, people: Sequence[str], prefix: str, first: int, last: int,
                  by_person: bool = True) -> dict[str, str]:
    """Copy each person's LFW photos number first..last-1 into storage, under <prefix>/<person>/<photo>
    (by_person) or <prefix>/<photo>; returns key -> person."""
    keys = {}
    for person in people:
        for path in sorted((lfw_dir / person).glob("*.jpg"))[first:last]:
            key = f"{prefix}/{person}/{path.name}" if by_person else f"{prefix}/{path.name}"
            storage.put(key, path.read_bytes())
            keys[key] = person
    return keys

"""The three-way split of a labelled dataset: every person in every part they can be in, nothing in
two parts, and a split that a grown dataset keeps."""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.dataset import Item, three_way_split


def photos(counts: dict[str, int], start: int = 0) -> list[Item]:
    return [Item(f"people/{person}/{i:04d}.jpg", person)
            for person, n in counts.items() for i in range(start, start + n)]


def per_person(items: list[Item]) -> dict[str, int]:
    return dict(Counter(item.label for item in items))


def test_each_person_is_in_every_part_their_photos_allow_and_no_photo_is_in_two():
    items = photos({"once": 1, "twice": 2, "thrice": 3, "ten": 10, "fifty": 50})
    split = three_way_split(items, validation_fraction=0.2, test_fraction=0.2)

    assert per_person(split.test) == {"twice": 1, "thrice": 1, "ten": 2, "fifty": 10}
    assert per_person(split.validation) == {"thrice": 1, "ten": 2, "fifty": 10}
    assert per_person(split.training) == {"once": 1, "twice": 1, "thrice": 1, "ten": 6, "fifty": 30}
    keys = [item.key for item in split.training + split.validation + split.test]
    assert sorted(keys) == sorted(item.key for item in items)  # each photo exactly once
    assert split.only_in_training == ["once"] and split.not_in_validation == ["twice"]
    assert "first 20% to the test split" in split.describe() and "(1 people)" in split.describe()


def test_the_split_does_not_depend_on_the_order_photos_are_listed_in():
    items = photos({"a": 12, "b": 7})
    forwards, backwards = three_way_split(items, 0.2, 0.2), three_way_split(items[::-1], 0.2, 0.2)
    for part in ("training", "validation", "test"):
        assert sorted(getattr(forwards, part), key=str) == sorted(getattr(backwards, part), key=str)
    assert three_way_split(items, 0.2, 0.2, seed=1).test != forwards.test


def test_a_grown_dataset_never_tests_on_a_photo_the_smaller_one_trained_on():
    before = three_way_split(photos({"a": 10, "b": 20, "c": 30}), 0.2, 0.2)
    grown = three_way_split(photos({"a": 10, "b": 20, "c": 30}) + photos({"a": 4, "b": 5, "c": 6}, start=100),
                            0.2, 0.2)
    assert not set(grown.test) & set(before.training)
    assert len(set(grown.test) & set(before.test)) >= len(before.test) - 3  # mostly the same photos


@pytest.mark.parametrize("validation, test", [(0, 0.2), (0.2, 1.0), (0.5, 0.5), (-0.1, 0.2)])
def test_fractions_that_leave_nothing_to_train_on_are_refused_naming_them(validation, test):
    with pytest.raises(ValueError, match=f"got {validation} and {test}"):
        three_way_split(photos({"a": 10}), validation, test)

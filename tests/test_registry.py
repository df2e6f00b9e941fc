"""The model registry's `current` pointer is a compare-and-swap on numbered, immutable records, so
concurrent promotes lose no history, and a change made on a stale view is refused. Version ids are
checked before storage is touched. On local disk and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pipeline import registry
from pipeline.storage import LocalStorage, Storage

S3 = pytest.param("s3", marks=pytest.mark.system)  # a real SeaweedFS: the system tier

MODEL = "faces"


@pytest.fixture(params=["local", S3])
def storage(request, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    return request.getfixturevalue("s3_storage")


def publish(storage: Storage, count: int) -> list[str]:
    """count complete (empty) versions of MODEL; their ids, oldest first."""
    versions = []
    for i in range(count):
        version = f"20250101T0000{i:02d}Z-{i:06x}"
        registry.publish_version(storage, MODEL, version, {}, {"n": i})
        versions.append(version)
    return versions


def run_together(work: list) -> list:
    """Run each callable on its own thread, released at the same moment; their results (or exceptions)."""
    start = threading.Barrier(len(work))
    results: list = [None] * len(work)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = work[i]()
        except Exception as err:  # noqa: BLE001 - handed back to the test to look at
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_concurrent_promotes_each_take_effect_and_keep_every_history_entry(storage: Storage):
    first, *others = publish(storage, 7)
    registry.set_current(storage, MODEL, first)
    results = run_together([lambda v=v: registry.set_current(storage, MODEL, v) for v in others])
    assert not [r for r in results if isinstance(r, Exception)], results

    pointer = registry.current_pointer(storage, MODEL)
    # Every promote happened once, in some order: the current version and its history hold them all.
    assert sorted(pointer["history"] + [pointer["version"]]) == sorted([first, *others])
    assert pointer["history"][0] == first
    # A roll back walks the history back one step at a time.
    rolled = registry.roll_back(storage, MODEL)
    assert rolled["version"] == pointer["history"][-1]
    assert registry.current_version(storage, MODEL) == pointer["history"][-1]


def test_set_current_with_an_expected_version_refuses_when_another_is_current(storage: Storage):
    a, b, c = publish(storage, 3)
    registry.set_current(storage, MODEL, a, expected=None)
    with pytest.raises(registry.PointerMoved, match=f"the current version is {a}, not None"):
        registry.set_current(storage, MODEL, b, expected=None)
    registry.set_current(storage, MODEL, b, expected=a)
    with pytest.raises(registry.PointerMoved, match=f"the current version is {b}, not {a}"):
        registry.set_current(storage, MODEL, c, expected=a)
    with pytest.raises(registry.PointerMoved):
        registry.roll_back(storage, MODEL, expected=a)
    assert registry.current_pointer(storage, MODEL)["version"] == b
    assert registry.roll_back(storage, MODEL, expected=b)["version"] == a


def test_of_two_changes_made_from_the_same_view_exactly_one_wins(storage: Storage):
    base, left, right = publish(storage, 3)
    registry.set_current(storage, MODEL, base)
    results = run_together([lambda v=v: registry.set_current(storage, MODEL, v, expected=base)
                            for v in (left, right)])
    lost = [r for r in results if isinstance(r, registry.PointerMoved)]
    won = [r for r in results if isinstance(r, dict)]
    assert len(lost) == 1 and len(won) == 1, results
    assert registry.current_version(storage, MODEL) == won[0]["version"]
    assert registry.current_pointer(storage, MODEL)["history"] == [base]


def test_each_change_is_a_new_numbered_record_and_none_is_rewritten(storage: Storage):
    a, b = publish(storage, 2)
    registry.set_current(storage, MODEL, a)
    registry.set_current(storage, MODEL, b)
    registry.set_current(storage, MODEL, b)  # already current: nothing written
    registry.roll_back(storage, MODEL)
    keys = sorted(storage.list(f"models/{MODEL}/pointer/"))
    assert keys == [f"models/{MODEL}/pointer/{n:09d}.json" for n in (1, 2, 3)]
    assert [storage.get_json(k)["version"] for k in keys] == [a, b, a]


def test_a_store_with_the_old_current_json_is_read_and_carried_over_on_the_first_change(storage: Storage):
    a, b, c = publish(storage, 3)
    storage.put_json(f"models/{MODEL}/current.json", {"version": b, "history": [a]})
    assert registry.current_version(storage, MODEL) == b
    pointer = registry.set_current(storage, MODEL, c, expected=b)
    assert pointer["history"] == [a, b]
    assert registry.current_version(storage, MODEL) == c


@pytest.mark.parametrize("version", ["x" * 5000, "../../etc", "nope", "20250101T000000Z-abc", ""])
def test_an_id_that_could_not_be_a_version_is_not_found_without_asking_storage(tmp_path: Path, version: str):
    # A store under a path that is a file: any read from it would fail with an OSError, not LookupError.
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"")
    storage = LocalStorage(tmp_path / "store")
    storage.root = blocker
    with pytest.raises(LookupError) as missing:
        registry.get_version(storage, MODEL, version)
    assert len(str(missing.value)) < 200
    with pytest.raises(LookupError):
        registry.set_current(storage, MODEL, version)
    with pytest.raises(ValueError, match="invalid model version"):
        registry.version_prefix(MODEL, version)


def test_new_version_ids_pass_the_check():
    assert registry.check_version(registry.new_version_id())


def test_an_unknown_but_well_formed_version_is_not_found(storage: Storage):
    with pytest.raises(LookupError, match=f"model {MODEL} has no version 20250101T000000Z-abcdef"):
        registry.get_version(storage, MODEL, "20250101T000000Z-abcdef")

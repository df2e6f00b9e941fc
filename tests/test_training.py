"""Training and enrolment at the pipeline level, on real LFW photos: every reported figure measured
on a test split nothing was fitted or tuned on, with its 95% interval; what becomes current (never a
near-chance model, never one far worse than the current version, unasked), decided on photos neither
version was fitted or tuned on; where a cancel can stop the work (within an epoch; never after
"publishing"), what the version says about missing and unreadable photos, enrolment versions
measured leave-one-photo-out with the base's figures marked inherited, and concurrent enrolments
that both keep their people, on local disk and S3."""

from __future__ import annotations

import io
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import registry
from pipeline.dataset import Item, read_key_list, read_manifest
from pipeline.decode import MAX_BYTES as MAX_PHOTO_BYTES
from pipeline.enroll import enroll_people
from pipeline.models import load_model_files
from pipeline.models.centroid import CentroidModel
from pipeline.storage import LocalStorage, Storage
from pipeline.train import GUARD_MARGIN, TrainingParams, decide_promotion, extract_faces, train_model

S3 = pytest.param("s3", marks=pytest.mark.system)  # a real SeaweedFS: the system tier

PEOPLE = ["Ariel_Sharon", "Colin_Powell", "Donald_Rumsfeld", "Gerhard_Schroeder"]
PHOTOS = 10  # each: 5 to train on, 2 to validate (tune) on, 3 to test on
NEWCOMERS = ["Hugo_Chavez", "Serena_Williams"]
# A learning rate this small leaves the head as it was initialised: it names people at chance.
AT_CHANCE = {"epochs": 1, "learning_rate": 1e-6}


class Cancelled(Exception):
    pass


def upload(storage: Storage, lfw_dir: Path, people: list[str], count: int, start: int = 0) -> list[Item]:
    items = []
    for person in people:
        for path in sorted((lfw_dir / person).glob("*.jpg"))[start:start + count]:
            key = f"lfw/{person}/{path.name}"
            storage.put(key, path.read_bytes())
            items.append(Item(key, person))
    return items


def grey_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), (128, 128, 128)).save(buffer, "PNG")
    return buffer.getvalue()


def versions_written(storage: Storage, model: str) -> list[str]:
    return sorted(storage.list(f"models/{model}/"))


@pytest.fixture(scope="module")
def store(tmp_path_factory, lfw_dir: Path) -> tuple[LocalStorage, list[Item]]:
    """LFW photos of PEOPLE in local storage (a copy in a temporary folder), and their items."""
    storage = LocalStorage(tmp_path_factory.mktemp("training") / "store")
    return storage, upload(storage, lfw_dir, PEOPLE, PHOTOS)


def train(storage, face_pipeline, items, model, model_params=None, model_type="embedding", seed=0, **kwargs) -> dict:
    params = TrainingParams(model_type=model_type, model_params=model_params or {}, validation_fraction=0.2,
                            test_fraction=0.3, seed=seed)
    return train_model(storage, face_pipeline, items, model, params, **kwargs)


def keys_in(storage: Storage, key: str) -> set[str]:
    return set(read_key_list(storage, key))


def wilson(successes: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval, written out (Wilson 1927), to check the library's against."""
    z, p = 1.959964, successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_a_near_chance_model_or_one_far_worse_than_the_current_never_becomes_current_unasked(store, face_pipeline):
    storage, items = store
    model = "guarded"

    # With no current version, a model at chance is still not made current.
    chance = train(storage, face_pipeline, items, model, AT_CHANCE)
    promotion = chance["promotion"]
    assert promotion["promote"] is False
    assert promotion["candidate_accuracy"] < promotion["minimum_accuracy"] == pytest.approx(0.625)
    assert "near chance" in promotion["reason"] and f"{promotion['candidate_accuracy']:.4f}" in promotion["reason"]
    assert registry.current_version(storage, model) is None
    assert chance["version"] in [v["version"] for v in registry.list_versions(storage, model)]

    # A good model becomes current; a chance model after it does not, and says what it compared.
    good = train(storage, face_pipeline, items, model)
    assert good["promotion"]["promote"] is True and good["metrics"]["accuracy"] >= 0.9
    assert registry.current_version(storage, model) == good["version"]
    again = train(storage, face_pipeline, items, model, AT_CHANCE)["promotion"]
    assert again["promote"] is False and again["current_version"] == good["version"]
    assert again["current_accuracy"] == good["metrics"]["accuracy"]
    assert registry.current_version(storage, model) == good["version"]

    # Above chance but worse than the current version by more than the guard, without a margin given.
    worse = good["metrics"]["accuracy"] - GUARD_MARGIN - 0.1
    decision = decide_promotion(worse, good["version"], good["metrics"]["accuracy"], 12, None, people=len(PEOPLE))
    assert decision["promote"] is False
    assert "worse by more than the default guard margin 0.05" in decision["reason"]
    assert decide_promotion(worse, good["version"], good["metrics"]["accuracy"], 12, 0.5, people=len(PEOPLE))["promote"]

    # An explicit promote still can.
    registry.set_current(storage, model, chance["version"])
    assert registry.current_version(storage, model) == chance["version"]


def test_every_reported_figure_is_measured_on_a_test_split_that_nothing_was_fitted_or_tuned_on(store, face_pipeline):
    storage, items = store
    record = train(storage, face_pipeline, items, "measured")
    prefix = registry.version_prefix("measured", record["version"])
    training, validation, test = (keys_in(storage, f"{prefix}/{part}.jsonl") for part in ("training", "validation",
                                                                                          "test"))
    assert not (training & validation or training & test or validation & test)
    assert training | validation | test == {item.key for item in items}
    assert (len(training), len(validation), len(test)) == (5 * len(PEOPLE), 2 * len(PEOPLE), 3 * len(PEOPLE))

    # The report, the version's record and the page all speak of the test split, and say its size.
    report = storage.get_json(record["report_key"])
    assert report["evaluation"]["images"] == record["metrics"]["images"] == report["split"]["test_photos"] == len(test)
    assert [p["support"] for p in report["evaluation"]["per_person"]] == [3] * len(PEOPLE)
    assert record["metrics"]["evaluated_on"] == "test split"
    assert report["evaluated_on"].startswith(f"the test split: {len(test)} photos of {len(PEOPLE)} people")
    assert "hash of their key" in report["split"]["how"]
    page = storage.get(record["report_html_key"]).decode()
    assert f"measured on the test split: {len(test)} photos" in page

    # Its accuracy is the published model's on exactly those photos.
    test_items = read_manifest(storage, f"{prefix}/test.jsonl")
    found, faces = extract_faces(storage, face_pipeline, test_items).of(test_items)
    model = load_model_files(storage, prefix)
    right = sum(p.label == truth for p, truth in zip(model.predict(faces), faces.labels))
    assert record["metrics"]["accuracy"] == report["evaluation"]["accuracy"] == right / len(test_items)


def test_each_accuracy_comes_with_its_95_percent_wilson_interval(store, face_pipeline):
    storage, items = store
    record = train(storage, face_pipeline, items, "intervals", model_type="centroid")
    report = storage.get_json(record["report_key"])
    evaluation, n = report["evaluation"], report["evaluation"]["images"]
    for figure in ("accuracy", "top5_accuracy"):
        low, high = evaluation[f"{figure}_interval"]
        assert (low, high) == pytest.approx(wilson(round(evaluation[figure] * n), n), abs=1e-6)
        assert low <= evaluation[figure] <= high and high - low > 0.05  # 12 photos: a wide interval
        assert record["metrics"][f"{figure}_interval"] == [low, high]
    assert record["metrics"]["interval_method"] == "95% Wilson score interval"
    promotion = record["promotion"]
    assert promotion["candidate_accuracy_interval"] == pytest.approx(
        wilson(round(promotion["candidate_accuracy"] * promotion["photos"]), promotion["photos"]), abs=1e-6)
    low, high = evaluation["accuracy_interval"]
    page = storage.get(record["report_html_key"]).decode()
    assert f"95% interval {low:.1%} to {high:.1%}" in page


def test_promotion_is_decided_on_test_photos_the_current_version_was_not_fitted_or_tuned_on(store, face_pipeline):
    storage, items = store
    first = train(storage, face_pipeline, items, "fair", model_type="centroid")
    # Another seed splits the same photos differently: some of its test photos trained the first version.
    second = train(storage, face_pipeline, items, "fair", model_type="centroid", seed=1)
    decision = second["promotion"]
    prefix = registry.version_prefix("fair", first["version"])
    seen_by_first = keys_in(storage, f"{prefix}/training.jsonl") | keys_in(storage, f"{prefix}/validation.jsonl")
    second_prefix = registry.version_prefix("fair", second["version"])
    second_test = keys_in(storage, f"{second_prefix}/test.jsonl")
    used = keys_in(storage, decision["photos_key"])

    assert decision["photos_source"] == "this version's test split" and decision["photos_offered"] == len(second_test)
    assert used == second_test - seen_by_first and 0 < decision["photos"] == len(used) < len(second_test)
    assert decision["photos_left_out"] == {"fitted_or_tuned_by_current": len(second_test & seen_by_first),
                                           "fitted_or_tuned_by_this_version": 0}
    assert decision["current_version"] == first["version"]
    # Both versions are measured there: the current one's accuracy is its own on exactly those photos.
    used_items = [item for item in items if item.key in used]
    found, faces = extract_faces(storage, face_pipeline, used_items).of(used_items)
    first_model = load_model_files(storage, prefix)
    right = sum(p.label == truth for p, truth in zip(first_model.predict(faces), faces.labels))
    assert decision["current_accuracy"] == right / len(used_items)
    assert f"on the same {len(used)} photos, which neither was fitted or tuned on" in decision["reason"]
    assert "intervals overlap" in decision["reason"]  # a handful of photos: within noise of each other


def test_a_fixed_validation_set_decides_promotion_without_the_photos_either_version_was_fitted_on(
        store, face_pipeline, lfw_dir):
    storage, items = store
    first = train(storage, face_pipeline, items, "fixed", model_type="centroid")
    fitted = read_manifest(storage, f"{registry.version_prefix('fixed', first['version'])}/training.jsonl")
    fresh = upload(storage, lfw_dir, PEOPLE, 2, start=PHOTOS)  # photos no version has seen
    second = train(storage, face_pipeline, items, "fixed", model_type="centroid", promotion_items=fitted[:3] + fresh)
    decision = second["promotion"]
    assert decision["photos_source"] == "the validation manifest" and decision["photos_offered"] == 3 + len(fresh)
    # The same photos and seed: both versions were fitted on the first three.
    assert decision["photos_left_out"] == {"fitted_or_tuned_by_current": 3, "fitted_or_tuned_by_this_version": 3}
    assert keys_in(storage, decision["photos_key"]) == {item.key for item in fresh}
    assert decision["photos"] == len(fresh) and decision["promote"] is True
    assert decision["candidate_accuracy"] == decision["current_accuracy"]  # the same centroids, the same answers


def test_publishing_is_announced_once_just_before_the_first_write(store, face_pipeline):
    storage, items = store
    stages, written_before_publishing = [], []

    def on_progress(stage: str, done: int, total: int) -> None:
        stages.append(stage)
        if stage == "publishing":
            written_before_publishing.extend(storage.list("models/announced/"))

    record = train(storage, face_pipeline, items, "announced", model_type="centroid", on_progress=on_progress)
    assert stages.count("publishing") == 1 and stages[-1] == "publishing"
    assert written_before_publishing == []
    assert stages.count("extracting faces") >= 1 and "fitting" in stages and "writing the report" in stages
    assert registry.current_version(storage, "announced") == record["version"]
    assert record["photos"] == {"total": len(items), "missing": 0, "unreadable": 0, "no_face": 0, "used": len(items),
                                "low_quality": 0}


def test_a_cancel_during_fitting_stops_the_training_within_an_epoch_and_writes_nothing(store, face_pipeline):
    storage, items = store
    epochs_seen = []

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage == "fitting" and done > 0:
            epochs_seen.append((done, total))
            if done == 2:
                raise Cancelled

    with pytest.raises(Cancelled):
        train(storage, face_pipeline, items, "cancelled", {"epochs": 50, "patience": 50}, on_progress=on_progress)
    assert epochs_seen == [(1, 50), (2, 50)]
    assert versions_written(storage, "cancelled") == []


def test_a_cancel_at_publishing_writes_nothing(store, face_pipeline):
    storage, items = store

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage == "publishing":
            raise Cancelled

    with pytest.raises(Cancelled):
        train(storage, face_pipeline, items, "late", {"epochs": 2}, on_progress=on_progress)
    assert versions_written(storage, "late") == []


@pytest.mark.parametrize("model_params, named", [
    ({"epochs": -5}, "epochs=-5"), ({"bogus": 1}, "unknown parameter 'bogus'"), ({"epochs": 1e9}, "epochs=")])
def test_training_refuses_bad_model_params_before_reading_a_photo(tmp_path, face_pipeline, model_params, named):
    storage = LocalStorage(tmp_path / "empty")  # no photos: reading one would fail differently
    items = [Item(f"{p}/{i}.jpg", p) for p in ("a", "b") for i in range(3)]
    with pytest.raises(ValueError, match=named):
        train(storage, face_pipeline, items, "refused", model_params)


def test_the_version_counts_missing_unreadable_and_faceless_photos(store, face_pipeline, tmp_path):
    storage, items = store
    storage.put("odd/not-a-photo.jpg", b"this is text, not a JPEG")
    storage.put("odd/grey.png", grey_png())
    extra = [Item("odd/missing-1.jpg", PEOPLE[0]), Item("odd/missing-2.jpg", PEOPLE[1]),
             Item("odd/not-a-photo.jpg", PEOPLE[2]), Item("odd/grey.png", PEOPLE[3])]
    record = train(storage, face_pipeline, items + extra, "counted", model_type="centroid")
    assert record["photos"] == {"total": len(items) + 4, "missing": 2, "unreadable": 1, "no_face": 1,
                                "used": len(items), "low_quality": 0}
    report = storage.get_json(record["report_key"])
    assert report["photos"] == record["photos"]


def test_training_fails_naming_the_counts_when_most_photos_are_missing(store, face_pipeline):
    storage, items = store
    some = items[:2] + items[PHOTOS:PHOTOS + 2]  # two photos of two people
    missing = [Item(f"gone/{i}.jpg", PEOPLE[i % 2]) for i in range(5)]
    with pytest.raises(ValueError, match="5 of 9 photos are missing from storage and 0 unreadable"):
        train(storage, face_pipeline, some + missing, "mostly-missing")
    assert versions_written(storage, "mostly-missing") == []


def test_any_error_in_place_of_a_photos_data_counts_it_unreadable(tmp_path, lfw_dir, face_pipeline):
    storage = LocalStorage(tmp_path / "store")
    items = upload(storage, lfw_dir, PEOPLE[:1], 2)
    with (storage.root / "huge.jpg").open("wb") as huge:  # sparse: larger than storage reads, no disk used
        huge.truncate(MAX_PHOTO_BYTES + 1)
    odd = [Item("huge.jpg", "x"), Item("nothing.jpg", "x"), Item("../outside.jpg", "x")]
    extracted = extract_faces(storage, face_pipeline, items + odd)
    assert extracted.photo_counts() == {"total": 5, "missing": 1, "unreadable": 2, "no_face": 0, "used": 2,
                                        "low_quality": 0}
    assert "object too large" in extracted.errors["huge.jpg"]
    assert "invalid storage key" in extracted.errors["../outside.jpg"]
    assert extracted.errors["nothing.jpg"] == "missing from storage"


# -- enrolment ---------------------------------------------------------------------------------

@pytest.fixture(params=["local", S3])
def gallery(request, tmp_path, lfw_dir, face_pipeline) -> tuple[Storage, dict[str, list[Item]]]:
    """A centroid model `gallery` of two people made current, and each newcomer's photos, in storage."""
    storage = LocalStorage(tmp_path / "store") if request.param == "local" else request.getfixturevalue("s3_storage")
    base = upload(storage, lfw_dir, PEOPLE[:2], 4)
    trained = train_model(storage, face_pipeline, base, "gallery", TrainingParams(model_type="centroid"))
    assert registry.current_version(storage, "gallery") == trained["version"]
    return storage, {person: upload(storage, lfw_dir, [person], 2) for person in NEWCOMERS}


def test_two_concurrent_enrolments_both_keep_their_person(gallery, face_pipeline):
    storage, newcomers = gallery
    base = registry.current_version(storage, "gallery")
    # Both enrolments reach publishing before either writes: both start from the same version.
    both_ready = threading.Barrier(2, timeout=300)
    stages: dict[str, list[str]] = {person: [] for person in newcomers}
    results: dict[str, object] = {}

    def enroll(person: str) -> None:
        def on_progress(stage: str, done: int, total: int) -> None:
            stages[person].append(stage)
            if stage == "publishing":
                both_ready.wait()
        try:
            results[person] = enroll_people(storage, face_pipeline, newcomers[person], "gallery", on_progress)
        except Exception as err:  # noqa: BLE001 - looked at below
            results[person] = err
            both_ready.abort()

    threads = [threading.Thread(target=enroll, args=(person,)) for person in newcomers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert all(isinstance(r, dict) for r in results.values()), results

    current = registry.current_version(storage, "gallery")
    record = registry.get_version(storage, "gallery", current)
    assert record["people"] == len(PEOPLE[:2]) + len(NEWCOMERS)
    assert sorted(p for r in results.values() for p in r["enrolled"]) == sorted(NEWCOMERS)
    # One enrolment was built on the other's version, which was built on the trained base.
    first, second = sorted(results.values(), key=lambda r: r["base_version"] == base)[::-1]
    assert first["base_version"] == base and second["base_version"] == first["version"]
    assert current == second["version"]
    assert registry.current_pointer(storage, "gallery")["history"] == [base, first["version"]]
    for person in NEWCOMERS:
        assert stages[person].count("publishing") == 1 and stages[person][-1] == "publishing"


def test_an_enrolment_cancelled_at_publishing_writes_nothing(tmp_path, lfw_dir, face_pipeline):
    storage = LocalStorage(tmp_path / "store")
    base = upload(storage, lfw_dir, PEOPLE[:2], 4)
    train_model(storage, face_pipeline, base, "gallery", TrainingParams(model_type="centroid"))
    before = versions_written(storage, "gallery")
    newcomer = upload(storage, lfw_dir, NEWCOMERS[:1], 2)

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage == "publishing":
            raise Cancelled

    with pytest.raises(Cancelled):
        enroll_people(storage, face_pipeline, newcomer, "gallery", on_progress)
    assert versions_written(storage, "gallery") == before
    assert np.all([v["people"] == 2 for v in registry.list_versions(storage, "gallery")])


def test_leave_one_out_scores_each_face_against_its_persons_other_faces_only(tmp_path, lfw_dir, face_pipeline):
    storage = LocalStorage(tmp_path / "store")
    items = upload(storage, lfw_dir, PEOPLE[:2], 3) + upload(storage, lfw_dir, NEWCOMERS[:1], 1)
    faces = extract_faces(storage, face_pipeline, items).faces
    model = CentroidModel()
    model.labels_, model.centroids_, model.counts_ = [], np.zeros((0, 128)), []
    model.enroll(faces)
    scores, enrolled = model.leave_one_out_scores(faces), model.class_scores(faces)
    unit = faces.embeddings / np.linalg.norm(faces.embeddings, axis=1, keepdims=True)
    for i, person in enumerate(faces.labels[:6]):
        others = [j for j, label in enumerate(faces.labels) if label == person and j != i]
        centroid = unit[others].mean(axis=0)
        column = model.labels_.index(person)
        assert scores[i, column] == pytest.approx(unit[i] @ centroid / np.linalg.norm(centroid), abs=1e-5)
        assert scores[i, column] < enrolled[i, column]  # its own photo no longer pulls its centroid to it
        rest = [c for c in range(len(model.labels_)) if c != column]
        np.testing.assert_allclose(scores[i, rest], enrolled[i, rest])
    assert np.isnan(scores[6]).all()  # one photo: nothing left to compare it with


def test_an_enrolment_version_is_measured_leave_one_photo_out_and_marks_the_base_figures_inherited(
        tmp_path, lfw_dir, face_pipeline):
    storage = LocalStorage(tmp_path / "store")
    trained = train_model(storage, face_pipeline, upload(storage, lfw_dir, PEOPLE, 6), "gallery",
                          TrainingParams(model_type="centroid"))
    first = enroll_people(storage, face_pipeline, upload(storage, lfw_dir, NEWCOMERS[:1], 5), "gallery")
    metrics = first["metrics"]
    assert metrics["evaluated_on"].startswith("leave-one-photo-out over the enrolled people's photos")
    assert metrics["images"] == 5 and metrics["people_not_evaluated"] == [] and metrics["accuracy"] >= 0.8
    low, high = metrics["accuracy_interval"]
    assert (low, high) == pytest.approx(wilson(round(metrics["accuracy"] * 5), 5), abs=1e-6)
    assert first["inherited_metrics"]["source_version"] == trained["version"]
    assert first["inherited_metrics"]["metrics"] == trained["metrics"]
    assert f"measured by version {trained['version']}" in first["inherited_metrics"]["note"]
    report = storage.get_json(first["report_key"])
    assert report["evaluation"]["images"] == 5 and report["enrolled"] == NEWCOMERS[:1]
    assert [p["person"] for p in report["evaluation"]["per_person"]] == NEWCOMERS[:1]
    page = storage.get(first["report_html_key"]).decode()
    assert "leave one photo out" in page and "Inherited figures" in page and trained["version"] in page
    # What it was fitted on, for a later promotion: the base's training photos and the enrolled ones.
    fitted = keys_in(storage, f"{registry.version_prefix('gallery', first['version'])}/training.jsonl")
    assert fitted == keys_in(storage, f"{registry.version_prefix('gallery', trained['version'])}/training.jsonl") | {
        key for key in storage.list(f"lfw/{NEWCOMERS[0]}/")}

    # On top of an enrolment, the inherited figures are still the trained version's; one photo measures nothing.
    second = enroll_people(storage, face_pipeline, upload(storage, lfw_dir, NEWCOMERS[1:], 1), "gallery")
    assert second["inherited_metrics"]["source_version"] == trained["version"]
    assert second["metrics"]["images"] == 0 and second["metrics"]["accuracy"] is None
    assert second["metrics"]["people_not_evaluated"] == NEWCOMERS[1:]
    assert "Inherited figures" in storage.get(second["report_html_key"]).decode()

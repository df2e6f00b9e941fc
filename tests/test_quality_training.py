"""Training and enrolment with a minimum face quality: the faces below it are left out of fitting and counted;
without one every face is fitted on, as before; the report gives accuracy by quality and by face size."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.dataset import read_key_list
from pipeline.enroll import enroll_people
from pipeline.models import load_model_files
from pipeline.registry import version_prefix
from pipeline.storage import LocalStorage
from pipeline.train import TrainingParams, extract_faces, train_model
from tests.test_training import upload

PEOPLE = ["Ariel_Sharon", "Colin_Powell", "Donald_Rumsfeld", "Gerhard_Schroeder"]
NEWCOMERS = ["Hugo_Chavez", "Serena_Williams"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, lfw_dir, face_pipeline):
    """LFW photos of PEOPLE in local storage, their items, and each photo's face quality score by key."""
    storage = LocalStorage(tmp_path_factory.mktemp("quality-training") / "store")
    items = upload(storage, lfw_dir, PEOPLE, 10)
    extracted = extract_faces(storage, face_pipeline, items)
    return storage, items, {item.key: q.score for item, q in zip(extracted.items, extracted.quality)}


def train(storage, face_pipeline, items, name: str, min_quality: float) -> dict:
    params = TrainingParams(model_type="centroid", validation_fraction=0.2, test_fraction=0.3,
                            min_quality=min_quality)
    return train_model(storage, face_pipeline, items, name, params)


def test_a_minimum_quality_leaves_low_quality_faces_out_of_fitting_and_counts_them(store, face_pipeline):
    storage, items, score = store
    min_quality = float(np.median(list(score.values())))  # about half the faces are below it
    record = train(storage, face_pipeline, items, "picky", min_quality)
    prefix = version_prefix("picky", record["version"])
    training = read_key_list(storage, f"{prefix}/training.jsonl")
    fitted = set(training + read_key_list(storage, f"{prefix}/validation.jsonl"))
    low = {key for key in fitted if score[key] < min_quality}
    assert low, "the minimum should leave some fitted photos out"
    assert record["photos"]["low_quality"] == len(low)
    report = storage.get_json(record["report_key"])
    assert report["photos"] == record["photos"]
    assert report["quality"]["min_quality"] == min_quality and report["quality"]["left_out_of_fitting"] == len(low)
    # The centroids were made from the training photos at or above the minimum only.
    model = load_model_files(storage, prefix)
    assert sum(model.counts_) == sum(score[key] >= min_quality for key in training)


def test_without_a_minimum_every_face_is_fitted_on_and_none_is_counted_low(store, face_pipeline):
    storage, items, _ = store
    record = train(storage, face_pipeline, items, "everyone", 0.0)
    assert record["photos"]["low_quality"] == 0
    prefix = version_prefix("everyone", record["version"])
    model = load_model_files(storage, prefix)
    assert sum(model.counts_) == len(read_key_list(storage, f"{prefix}/training.jsonl"))


def test_the_report_gives_accuracy_by_quality_tercile_face_size_and_verdict(store, face_pipeline):
    storage, items, _ = store
    record = train(storage, face_pipeline, items, "sliced", 0.0)
    report = storage.get_json(record["report_key"])
    by = report["quality"]["by_quality"]
    tested = report["evaluation"]["images"]
    assert by["faces"] == tested  # every test photo here has a face
    for slices in (by["score_terciles"], by["face_size"], list(by["verdicts"].values())):
        assert sum(row["faces"] for row in slices) == tested
        for row in slices:
            low, high = row["accuracy_interval"]
            assert low <= row["accuracy"] <= high
    assert [row["tercile"] for row in by["score_terciles"]] == [1, 2, 3]
    html = storage.get(record["report_html_key"]).decode()
    assert "By face quality" in html and "quality score tercile" in html


def test_an_enrolment_with_a_minimum_quality_enrols_only_the_faces_at_or_above_it(store, face_pipeline, lfw_dir):
    storage, items, _ = store
    train(storage, face_pipeline, items, "gallery", 0.0)
    newcomers = upload(storage, lfw_dir, NEWCOMERS, 6)
    extracted = extract_faces(storage, face_pipeline, newcomers)
    scores = {item.key: quality.score for item, quality in zip(extracted.items, extracted.quality)}
    min_quality = float(np.median(list(scores.values())))
    record = enroll_people(storage, face_pipeline, newcomers, "gallery", min_quality=min_quality)
    low = sum(score < min_quality for score in scores.values())
    assert record["photos"]["low_quality"] == low > 0
    model = load_model_files(storage, version_prefix("gallery", record["version"]))
    enrolled = [model.counts_[model.labels_.index(person)] for person in NEWCOMERS]
    assert sum(enrolled) == len(newcomers) - low


def test_requests_take_a_minimum_quality_between_0_and_1_defaulting_to_0():
    from pydantic import ValidationError

    from workers.schemas import EnrollRequest, TrainingRequest

    for request in (TrainingRequest, EnrollRequest):
        assert request(model="m", dataset_prefix="d").min_quality == 0.0
        assert request(model="m", dataset_prefix="d", min_quality=0.5).min_quality == 0.5
        with pytest.raises(ValidationError):
            request(model="m", dataset_prefix="d", min_quality=1.5)

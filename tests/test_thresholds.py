"""Thresholds at a stated false-accept rate (pipeline.thresholds): the threshold accepts exactly the share
of impostors asked for, an unmeasurable rate is refused with the lowest measurable one named, intervals
widen when comparisons share a person, and a training asked for `far` sets its unknown threshold from the
validation split and reports the rates measured on the test split, with the ROC/DET figure, on real LFW photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.storage import LocalStorage
from pipeline.thresholds import (
    RateNotMeasurable,
    calibration,
    far_threshold,
    rate_from_counts,
    rate_with_interval,
    threshold_for,
)
from pipeline.train import TrainingParams, train_model
from tests.test_training import upload

PEOPLE = ["Ariel_Sharon", "Colin_Powell", "Donald_Rumsfeld", "Gerhard_Schroeder", "George_W_Bush", "Tony_Blair",
          "Hugo_Chavez", "Jean_Chretien", "John_Ashcroft", "Junichiro_Koizumi", "Serena_Williams", "Jacques_Chirac"]


def test_the_threshold_accepts_at_most_the_asked_share_of_impostors():
    impostor = np.random.default_rng(0).normal(size=100_000)
    for far in (1e-1, 1e-2, 1e-3, 1e-4):
        threshold = far_threshold(impostor, far)
        assert np.sum(impostor >= threshold) == int(far * len(impostor))
    with pytest.raises(RateNotMeasurable, match=r"lowest measurable is 1e-05"):
        far_threshold(impostor, 1e-6)


def test_a_calibration_gives_thresholds_between_the_rates_it_kept_and_refuses_lower_ones():
    rng = np.random.default_rng(1)
    genuine, impostor = rng.normal(3, 1, 5_000), rng.normal(0, 1, 200_000)
    record = calibration(genuine, impostor, default=1.5)
    assert record["table"][-1]["far"] >= 1 / len(impostor)
    exact = far_threshold(impostor, 3e-3)
    assert threshold_for(record, 3e-3) == pytest.approx(exact, abs=0.05)  # interpolated between 1e-3 and 5.6e-3
    assert threshold_for(record, 1e-3) == pytest.approx(far_threshold(impostor, 1e-3))
    with pytest.raises(RateNotMeasurable, match="below what the 200,000 validation comparisons measured"):
        threshold_for(record, 1e-7)


def test_comparisons_that_share_a_person_get_a_wider_interval_than_independent_ones():
    rng = np.random.default_rng(2)
    # 50 people, 2,000 comparisons each: a few people look like many others (as in real galleries), so
    # their comparisons are accepted far more often than the rest's.
    people = np.repeat(np.arange(50), 2_000)
    propensity = np.where(np.arange(50) < 5, 0.02, 0.0005)
    accepted = rng.random(len(people)) < propensity[people]
    clustered = rate_with_interval(accepted, people)
    independent = rate_with_interval(accepted)
    assert clustered["rate"] == independent["rate"]
    assert clustered["interval"][0] <= clustered["rate"] <= clustered["interval"][1]
    assert clustered["interval"][1] - clustered["interval"][0] > independent["interval"][1] - independent["interval"][0]
    counted = rate_from_counts(np.bincount(people, accepted), np.bincount(people))
    assert counted["rate"] == pytest.approx(clustered["rate"]) and counted["interval"] == clustered["interval"]


@pytest.fixture(scope="module")
def lfw_store(tmp_path_factory, lfw_dir: Path):
    storage = LocalStorage(tmp_path_factory.mktemp("thresholds") / "store")
    return storage, upload(storage, lfw_dir, PEOPLE, 10)


def test_a_training_asked_for_a_false_accept_rate_sets_its_threshold_on_validation_and_measures_it_on_test(
        lfw_store, face_pipeline):
    storage, items = lfw_store
    params = dict(model_type="centroid", validation_fraction=0.3, test_fraction=0.3)
    default = train_model(storage, face_pipeline, items, "balanced", TrainingParams(**params))
    lenient = train_model(storage, face_pipeline, items, "lenient", TrainingParams(**params, far=0.05))
    strict = train_model(storage, face_pipeline, items, "strict", TrainingParams(**params, far=0.01))

    report = json.loads(storage.get(strict["report_key"]))
    section = report["thresholds"]
    assert section["rule"] == "false-accept rate 0.01 per comparison, set on the validation split"
    # A lower rate asked for is a higher threshold, and lets fewer test impostors through.
    assert section["threshold"] > lenient["metrics"]["threshold"]
    assert strict["metrics"]["test_far"] <= lenient["metrics"]["test_far"]
    assert strict["metrics"]["threshold"] == section["threshold"] != default["metrics"]["threshold"]
    test = section["test"]
    for rate in ("far", "far_per_search", "frr"):
        low, high = test[rate]["interval"]
        assert low <= test[rate]["rate"] <= high
    # Per comparison: each test face against each of the other people; per search: each test face once.
    assert test["far"]["comparisons"] == test["frr"]["comparisons"] * (len(PEOPLE) - 1)
    assert test["far_per_search"]["comparisons"] == test["frr"]["comparisons"]
    assert test["far"]["units"] == len(PEOPLE)  # resampled by the probe's person
    # The version records the face-pair calibration that face indexes created with it match faces at.
    assert strict["face_pairs"]["table"] and strict["face_pairs"]["genuine"] > 0
    html = storage.get(strict["report_html_key"]).decode()
    assert "Thresholds: false accepts and false rejects" in html and "false-accept rate 0.01 per comparison" in html
    assert storage.exists(f"models/strict/versions/{strict['version']}/figures/roc_det.png")
    assert default["metrics"]["threshold_rule"].startswith("balanced accuracy")


def test_a_rate_the_validation_split_cannot_measure_fails_the_training_saying_so(lfw_store, face_pipeline):
    storage, items = lfw_store
    with pytest.raises(RateNotMeasurable, match="cannot be set from"):
        train_model(storage, face_pipeline, items, "impossible",
                    TrainingParams(model_type="centroid", validation_fraction=0.3, test_fraction=0.3, gallery_far=1e-4))

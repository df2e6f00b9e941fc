"""Evaluation figures and the HTML report: metrics checked against hand computations, figures that decode
and scale with the number of people, and a report page built from real LFW photos."""

from __future__ import annotations

import html
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.dataset import Item
from pipeline.evaluate import (
    NO_FACE,
    confusion_matrix_png,
    display_name,
    evaluate,
    open_set,
    open_set_png,
    training_curves_png,
    wilson_interval,
)
from pipeline.report import explore, misclassified_png, render_html

CHIP_SIZE = 150
SCRIPT_NAME = "<script>alert('x')</script>"
SECTION_HEADINGS = ["Headline metrics", "How the photos were split", "Promotion", "Dataset", "Training curves",
                    "Confusion matrix", "Per person", "Misclassified faces", "Open set: strangers and enrolled people",
                    "Parameters"]


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image.size


def lfw_chip(path: Path) -> np.ndarray:
    """An LFW photo's centre as a 150x150 chip: deep-funneled LFW photos are 250x250 with the face
    in the middle, close enough to an aligned chip for figures."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    box = (width // 2 - 60, height // 2 - 60, width // 2 + 60, height // 2 + 60)
    return np.asarray(image.crop(box).resize((CHIP_SIZE, CHIP_SIZE), Image.Resampling.BILINEAR))


# evaluate

LABELS = ["a", "b", "c", "d", "e", "f", "g"]
TRUTH = ["a", "a", "a", "a", "b", "b", "c", "c"]
PREDICTED = ["a", "a", "b", "unknown", "b", "b", "c", NO_FACE]
SCORES = np.array([
    [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],  # a first
    [0.8, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0],  # a first
    [0.3, 0.6, 0.1, 0.0, 0.0, 0.0, 0.0],  # a second: a top-5 hit, a top-1 miss
    [0.01, 0.3, 0.2, 0.2, 0.1, 0.1, 0.09],  # a last of seven: a top-5 miss
    [0.1, 0.8, 0.1, 0.0, 0.0, 0.0, 0.0],
    [0.2, 0.7, 0.1, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.1, 0.9, 0.0, 0.0, 0.0, 0.0],
    [np.nan] * 7,  # no face: a miss whatever the ranks
])


def test_evaluate_matches_hand_computed_metrics() -> None:
    metrics = evaluate(TRUTH, PREDICTED, LABELS, SCORES)

    assert metrics["accuracy"] == pytest.approx(5 / 8)
    assert metrics["top5_accuracy"] == pytest.approx(6 / 8)
    # Per person (precision, recall, F1): a (1, 1/2, 2/3), b (2/3, 1, 4/5), c (1, 1/2, 2/3);
    # weights by photos 4, 2, 2 of 8; people without photos weigh nothing.
    assert metrics["weighted_precision"] == pytest.approx((4 * 1 + 2 * 2 / 3 + 2 * 1) / 8)
    assert metrics["weighted_recall"] == pytest.approx((4 * 1 / 2 + 2 * 1 + 2 * 1 / 2) / 8)
    assert metrics["weighted_f1"] == pytest.approx((4 * 2 / 3 + 2 * 4 / 5 + 2 * 2 / 3) / 8)
    assert metrics["rejected_as_unknown_or_no_face"] == 2
    assert metrics["confusion_matrix"]["columns"] == LABELS + [NO_FACE, "unknown"]
    assert metrics["accuracy_interval"] == wilson_interval(5, 8)
    assert metrics["top5_accuracy_interval"] == wilson_interval(6, 8)
    assert metrics["interval_method"] == "95% Wilson score interval"


def test_wilson_interval_matches_published_values() -> None:
    # What Wilson's (1927) score formula gives for 8 of 10 and for 10 of 10, to four places.
    assert wilson_interval(8, 10) == pytest.approx([0.4902, 0.9433], abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx([0.7225, 1.0], abs=1e-4)
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(950, 1000)
    assert 0.93 < low < 0.95 < high < 0.97  # a thousand photos: about a point and a half either side


def test_evaluate_without_scores_keeps_its_old_keys_and_has_no_top5() -> None:
    metrics = evaluate(TRUTH, PREDICTED, LABELS)

    assert metrics["top5_accuracy"] is None
    assert {"images", "accuracy", "macro_precision", "macro_recall", "macro_f1", "per_person",
            "confusion_matrix", "rejected_as_unknown_or_no_face"} <= metrics.keys()


def test_evaluate_rejects_scores_not_aligned_with_truth() -> None:
    with pytest.raises(ValueError, match="shape"):
        evaluate(TRUTH, PREDICTED, LABELS, SCORES[:-1])


# open set

def test_open_set_at_the_threshold_and_over_the_grid() -> None:
    known = np.array([0.9, 0.8, 0.7, 0.4])
    correct = np.array([True, True, False, True])
    strangers = np.array([0.2, 0.5, 0.75])

    result = open_set(known, correct, strangers, threshold=0.6)

    assert result["stranger_rejection"] == pytest.approx(2 / 3)  # 0.2 and 0.5 fall below 0.6
    assert result["known_accuracy"] == pytest.approx(2 / 4)  # 0.9 and 0.8 accepted and right; 0.7 wrong
    curve = result["curve"]
    thresholds = np.array(curve["thresholds"])
    assert len(thresholds) == 50
    assert thresholds[0] == pytest.approx(0.2) and thresholds[-1] == pytest.approx(0.9)
    assert np.all(np.diff(thresholds) > 0)
    assert np.all(np.diff(curve["stranger_rejection"]) >= 0)
    assert np.all(np.diff(curve["known_accuracy"]) <= 0)
    assert curve["stranger_rejection"][0] == 0 and curve["known_accuracy"][0] == pytest.approx(3 / 4)
    png_size(open_set_png(result))


def test_open_set_needs_known_faces_and_strangers() -> None:
    with pytest.raises(ValueError, match="stranger"):
        open_set(np.array([0.5]), np.array([True]), np.array([]), 0.3)


# figures

def confusion_for(people: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    labels = [f"Person_Number_{i:03d}" for i in range(people)]
    truth = [label for label in labels for _ in range(5)]
    predicted = [t if rng.random() < 0.8 else str(rng.choice(labels + ["unknown"])) for t in truth]
    return evaluate(truth, predicted, labels)["confusion_matrix"]


def test_confusion_matrix_png_grows_with_the_number_of_people() -> None:
    small = png_size(confusion_matrix_png(confusion_for(5)))
    large = png_size(confusion_matrix_png(confusion_for(70)))

    assert large[0] > small[0] and large[1] > small[1]
    # About 20 pixels a person at 70 people: names stay legible.
    assert large[1] >= 70 * 20


def test_confusion_matrix_png_without_rejections() -> None:
    labels = ["a", "b"]
    png_size(confusion_matrix_png(evaluate(["a", "b"], ["a", "b"], labels)["confusion_matrix"]))


def test_training_curves_png_handles_missing_keys() -> None:
    assert training_curves_png({}) is None
    png_size(training_curves_png({"loss": [1.0, 0.5, 0.3]}))
    png_size(training_curves_png({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7],
                                  "accuracy": [0.4, 0.8], "val_accuracy": [0.3, 0.7]}))


# the report, from real LFW photos

@pytest.fixture(scope="module")
def lfw_people(lfw_dir: Path) -> dict[str, list[Path]]:
    """The 62 LFW people with at least 20 photos, as in the demo."""
    people = {}
    for folder in sorted(lfw_dir.iterdir()):
        photos = sorted(folder.glob("*.jpg"))
        if len(photos) >= 20:
            people[folder.name] = photos
    assert len(people) == 62
    return people


def build_report(people: dict[str, list[Path]]) -> tuple[dict, dict[str, bytes]]:
    """A report as a training job would assemble it, with simulated predictions on real photos and chips."""
    rng = np.random.default_rng(0)
    items = [Item(f"datasets/lfw20/{name}/{p.name}", name) for name, photos in people.items() for p in photos]
    items += [Item(f"datasets/lfw20/{SCRIPT_NAME}/{i}.jpg", SCRIPT_NAME) for i in range(3)]
    no_face = [i.key for i in items[5:60:4]]
    several = [i.key for i in items[100:104]]
    chips = {name: lfw_chip(photos[0]) for name, photos in people.items()}
    stats, figures = explore(items, no_face, several, {items[7].key: "not a decodable image"},
                             [(name, chips[name]) for name in list(people)[:16]])

    labels = sorted(people) + [SCRIPT_NAME]
    truth = [label for label in labels for _ in range(6)]
    scores = rng.random((len(truth), len(labels)))
    scores[np.arange(len(truth)), [labels.index(t) for t in truth]] += rng.random(len(truth)) * 1.5
    predicted = [labels[j] for j in scores.argmax(axis=1)]
    predicted[3], predicted[10] = "unknown", NO_FACE
    scores[10] = np.nan
    metrics = evaluate(truth, predicted, labels, scores)
    wrong = [(chips.get(t, chips[labels[0]]), t, p) for t, p in zip(truth, predicted) if t != p]

    known = scores[np.arange(len(truth)), scores.argmax(axis=1)][~np.isnan(scores).any(axis=1)]
    correct = np.array([t == p for t, p in zip(truth, predicted)])[~np.isnan(scores).any(axis=1)]
    result = open_set(known, correct, rng.random(40) * 1.3, threshold=1.0)
    figures |= {
        "training_curves": training_curves_png({"loss": [2.1, 1.2, 0.8, 0.6], "val_loss": [2.0, 1.3, 1.0, 0.9],
                                                "accuracy": [0.3, 0.6, 0.8, 0.85],
                                                "val_accuracy": [0.3, 0.55, 0.7, 0.75]}),
        "confusion_matrix": confusion_matrix_png(metrics["confusion_matrix"]),
        "misclassified": misclassified_png(wrong[:16]),
        "open_set": open_set_png(result),
    }
    report = {
        "model": {"name": "lfw", "type": "embedding", "version": "20250101T000000Z-abcdef"},
        "evaluated_on": f"the test split: {len(truth)} photos of {len(labels)} people that nothing was fitted or "
                        "tuned on",
        "split": {"how": "each person's photos ordered by a hash of their key", "validation_fraction": 0.2,
                  "test_fraction": 0.2, "training_photos": 1800, "validation_photos": 600,
                  "test_photos": len(truth), "stranger_photos": 0, "people_tested": len(labels),
                  "validation_is_used_for": "early stopping and the unknown threshold, never for a reported figure",
                  "people_only_in_training": ["Only_Once"], "people_not_in_validation": ["Twice_Only"]},
        "promotion": {"promote": True, "reason": "accuracy 0.9500 against the current 0.9400",
                      "photos": 300, "photos_offered": len(truth), "photos_source": "this version's test split",
                      "photos_key": "models/lfw/versions/20250101T000000Z-abcdef/promotion.jsonl",
                      "photos_left_out": {"fitted_or_tuned_by_current": 78, "fitted_or_tuned_by_this_version": 0},
                      "current_version": "20241231T000000Z-fedcba",
                      "candidate_accuracy": 0.95, "candidate_accuracy_interval": wilson_interval(285, 300),
                      "current_accuracy": 0.94, "current_accuracy_interval": wilson_interval(282, 300)},
        "dataset": stats,
        "evaluation": metrics,
        "open_set": result,
        "unknown_threshold": 1.0,
        "params": {"validation_fraction": 0.2, "seed": 0, "head": {"epochs": 200, "learning_rate": 0.001}},
    }
    return report, figures


@pytest.fixture(scope="module")
def report_and_figures(lfw_people: dict[str, list[Path]]) -> tuple[dict, dict[str, bytes]]:
    return build_report(lfw_people)


@pytest.fixture(scope="module")
def report_and_page(report_and_figures: tuple[dict, dict[str, bytes]]) -> tuple[dict, str]:
    report, figures = report_and_figures
    return report, render_html(report, figures)


def test_explore_counts_people_and_photos(lfw_people: dict[str, list[Path]]) -> None:
    items = [Item(f"{name}/{p.name}", name) for name, photos in lfw_people.items() for p in photos]
    chips = [(name, lfw_chip(photos[0])) for name, photos in list(lfw_people.items())[:10]]

    stats, figures = explore(items, ["x.jpg"], [], {}, chips)

    counts = sorted(len(photos) for photos in lfw_people.values())
    assert stats["people"] == 62 and stats["photos"] == len(items) == 3023
    assert stats["photos_per_person"] == {"min": counts[0], "median": float(np.median(counts)),
                                          "mean": round(len(items) / 62, 1), "max": counts[-1]}
    assert stats["no_face"] == ["x.jpg"]
    width, height = png_size(figures["sample_faces"])
    assert width > height  # 10 chips: two rows of eight
    png_size(figures["photos_per_person"])


def test_report_page_has_every_section_and_inline_images_only(report_and_page: tuple[dict, str]) -> None:
    _, page = report_and_page

    for heading in SECTION_HEADINGS:
        assert f"<h2>{html.escape(heading)}</h2>" in page
    assert "lfw: embedding model, version 20250101T000000Z-abcdef" in page
    assert page.count('src="data:image/png;base64,') == 6
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "&lt;script&gt;" in page


def test_report_page_says_what_the_figures_were_measured_on_and_gives_each_accuracy_its_interval(
        report_and_page: tuple[dict, str]) -> None:
    report, page = report_and_page
    evaluation, promotion = report["evaluation"], report["promotion"]

    assert f"measured on the test split: {evaluation['images']} photos of 63 people" in page
    for share, interval in [(evaluation["accuracy"], evaluation["accuracy_interval"]),
                            (evaluation["top5_accuracy"], evaluation["top5_accuracy_interval"]),
                            (report["open_set"]["known_accuracy"], report["open_set"]["known_accuracy_interval"]),
                            (promotion["candidate_accuracy"], promotion["candidate_accuracy_interval"]),
                            (promotion["current_accuracy"], promotion["current_accuracy_interval"])]:
        assert f"95% interval {interval[0]:.1%} to {interval[1]:.1%}" in page, share
    split = page[page.index("<h2>How the photos were split</h2>"):page.index("<h2>Promotion</h2>")]
    assert "Only_Once" in split and "Twice_Only" in split and "early stopping" in split
    decision = page[page.index("<h2>Promotion</h2>"):page.index("<h2>Dataset</h2>")]
    assert f"300 of the {evaluation['images']} photos of this version&#x27;s test split" in decision
    assert "20241231T000000Z-fedcba" in decision and promotion["photos_key"] in decision


def test_report_page_lists_people_worst_first(report_and_page: tuple[dict, str]) -> None:
    report, page = report_and_page
    table = page[page.index("<h2>Per person</h2>"):page.index("<h2>Misclassified faces</h2>")]
    shown = re.findall(r"<tr(?: class=\"low\")?><td>(.*?)</td>", table)

    f1 = {html.escape(display_name(p["person"])): p["f1"] for p in report["evaluation"]["per_person"]}
    assert sorted(shown) == sorted(f1)
    assert [f1[name] for name in shown] == sorted(f1.values())


def test_report_page_without_training_curves_or_open_set(report_and_figures: tuple[dict, dict[str, bytes]]) -> None:
    report, figures = report_and_figures
    without_open_set = {k: v for k, v in report.items() if k != "open_set"}

    page = render_html(without_open_set, {k: v for k, v in figures.items() if k not in ("training_curves", "open_set")})

    assert "no training curves" in page
    assert "Open set" not in page

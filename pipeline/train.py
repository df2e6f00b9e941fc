"""Training an identity model: extract faces from a labelled dataset, fit a model, evaluate it,
publish it as a new version, and decide whether it becomes the current one.

The dataset is split three ways (pipeline.dataset.three_way_split): the model is fitted on the
training split, tuned on the validation split (early stopping, the unknown threshold), and every
figure it reports is measured on the test split, which nothing was fitted or tuned on: a score on
the tuning photos is optimistic by construction. Promotion compares the new version with the
current one on photos neither of them was fitted or tuned on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from pipeline import registry
from pipeline.align import CHIP_SIZE
from pipeline.dataset import Item, Split, manifest_hash, manifest_jsonl, read_key_list, three_way_split
from pipeline.evaluate import (
    INTERVAL_METHOD,
    NO_FACE,
    accuracy_by_quality,
    confusion_matrix_png,
    evaluate,
    open_set,
    open_set_png,
    training_curves_png,
    wilson_interval,
)
from pipeline.face_resnet import DESCRIPTOR_SIZE
from pipeline.faces import FacePipeline
from pipeline.models import UNKNOWN, FaceSet, IdentityModel, create_model, load_model_files, model_files
from pipeline.models.params import validate_model_params
from pipeline.quality import Quality, face_quality, passes
from pipeline.report import explore, misclassified_png, render_html
from pipeline.storage import MissingKey, Storage
from pipeline.thresholds import face_pairs, model_thresholds, set_far_threshold

CODE_VERSION = "3"  # 3: three-way split, figures from the test split
SAMPLE_FACES = 24  # people shown in the report's grid of sample faces
MISCLASSIFIED_SHOWN = 24
# Without a promotion_margin, a new version may still not be worse than the current one on the same
# held-out photos by more than this: a broken model never replaces a good one unasked.
GUARD_MARGIN = 0.05

Progress = Callable[[str, int, int], None]


@dataclass
class TrainingParams:
    model_type: str = "embedding"
    model_params: dict = field(default_factory=dict)
    validation_fraction: float = 0.2  # share of each person's photos tuned on: early stopping, unknown threshold
    test_fraction: float = 0.2  # share of each person's photos every reported figure is measured on
    stranger_fraction: float = 0.0  # share of people held out of training, as strangers for open-set figures
    far: float | None = None  # the unknown threshold for this false-accept rate per comparison (pipeline.thresholds)
    gallery_far: float | None = None  # ... or per search of the whole gallery; neither: the balanced default
    seed: int = 0
    batch_size: int = 32
    # Faces whose quality score (pipeline.quality) is below this are left out of fitting (training and
    # validation splits), counted in the report as photos.low_quality; the test split keeps every face.
    min_quality: float = 0.0


@dataclass
class ExtractedFaces:
    """The subject's face in each usable photo, and what happened to the other photos."""

    items: list[Item]
    faces: FaceSet
    no_face: list[str]
    several_faces: list[str]
    errors: dict[str, str]  # key -> why the photo was not used: missing or unreadable
    missing: list[str] = field(default_factory=list)  # not in storage
    unreadable: list[str] = field(default_factory=list)  # storage refused it (too large...) or it did not decode
    total: int = 0  # distinct photos asked for
    quality: list[Quality] = field(default_factory=list)  # each face's, in the order of items
    low_quality: list[str] = field(default_factory=list)  # photos left out by at_quality()

    def of(self, items: list[Item]) -> tuple[list[Item], FaceSet]:
        """The given items that have a face, and their faces, in the given order."""
        position = {item.key: i for i, item in enumerate(self.items)}
        found = [item for item in items if item.key in position]
        rows = np.array([position[item.key] for item in found], dtype=int)
        faces = FaceSet(self.faces.chips[rows], self.faces.embeddings[rows], [item.label for item in found])
        return found, faces

    def quality_of(self, items: list[Item]) -> list[Quality]:
        """The quality of the faces of the given items that have one, as of() orders them."""
        position = {item.key: i for i, item in enumerate(self.items)}
        return [self.quality[position[item.key]] for item in items if item.key in position]

    def at_quality(self, min_quality: float) -> ExtractedFaces:
        """These faces less those below min_quality, whose photos are listed in low_quality."""
        keep = np.array([passes(quality, min_quality) for quality in self.quality], dtype=bool)
        low = [item.key for item, kept in zip(self.items, keep) if not kept]
        return replace(self, items=[item for item, kept in zip(self.items, keep) if kept],
                       faces=self.faces.subset(keep), quality=[q for q, kept in zip(self.quality, keep) if kept],
                       low_quality=self.low_quality + low)

    def photo_counts(self) -> dict[str, int]:
        """How many photos there were, and how many were missing, unreadable, faceless, used and left out
        for a face below the minimum quality."""
        return {"total": self.total, "missing": len(self.missing), "unreadable": len(self.unreadable),
                "no_face": len(self.no_face), "used": len(self.items), "low_quality": len(self.low_quality)}

    def check_mostly_readable(self) -> None:
        """Raise ValueError when more than half the photos are missing from storage or unreadable:
        a dataset in that state is a mistake to report, not something to train on quietly."""
        missing, unreadable = len(self.missing), len(self.unreadable)
        if missing + unreadable > self.total / 2:
            examples = ", ".join((self.missing + self.unreadable)[:3])
            raise ValueError(f"{missing} of {self.total} photos are missing from storage and {unreadable} "
                             f"unreadable (for example {examples}): more than half, so nothing was trained")


def extract_faces(storage: Storage, pipeline: FacePipeline, items: list[Item], batch_size: int = 32,
                  on_progress: Callable[[int], None] = lambda done: None) -> ExtractedFaces:
    """Detect, align and embed the subject's face in every photo, batch by batch; on_progress(done)
    after each batch (it may raise to stop)."""
    kept, chips, vectors, qualities, no_face, several = [], [], [], [], [], []
    missing: list[str] = []
    unreadable: list[str] = []
    refused: list[str] = []  # unreadable already in storage: they never reach the pipeline
    errors: dict[str, str] = {}
    label = {item.key: item.label for item in items}

    def photos():
        # Storage yields an exception in place of the data of a photo it could not read.
        for key, data in storage.get_many(label):
            if isinstance(data, MissingKey):
                missing.append(key)
                errors[key] = "missing from storage"
            elif isinstance(data, BaseException):
                unreadable.append(key)
                refused.append(key)
                errors[key] = str(data) or type(data).__name__
            else:
                yield key, data

    for processed, found in enumerate(pipeline.process_stream(photos(), batch_size), start=1):
        if found.error:
            unreadable.append(found.key)
            errors[found.key] = found.error
        elif not found.faces:
            no_face.append(found.key)
        else:
            if len(found.faces) > 1:
                several.append(found.key)
            kept.append(Item(found.key, label[found.key]))
            chips.append(found.chips[found.main_face])
            vectors.append(found.embeddings[found.main_face])
            qualities.append(face_quality(found.faces[found.main_face], found.chips[found.main_face]))
        if processed % batch_size == 0:
            on_progress(processed + len(missing) + len(refused))
    on_progress(len(label))
    faces = FaceSet(np.stack(chips) if chips else np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8),
                    np.stack(vectors) if vectors else np.zeros((0, DESCRIPTOR_SIZE), np.float32),
                    [item.label for item in kept])
    return ExtractedFaces(kept, faces, no_face, several, errors, missing, unreadable, len(label), qualities)


@dataclass
class Evaluation:
    metrics: dict
    misclassified: list[tuple[np.ndarray, str, str]]  # (chip, truth, prediction)
    scores: np.ndarray  # each evaluated face's acceptance score for its best person
    correct: np.ndarray  # whether that face was named right


def evaluate_on(model: IdentityModel, items: list[Item], found: list[Item], faces: FaceSet) -> Evaluation:
    """Metrics of model on items, given the items that have a face and their faces (ExtractedFaces.of);
    a photo without a usable face counts as an error."""
    class_scores = acceptance = np.zeros((0, len(model.labels_)))
    if len(faces):
        class_scores, acceptance = model.scores_and_acceptance(faces)
    predictions = model.predictions(class_scores, acceptance)
    row = {item.key: i for i, item in enumerate(found)}
    scores = np.full((len(items), len(model.labels_)), np.nan)
    for i, item in enumerate(items):
        if item.key in row:
            scores[i] = class_scores[row[item.key]]
    truth = [item.label for item in items]
    predicted = [predictions[row[item.key]].label if item.key in row else NO_FACE for item in items]
    metrics = evaluate(truth, predicted, model.labels_, scores)
    metrics["unknown_rate"] = sum(p == UNKNOWN for p in predicted) / max(len(predicted), 1)
    wrong = [(faces.chips[i], item.label, predictions[i].label)
             for i, item in enumerate(found) if predictions[i].label != item.label]
    return Evaluation(metrics, wrong, np.array([p.score for p in predictions]),
                      np.array([p.label == item.label for p, item in zip(predictions, found)], dtype=bool))


def hold_out_strangers(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Split items into (known people's photos, strangers' photos), holding out a share of the people."""
    people = sorted({item.label for item in items})
    count = round(fraction * len(people))
    if count == 0:
        return items, []
    strangers = set(np.random.default_rng(seed).choice(people, size=count, replace=False))
    return [i for i in items if i.label not in strangers], [i for i in items if i.label in strangers]


def dataset_unchanged(storage: Storage, model_name: str, items: list[Item]) -> bool:
    """Whether the current version of model_name was trained on exactly these photos and labels."""
    current = registry.current_version(storage, model_name)
    if current is None:
        return False
    return registry.get_version(storage, model_name, current)["dataset_manifest_hash"] == manifest_hash(items)


def fitted_or_tuned(storage: Storage, model_name: str, version: str) -> set[str]:
    """The keys of the photos a version was fitted or tuned on: its training and validation manifests.
    A version written before those were recorded may have used any photo of its dataset: all of them."""
    prefix = registry.version_prefix(model_name, version)
    if storage.exists(f"{prefix}/training.jsonl"):
        parts = [f"{prefix}/training.jsonl", f"{prefix}/validation.jsonl"]
    else:
        parts = [f"{prefix}/manifest.jsonl"]
    return {key for part in parts if storage.exists(part) for key in read_key_list(storage, part)}


def minimum_accuracy(people: int) -> float:
    """The accuracy a version needs to become current without an explicit promote: halfway from
    chance (1 / people) to perfect. Below it a model is near chance (0.75 for 2 people, 0.6 for 5,
    0.51 for 62); a useful model is far above it (LFW's 62 people: about 0.97)."""
    return (1 + 1 / max(people, 1)) / 2


def _interval_text(accuracy: float, photos: int) -> str:
    low, high = wilson_interval(round(accuracy * photos), photos)
    return f"{accuracy:.4f} (95% interval {low:.4f}-{high:.4f})"


def decide_promotion(candidate_accuracy: float | None, current_version: str | None, current_accuracy: float | None,
                     photos: int, margin: float | None, people: int) -> dict:
    """Whether a new version should become current, from its accuracy and the current version's on
    the same `photos` photos, which neither was fitted or tuned on (None when there are none).

    Never when there are no such photos while a version is current (nothing fair to compare on), nor
    when its accuracy is below minimum_accuracy(people) (near chance), nor when it is worse than the
    current version by more than the margin (GUARD_MARGIN when no margin is given). Such a version
    is still published; only an explicit promote makes it current. Each accuracy comes with its 95%
    Wilson interval, and `intervals_overlap` says whether the two are within noise of each other.
    """
    floor = minimum_accuracy(people)
    guard = GUARD_MARGIN if margin is None else margin
    decision = {"margin": margin, "guard_margin": guard, "minimum_accuracy": floor, "current_version": current_version,
                "photos": photos, "interval_method": INTERVAL_METHOD,
                "candidate_accuracy": candidate_accuracy,
                "candidate_accuracy_interval": wilson_interval(round((candidate_accuracy or 0) * photos), photos)}
    if current_version is not None:
        decision.update(current_accuracy=current_accuracy,
                        current_accuracy_interval=wilson_interval(round((current_accuracy or 0) * photos), photos))
    if current_version is not None and photos:
        (low, high), (current_low, current_high) = (decision["candidate_accuracy_interval"],
                                                    decision["current_accuracy_interval"])
        decision["intervals_overlap"] = low <= current_high and current_low <= high
    if photos == 0:
        return {**decision, "promote": False,
                "reason": "no photo is left that neither this version nor the current one was fitted or tuned on, "
                          "so they cannot be compared fairly: promote it explicitly if wanted"}
    candidate = _interval_text(candidate_accuracy, photos)
    if candidate_accuracy < floor:
        return {**decision, "promote": False,
                "reason": f"accuracy {candidate} on {photos} photos is near chance ({1 / max(people, 1):.4f} for "
                          f"{people} people): below the minimum {floor:.4f} to become current without an explicit "
                          "promote"}
    if current_version is None:
        return {**decision, "promote": True,
                "reason": f"no current version, and accuracy {candidate} on {photos} photos is above the minimum "
                          f"{floor:.4f}"}
    promote = candidate_accuracy >= current_accuracy - guard
    verdict = "within" if promote else "worse by more than"
    which = "the default guard margin" if margin is None else "the margin"
    noise = ("; their intervals overlap: the difference is within noise" if decision["intervals_overlap"]
             else "; their intervals do not overlap")
    return {**decision, "promote": promote,
            "reason": f"accuracy {candidate} against the current {_interval_text(current_accuracy, photos)} on the "
                      f"same {photos} photos, which neither was fitted or tuned on: {verdict} {which} {guard}{noise}"}


def _split_report(split: Split, params: TrainingParams, strangers: list[Item], people: int) -> dict:
    return {"how": split.describe(), "validation_fraction": params.validation_fraction,
            "test_fraction": params.test_fraction, "training_photos": len(split.training),
            "validation_photos": len(split.validation), "test_photos": len(split.test),
            "stranger_photos": len(strangers), "people_tested": people,
            "validation_is_used_for": "early stopping and the unknown threshold, never for a reported figure",
            "people_only_in_training": split.only_in_training,
            "people_not_in_validation": split.not_in_validation}


@dataclass
class PromotionPhotos:
    """The photos a new version is compared with the current one on, and what was left out of them."""

    current: str | None  # the version current when the training began: the one compared with and replaced
    photos: list[Item]  # the offered photos that neither version was fitted or tuned on
    source: str  # where the offered photos came from, in words
    offered: int  # how many photos were offered, before any was left out
    left_out: dict[str, int]  # offered photos left out, by which version was fitted or tuned on them


@dataclass
class TrainingRun:
    """One training's inputs and the photos it gave to each use: what its stages share."""

    storage: Storage
    pipeline: FacePipeline
    model_name: str
    params: TrainingParams
    model: IdentityModel  # not fitted until fit_model
    items: list[Item]  # the whole dataset, as asked
    split: Split  # the known people's photos: training, validation, test
    strangers: list[Item]  # photos of the people held out of training, for the open-set figures
    promotion: PromotionPhotos
    started: float  # time.perf_counter() when the training began

    @property
    def photos(self) -> list[Item]:
        """Every photo the training reads, once each."""
        return list({item.key: item for item in self.split.training + self.split.validation + self.split.test
                     + self.strangers + self.promotion.photos}.values())


def train_model(storage: Storage, pipeline: FacePipeline, items: list[Item], model_name: str,
                params: TrainingParams | None = None, on_progress: Progress = lambda stage, done, total: None,
                promotion_items: list[Item] | None = None, promotion_margin: float | None = None) -> dict:
    """Train, evaluate and publish a new version of model_name from labelled items.

    items are split three ways (three_way_split): training, validation (early stopping, the unknown
    threshold) and test, which every reported figure (report.json, report.html, the record's
    metrics) is measured on. The new version becomes current as decide_promotion() says, judged on
    promotion_items (a fixed set, such as a job's validation_manifest) when given, else on the test
    split, in both cases without the photos this version or the current one was fitted or tuned on;
    those photos are written to the version as promotion.jsonl. Returns the version record with the
    promotion decision and the photo counts (`photos`: total, missing, unreadable, no_face, used).

    on_progress(stage, done, total) is called after each batch of photos, after each training epoch,
    between the later stages, and exactly once with stage "publishing" just before the first write
    to storage. It may raise to stop the training: up to the "publishing" call nothing has been
    written; after it nothing calls it again.
    """
    registry.check_model_name(model_name)
    params = checked_params(params or TrainingParams())
    model = create_model(params.model_type, **params.model_params)
    started = time.perf_counter()
    split, strangers = split_dataset(items, params)
    promotion = choose_promotion_photos(storage, model_name, split, promotion_items)
    run = TrainingRun(storage, pipeline, model_name, params, model, items, split, strangers, promotion, started)
    photo_count = len(run.photos)

    def reached(stage: str) -> None:  # the stages after extraction count every photo as done
        on_progress(stage, photo_count, photo_count)

    extracted = extract_training_faces(run, lambda done: on_progress("extracting faces", done, photo_count))
    extract_seconds = time.perf_counter() - started
    fit_model(run, extracted, lambda done, total: on_progress("fitting", done, total))
    rule = set_threshold(run, extracted)
    reached("evaluating")
    evaluation = evaluate_test_split(run, extracted)
    reached("comparing with the current version")
    version = registry.new_version_id()
    decision = compare_with_current(run, extracted, version, promotion_margin)
    reached("writing the report")
    report, figures = build_report(run, extracted, evaluation, version, decision, extract_seconds)
    add_open_set(run, extracted, evaluation, report, figures)
    add_thresholds(run, extracted, rule, report, figures)
    files, record = version_files(run, report, figures), version_record(run, report, version)
    # The last moment to stop: the caller may raise here (a cancelled job); from here on the version
    # is written and, as decided, made current, with nothing checking for a cancel in between.
    reached("publishing")
    published = registry.publish_version(storage, model_name, version, files, record)
    return {**published, "promotion": make_current_as_decided(run, version, decision)}


def checked_params(params: TrainingParams) -> TrainingParams:
    """params with their model_params checked against their model type's bounds."""
    # Checked here as well as at submit: a bad parameter must never reach a model's constructor.
    if not 0 <= params.min_quality <= 1:
        raise ValueError(f"min_quality must be between 0 and 1, not {params.min_quality}")
    return replace(params, model_params=validate_model_params(params.model_type, params.model_params))


def split_dataset(items: list[Item], params: TrainingParams) -> tuple[Split, list[Item]]:
    """The known people's photos split three ways, and the strangers' photos held out; raise
    ValueError when there is not enough to train, tune and measure on."""
    known, strangers = hold_out_strangers(items, params.stranger_fraction, params.seed)
    split = three_way_split(known, params.validation_fraction, params.test_fraction, params.seed)
    if len({i.label for i in split.training}) < 2:
        raise ValueError("training needs at least two people")
    if not split.validation:
        raise ValueError("no person has three photos or more, so there is nothing to validate on: training "
                         "needs some photos to stop early and calibrate on, and others to measure on")
    return split, strangers


def choose_promotion_photos(storage: Storage, model_name: str, split: Split,
                            promotion_items: list[Item] | None) -> PromotionPhotos:
    """The photos the promotion is decided on: promotion_items, else the test split, less every photo
    this version or the current one was fitted or tuned on."""
    current = registry.current_version(storage, model_name)
    seen_by_current = fitted_or_tuned(storage, model_name, current) if current else set()
    seen_by_candidate = {item.key for item in split.training + split.validation}
    offered = split.test if promotion_items is None else promotion_items
    return PromotionPhotos(
        current=current,
        photos=[item for item in offered if item.key not in seen_by_current | seen_by_candidate],
        source="the validation manifest" if promotion_items is not None else "this version's test split",
        offered=len(offered),
        left_out={"fitted_or_tuned_by_current": sum(i.key in seen_by_current for i in offered),
                  "fitted_or_tuned_by_this_version": sum(i.key in seen_by_candidate for i in offered)})


def extract_training_faces(run: TrainingRun, on_progress: Callable[[int], None]) -> ExtractedFaces:
    """The faces in every photo the training reads; raise ValueError when most photos are missing or unreadable."""
    extracted = extract_faces(run.storage, run.pipeline, run.photos, run.params.batch_size, on_progress)
    extracted.check_mostly_readable()
    return extracted


def fit_model(run: TrainingRun, extracted: ExtractedFaces, on_progress: Callable[[int, int], None]) -> None:
    """Fit the model on the training split's faces, stopping early and calibrating on the validation
    split's, both without the faces below min_quality; on_progress(0, photos) before the first epoch, then
    (epochs done, epochs at most) after each."""
    fitting = extracted.at_quality(run.params.min_quality)
    _, train_faces = fitting.of(run.split.training)
    val_found, val_faces = fitting.of(run.split.validation)
    if not val_found:
        raise ValueError(f"no face was found at min_quality {run.params.min_quality} in any validation photo")
    on_progress(0, len(run.photos))
    run.model.fit(train_faces, val_faces, on_epoch=on_progress)


def set_threshold(run: TrainingRun, extracted: ExtractedFaces) -> str:
    """Set the unknown threshold for the asked false-accept rate on the validation split, if one was asked
    (the model calibrated its balanced default while fitting); returns the rule in words."""
    if run.params.far is None and run.params.gallery_far is None:
        return "balanced accuracy of genuine and impostor scores on the validation split (the default)"
    return set_far_threshold(run.model, extracted.of(run.split.validation)[1], run.params.far, run.params.gallery_far)


def evaluate_test_split(run: TrainingRun, extracted: ExtractedFaces) -> Evaluation:
    """The fitted model measured on the test split: every figure the version reports."""
    evaluation = evaluate_on(run.model, run.split.test, *extracted.of(run.split.test))
    return replace(evaluation, metrics={**evaluation.metrics, "split": "test"})


def compare_with_current(run: TrainingRun, extracted: ExtractedFaces, version: str, margin: float | None) -> dict:
    """The promotion decision (decide_promotion), with the photos it was made on and where they are kept."""
    promotion, current = run.promotion.photos, run.promotion.current
    candidate_accuracy = current_accuracy = None
    if promotion:
        candidate_accuracy = evaluate_on(run.model, promotion, *extracted.of(promotion)).metrics["accuracy"]
        if current is not None:
            incumbent = load_model_files(run.storage, registry.version_prefix(run.model_name, current))
            current_accuracy = evaluate_on(incumbent, promotion, *extracted.of(promotion)).metrics["accuracy"]
    return {
        **decide_promotion(candidate_accuracy, current, current_accuracy, len(promotion), margin,
                           people=len(run.model.labels_)),
        "photos_source": run.promotion.source,
        "photos_offered": run.promotion.offered,
        "photos_left_out": run.promotion.left_out,
        "photos_key": f"{registry.version_prefix(run.model_name, version)}/promotion.jsonl",
    }


def build_report(run: TrainingRun, extracted: ExtractedFaces, evaluation: Evaluation, version: str, decision: dict,
                 extract_seconds: float) -> tuple[dict, dict[str, bytes]]:
    """The version's report (report.json) and its figures (PNG by name), but for the open-set figures."""
    split, model, metrics = run.split, run.model, evaluation.metrics
    # The training and validation photos fit_model left out for a face below min_quality.
    fitted = {item.key for item in split.training + split.validation}
    left_out = [key for key in extracted.at_quality(run.params.min_quality).low_quality if key in fitted]
    dataset, figures = explore(run.items, extracted.no_face, extracted.several_faces, extracted.errors,
                               sample_faces(extracted))
    figures["confusion_matrix"] = confusion_matrix_png(metrics["confusion_matrix"])
    curves = training_curves_png(model.history_)
    if curves:
        figures["training_curves"] = curves
    if evaluation.misclassified:
        figures["misclassified"] = misclassified_png(evaluation.misclassified[:MISCLASSIFIED_SHOWN])
    tested_people = len({item.label for item in split.test})
    report = {
        "model": {"name": run.model_name, "type": model.model_type, "version": version},
        "evaluated_on": f"the test split: {len(split.test)} photos of {tested_people} people that nothing was "
                        "fitted or tuned on",
        "split": _split_report(split, run.params, run.strangers, tested_people),
        "dataset": dataset,
        "photos": {**extracted.photo_counts(), "low_quality": len(left_out)},
        "evaluation": metrics,
        "quality": {"min_quality": run.params.min_quality,
                    "left_out_of_fitting": len(left_out),
                    "by_quality": accuracy_by_quality(evaluation.correct, extracted.quality_of(split.test))},
        "unknown_threshold": model.threshold_,
        "training_curves": model.history_,
        "promotion": decision,
        "params": asdict(run.params),
        "timings_s": {"extracting_faces": round(extract_seconds, 1),
                      "total": round(time.perf_counter() - run.started, 1)},
    }
    return report, figures


def add_open_set(run: TrainingRun, extracted: ExtractedFaces, evaluation: Evaluation, report: dict,
                 figures: dict[str, bytes]) -> None:
    """Add the open-set figures (known people named, strangers rejected) to the report, when a
    stranger's face was found."""
    stranger_found, stranger_faces = extracted.of(run.strangers)
    if stranger_found:
        stranger_scores = np.array([p.score for p in run.model.predict(stranger_faces)])
        report["open_set"] = open_set(evaluation.scores, evaluation.correct, stranger_scores, run.model.threshold_)
        figures["open_set"] = open_set_png(report["open_set"])


def add_thresholds(run: TrainingRun, extracted: ExtractedFaces, rule: str, report: dict,
                   figures: dict[str, bytes]) -> None:
    """Add the threshold section (its rule; false accepts and rejects measured on the test split, with
    intervals; the face-pair calibration face indexes match at) and the ROC/DET figure."""
    validation, test = extracted.of(run.split.validation)[1], extracted.of(run.split.test)[1]
    report["face_pairs"] = face_pairs(validation)
    if len(test) == 0:
        return
    report["thresholds"], figures["roc_det"] = model_thresholds(run.model, validation, test, rule,
                                                                report["face_pairs"])


def version_files(run: TrainingRun, report: dict, figures: dict[str, bytes]) -> dict[str, bytes]:
    """Every file of the version but version.json: the model, the reports, figures and manifests."""
    return {
        **model_files(run.model),
        "report.json": json.dumps(report, indent=2).encode(),
        "report.html": render_html(report, figures).encode(),
        **{f"figures/{name}.png": png for name, png in figures.items()},
        "manifest.jsonl": manifest_jsonl(run.items),
        "training.jsonl": manifest_jsonl(run.split.training),
        "validation.jsonl": manifest_jsonl(run.split.validation),
        "test.jsonl": manifest_jsonl(run.split.test),
        "promotion.jsonl": manifest_jsonl(run.promotion.photos),
    }


def version_record(run: TrainingRun, report: dict, version: str) -> dict:
    """The version's record (version.json): how it was made, and the figures it is chosen by."""
    metrics = report["evaluation"]
    summary = {"evaluated_on": "test split", **{k: metrics[k] for k in SUMMARY_METRICS}}
    if "open_set" in report:
        summary.update({k: report["open_set"][k] for k in OPEN_SET_SUMMARY})
    if "thresholds" in report:
        test = report["thresholds"]["test"]
        summary.update(threshold=report["thresholds"]["threshold"], threshold_rule=report["thresholds"]["rule"],
                       **{f"test_{name}": test[name]["rate"] for name in ("far", "far_per_search", "frr")},
                       **{f"test_{name}_interval": test[name]["interval"] for name in ("far", "far_per_search", "frr")})
    prefix = registry.version_prefix(run.model_name, version)
    return {
        "model_type": run.model.model_type,
        "embedder": run.pipeline.embedder_name,
        "code_version": CODE_VERSION,
        "dataset_manifest_hash": manifest_hash(run.items),
        "params": asdict(run.params),
        "metrics": summary,
        "people": len(run.model.labels_),
        "photos": report["photos"],
        "report_key": f"{prefix}/report.json",
        "report_html_key": f"{prefix}/report.html",
        # What a face index created by a job with this version matches faces at (pipeline.face_index).
        "face_pairs": {k: v for k, v in report["face_pairs"].items() if k != "roc"},
    }


def make_current_as_decided(run: TrainingRun, version: str, decision: dict) -> dict:
    """Make the published version current if the decision says so; the decision, changed to say why
    not if another version became current meanwhile."""
    if not decision["promote"]:
        return decision
    current = run.promotion.current
    try:
        # Only over the version the decision compared with: one promoted meanwhile was not compared.
        registry.set_current(run.storage, run.model_name, version, expected=current)
    except registry.PointerMoved:
        now = registry.current_version(run.storage, run.model_name)
        return {**decision, "promote": False,
                "reason": f"the current version changed from {current} to {now} while this version was "
                          "trained, so it was not compared with it: promote it explicitly if wanted"}
    return decision


# The figures of a version's record (version.json), each accuracy with its interval.
SUMMARY_METRICS = ("images", "accuracy", "accuracy_interval", "top5_accuracy", "top5_accuracy_interval",
                   "macro_precision", "macro_recall", "macro_f1", "interval_method")
OPEN_SET_SUMMARY = ("stranger_rejection", "stranger_rejection_interval", "known_accuracy", "known_accuracy_interval")


def sample_faces(extracted: ExtractedFaces) -> list[tuple[str, np.ndarray]]:
    """The first face of each of the first SAMPLE_FACES people."""
    first: dict[str, int] = {}
    for i, item in enumerate(extracted.items):
        if item.label not in first and len(first) < SAMPLE_FACES:
            first[item.label] = i
    return [(label, extracted.faces.chips[i]) for label, i in sorted(first.items())]

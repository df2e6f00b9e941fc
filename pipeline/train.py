"""Training an identity model: extract faces from a labelled dataset, fit a model, evaluate it,
publish it as a new version, and decide whether it becomes the current one."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline import registry
from pipeline.align import CHIP_SIZE
from pipeline.dataset import Item, manifest_hash, manifest_jsonl, stratified_split
from pipeline.evaluate import (
    NO_FACE,
    confusion_matrix_png,
    evaluate,
    open_set,
    open_set_png,
    training_curves_png,
)
from pipeline.face_resnet import DESCRIPTOR_SIZE
from pipeline.faces import FacePipeline
from pipeline.models import UNKNOWN, FaceSet, IdentityModel, create_model, load_model_files, model_files
from pipeline.report import explore, misclassified_png, render_html
from pipeline.storage import MissingKey, Storage

CODE_VERSION = "2"
SAMPLE_FACES = 24  # people shown in the report's grid of sample faces
MISCLASSIFIED_SHOWN = 24

Progress = Callable[[str, int, int], None]


@dataclass
class TrainingParams:
    model_type: str = "embedding"
    model_params: dict = field(default_factory=dict)
    validation_fraction: float = 0.2
    stranger_fraction: float = 0.0  # share of people held out of training, as strangers for open-set figures
    seed: int = 0
    batch_size: int = 32


@dataclass
class ExtractedFaces:
    """The subject's face in each usable photo, and what happened to the other photos."""

    items: list[Item]
    faces: FaceSet
    no_face: list[str]
    several_faces: list[str]
    errors: dict[str, str]

    def of(self, items: list[Item]) -> tuple[list[Item], FaceSet]:
        """The given items that have a face, and their faces, in the given order."""
        position = {item.key: i for i, item in enumerate(self.items)}
        found = [item for item in items if item.key in position]
        rows = np.array([position[item.key] for item in found], dtype=int)
        faces = FaceSet(self.faces.chips[rows], self.faces.embeddings[rows], [item.label for item in found])
        return found, faces


def extract_faces(storage: Storage, pipeline: FacePipeline, items: list[Item], batch_size: int = 32,
                  on_progress: Callable[[int], None] = lambda done: None) -> ExtractedFaces:
    """Detect, align and embed the subject's face in every photo, batch by batch."""
    kept, chips, vectors, no_face, several = [], [], [], [], []
    missing: list[str] = []
    errors: dict[str, str] = {}
    label = {item.key: item.label for item in items}

    def photos():
        for key, data in storage.get_many(label):
            if isinstance(data, MissingKey):
                missing.append(key)
            else:
                yield key, data

    for processed, found in enumerate(pipeline.process_stream(photos(), batch_size), start=1):
        if found.error:
            errors[found.key] = found.error
        elif not found.faces:
            no_face.append(found.key)
        else:
            if len(found.faces) > 1:
                several.append(found.key)
            kept.append(Item(found.key, label[found.key]))
            chips.append(found.chips[found.main_face])
            vectors.append(found.embeddings[found.main_face])
        if processed % batch_size == 0:
            on_progress(processed + len(missing))
    on_progress(len(label))
    errors.update(dict.fromkeys(missing, "missing from storage"))
    faces = FaceSet(np.stack(chips) if chips else np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8),
                    np.stack(vectors) if vectors else np.zeros((0, DESCRIPTOR_SIZE), np.float32),
                    [item.label for item in kept])
    return ExtractedFaces(kept, faces, no_face, several, errors)


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


def decide_promotion(storage: Storage, model_name: str, candidate_accuracy: float, validation: list[Item],
                     val_found: list[Item], val_faces: FaceSet, margin: float | None) -> dict:
    """Whether a new version should become current: always with no margin given or no current
    version; else only if it is not worse than the current one, on the same validation photos,
    by more than the margin."""
    current = registry.current_version(storage, model_name)
    decision = {"margin": margin, "candidate_accuracy": candidate_accuracy, "current_version": current}
    if current is None:
        return {**decision, "promote": True, "reason": "no current version"}
    if margin is None:
        return {**decision, "promote": True, "reason": "no promotion margin: a trained version becomes current"}
    incumbent = load_model_files(storage, registry.version_prefix(model_name, current))
    current_accuracy = evaluate_on(incumbent, validation, val_found, val_faces).metrics["accuracy"]
    promote = candidate_accuracy >= current_accuracy - margin
    verdict = "within" if promote else "worse by more than"
    return {**decision, "current_accuracy": current_accuracy, "promote": promote,
            "reason": f"accuracy {candidate_accuracy:.4f} against the current {current_accuracy:.4f}: "
                      f"{verdict} the margin {margin}"}


def train_model(storage: Storage, pipeline: FacePipeline, items: list[Item], model_name: str,
                params: TrainingParams | None = None, on_progress: Progress = lambda stage, done, total: None,
                validation_items: list[Item] | None = None, promotion_margin: float | None = None) -> dict:
    """Train, evaluate and publish a new version of model_name from labelled items.

    Validation photos are validation_items when given, else a stratified part of items. The new
    version becomes current as decide_promotion() says. Returns the version record with the
    promotion decision.
    """
    params = params or TrainingParams()
    registry.check_model_name(model_name)
    model = create_model(params.model_type, **params.model_params)
    started = time.perf_counter()
    known, strangers = hold_out_strangers(items, params.stranger_fraction, params.seed)
    if validation_items is None:
        train_items, val_items, skipped_people = stratified_split(known, params.validation_fraction, params.seed)
    else:
        train_items, val_items, skipped_people = known, validation_items, []
    if len({i.label for i in train_items}) < 2:
        raise ValueError("training needs at least two people with at least two photos each")

    ordered = train_items + val_items + strangers
    extracted = extract_faces(storage, pipeline, ordered, params.batch_size,
                              on_progress=lambda done: on_progress("extracting faces", done, len(ordered)))
    extract_seconds = time.perf_counter() - started
    _, train_faces = extracted.of(train_items)
    val_found, val_faces = extracted.of(val_items)
    if not val_found:
        raise ValueError("no face was found in any validation photo")

    on_progress("fitting", len(ordered), len(ordered))
    model.fit(train_faces, val_faces)
    evaluation = evaluate_on(model, val_items, val_found, val_faces)
    metrics = evaluation.metrics

    on_progress("comparing with the current version", len(ordered), len(ordered))
    promotion = decide_promotion(storage, model_name, metrics["accuracy"], val_items, val_found, val_faces,
                                 promotion_margin)

    on_progress("publishing", len(ordered), len(ordered))
    version = registry.new_version_id()
    prefix = registry.version_prefix(model_name, version)
    dataset, figures = explore(items, extracted.no_face, extracted.several_faces, extracted.errors,
                               _sample_faces(extracted))
    figures["confusion_matrix"] = confusion_matrix_png(metrics["confusion_matrix"])
    curves = training_curves_png(model.history_)
    if curves:
        figures["training_curves"] = curves
    if evaluation.misclassified:
        figures["misclassified"] = misclassified_png(evaluation.misclassified[:MISCLASSIFIED_SHOWN])
    report = {
        "model": {"name": model_name, "type": model.model_type, "version": version},
        "dataset": {**dataset, "skipped_people_with_one_photo": skipped_people,
                    "training_photos": len(train_items), "validation_photos": len(val_items),
                    "stranger_photos": len(strangers)},
        "evaluation": metrics,
        "unknown_threshold": model.threshold_,
        "training_curves": model.history_,
        "promotion": promotion,
        "params": asdict(params),
        "timings_s": {"extracting_faces": round(extract_seconds, 1),
                      "total": round(time.perf_counter() - started, 1)},
    }
    stranger_found, stranger_faces = extracted.of(strangers)
    if stranger_found:
        stranger_scores = np.array([p.score for p in model.predict(stranger_faces)])
        report["open_set"] = open_set(evaluation.scores, evaluation.correct, stranger_scores, model.threshold_)
        figures["open_set"] = open_set_png(report["open_set"])
    files = {
        **model_files(model),
        "report.json": json.dumps(report, indent=2).encode(),
        "report.html": render_html(report, figures).encode(),
        **{f"figures/{name}.png": png for name, png in figures.items()},
        "manifest.jsonl": manifest_jsonl(items),
        "validation.jsonl": manifest_jsonl(val_items),
    }
    summary = {k: metrics[k] for k in ("accuracy", "top5_accuracy", "macro_precision", "macro_recall",
                                       "macro_f1", "images")}
    if "open_set" in report:
        summary.update({k: report["open_set"][k] for k in ("stranger_rejection", "known_accuracy")})
    record = {
        "model_type": model.model_type,
        "embedder": pipeline.embedder_name,
        "code_version": CODE_VERSION,
        "dataset_manifest_hash": manifest_hash(items),
        "params": asdict(params),
        "metrics": summary,
        "people": len(model.labels_),
        "report_key": f"{prefix}/report.json",
        "report_html_key": f"{prefix}/report.html",
    }
    published = registry.publish_version(storage, model_name, version, files, record)
    if promotion["promote"]:
        registry.set_current(storage, model_name, version)
    return {**published, "promotion": promotion}


def _sample_faces(extracted: ExtractedFaces) -> list[tuple[str, np.ndarray]]:
    """The first face of each of the first SAMPLE_FACES people."""
    first: dict[str, int] = {}
    for i, item in enumerate(extracted.items):
        if item.label not in first and len(first) < SAMPLE_FACES:
            first[item.label] = i
    return [(label, extracted.faces.chips[i]) for label, i in sorted(first.items())]

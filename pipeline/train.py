"""Training an identity model: extract faces from a labelled dataset, fit a model, evaluate it,
publish it as a new version, and decide whether it becomes the current one."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline import registry
from pipeline.dataset import Item, describe, manifest_hash, manifest_jsonl, stratified_split
from pipeline.evaluate import NO_FACE, confusion_matrix_png, evaluate
from pipeline.faces import FacePipeline
from pipeline.models import UNKNOWN, FaceSet, IdentityModel, create_model, load_model_files, model_files
from pipeline.storage import MissingKey, Storage

CODE_VERSION = "2"

Progress = Callable[[str, int, int], None]


@dataclass
class TrainingParams:
    model_type: str = "embedding"
    model_params: dict = field(default_factory=dict)
    validation_fraction: float = 0.2
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
    kept, chips, vectors, no_face, several, errors = [], [], [], [], [], {}
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        photos = []
        for item in batch:
            try:
                photos.append((item.key, storage.get(item.key)))
            except MissingKey:
                errors[item.key] = "missing from storage"
        found_by_key = {found.key: found for found in pipeline.process(photos)}
        for item in batch:
            found = found_by_key.get(item.key)
            if found is None:
                continue
            if found.error:
                errors[item.key] = found.error
            elif not found.faces:
                no_face.append(item.key)
            else:
                if len(found.faces) > 1:
                    several.append(item.key)
                kept.append(item)
                chips.append(found.chips[found.main_face])
                vectors.append(found.embeddings[found.main_face])
        on_progress(min(start + batch_size, len(items)))
    faces = FaceSet(np.stack(chips) if chips else np.zeros((0, 150, 150, 3), np.uint8),
                    np.stack(vectors) if vectors else np.zeros((0, 128), np.float32),
                    [item.label for item in kept])
    return ExtractedFaces(kept, faces, no_face, several, errors)


def evaluate_on(model: IdentityModel, extracted: ExtractedFaces, items: list[Item]) -> dict:
    """Metrics of model on items; a photo without a usable face counts as an error."""
    found, faces = extracted.of(items)
    predicted_by_key = {item.key: p.label for item, p in zip(found, model.predict(faces))}
    truth = [item.label for item in items]
    predicted = [predicted_by_key.get(item.key, NO_FACE) for item in items]
    metrics = evaluate(truth, predicted, model.labels_)
    metrics["unknown_rate"] = sum(p == UNKNOWN for p in predicted) / max(len(predicted), 1)
    return metrics


def dataset_unchanged(storage: Storage, model_name: str, items: list[Item]) -> bool:
    """Whether the current version of model_name was trained on exactly these photos and labels."""
    current = registry.current_version(storage, model_name)
    if current is None:
        return False
    return registry.get_version(storage, model_name, current)["dataset_manifest_hash"] == manifest_hash(items)


def decide_promotion(storage: Storage, model_name: str, candidate_accuracy: float, extracted: ExtractedFaces,
                     validation: list[Item], margin: float | None) -> dict:
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
    current_accuracy = evaluate_on(incumbent, extracted, validation)["accuracy"]
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
    if validation_items is None:
        train_items, val_items, skipped_people = stratified_split(items, params.validation_fraction, params.seed)
    else:
        train_items, val_items, skipped_people = items, validation_items, []
    if len({i.label for i in train_items}) < 2:
        raise ValueError("training needs at least two people with at least two photos each")

    ordered = train_items + val_items
    extracted = extract_faces(storage, pipeline, ordered, params.batch_size,
                              on_progress=lambda done: on_progress("extracting faces", done, len(ordered)))
    extract_seconds = time.perf_counter() - started
    _, train_faces = extracted.of(train_items)
    val_found, val_faces = extracted.of(val_items)
    if not val_found:
        raise ValueError("no face was found in any validation photo")

    on_progress("fitting", len(ordered), len(ordered))
    model.fit(train_faces, val_faces)
    metrics = evaluate_on(model, extracted, val_items)

    on_progress("comparing with the current version", len(ordered), len(ordered))
    promotion = decide_promotion(storage, model_name, metrics["accuracy"], extracted, val_items, promotion_margin)

    on_progress("publishing", len(ordered), len(ordered))
    version = registry.new_version_id()
    prefix = registry.version_prefix(model_name, version)
    report = {
        "dataset": {**describe(items), "skipped_people_with_one_photo": skipped_people,
                    "training_photos": len(train_items), "validation_photos": len(val_items),
                    "no_face": extracted.no_face, "several_faces": extracted.several_faces,
                    "errors": extracted.errors},
        "evaluation": metrics,
        "unknown_threshold": model.threshold_,
        "training_curves": model.history_,
        "promotion": promotion,
        "timings_s": {"extracting_faces": round(extract_seconds, 1),
                      "total": round(time.perf_counter() - started, 1)},
    }
    files = {
        **model_files(model),
        "report.json": json.dumps(report, indent=2).encode(),
        "confusion_matrix.json": json.dumps(metrics["confusion_matrix"]).encode(),
        "confusion_matrix.png": confusion_matrix_png(metrics["confusion_matrix"]),
        "manifest.jsonl": manifest_jsonl(items),
        "validation.jsonl": manifest_jsonl(val_items),
    }
    summary = {k: metrics[k] for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "images")}
    record = {
        "model_type": model.model_type,
        "embedder": pipeline.embedder_name,
        "code_version": CODE_VERSION,
        "dataset_manifest_hash": manifest_hash(items),
        "params": asdict(params),
        "metrics": summary,
        "people": len(model.labels_),
        "report_key": f"{prefix}/report.json",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    registry.publish_version(storage, model_name, version, files, record)
    if promotion["promote"]:
        registry.set_current(storage, model_name, version)
    return {**registry.get_version(storage, model_name, version), "promotion": promotion}

"""Training an identity model: embed a labelled dataset, fit the classifier, evaluate, publish a version."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline import registry
from pipeline.classifier import UNKNOWN, EmbeddingClassifier, HeadParams, classifier_files
from pipeline.dataset import Item, describe, manifest_hash, manifest_jsonl, stratified_split
from pipeline.evaluate import NO_FACE, confusion_matrix_png, evaluate
from pipeline.faces import FacePipeline
from pipeline.storage import MissingKey, Storage

CODE_VERSION = "1"


@dataclass
class TrainingParams:
    validation_fraction: float = 0.2
    batch_size: int = 32
    seed: int = 0
    head: HeadParams = field(default_factory=HeadParams)


@dataclass
class EmbeddedPhotos:
    """The embedding of the main face of each usable photo, and what happened to the others."""

    items: list[Item]
    embeddings: np.ndarray
    no_face: list[str]
    several_faces: list[str]
    errors: dict[str, str]


def embed_items(storage: Storage, faces: FacePipeline, items: list[Item], batch_size: int,
                on_progress: Callable[[int], None] = lambda done: None) -> EmbeddedPhotos:
    """Embed the subject's face in every photo, batch by batch; photos without a usable face are listed."""
    kept, vectors, no_face, several, errors = [], [], [], [], {}
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        photos = []
        for item in batch:
            try:
                photos.append((item.key, storage.get(item.key)))
            except MissingKey:
                photos.append((item.key, b""))
                errors[item.key] = "missing from storage"
        for item, found in zip(batch, faces.process(photos)):
            if item.key in errors:
                continue
            if found.error:
                errors[item.key] = found.error
            elif not found.faces:
                no_face.append(item.key)
            else:
                if len(found.faces) > 1:
                    several.append(item.key)
                kept.append(item)
                vectors.append(found.embeddings[found.main_face])
        on_progress(min(start + batch_size, len(items)))
    embeddings = np.stack(vectors) if vectors else np.zeros((0, 128), np.float32)
    return EmbeddedPhotos(kept, embeddings, no_face, several, errors)


def train_model(storage: Storage, faces: FacePipeline, items: list[Item], model_name: str,
                params: TrainingParams | None = None,
                on_progress: Callable[[str, int, int], None] = lambda stage, done, total: None) -> dict:
    """Train, evaluate and publish a new version of model_name from labelled items.

    on_progress(stage, done, total) is called as photos are embedded and as each later stage starts.

    Returns the version record (also written as version.json), holding the metrics and file keys.
    """
    params = params or TrainingParams()
    registry.check_model_name(model_name)
    started = time.perf_counter()
    train_items, val_items, skipped_people = stratified_split(items, params.validation_fraction, params.seed)
    if len({i.label for i in train_items}) < 2:
        raise ValueError("training needs at least two people with at least two photos each")

    ordered = train_items + val_items
    embedded = embed_items(storage, faces, ordered, params.batch_size,
                           on_progress=lambda done: on_progress("embedding", done, len(ordered)))
    embed_seconds = time.perf_counter() - started
    train_keys = {i.key for i in train_items}
    is_train = np.array([i.key in train_keys for i in embedded.items], dtype=bool)
    x_train, x_val = embedded.embeddings[is_train], embedded.embeddings[~is_train]
    y_train = [i.label for i, t in zip(embedded.items, is_train) if t]
    y_val = [i.label for i, t in zip(embedded.items, is_train) if not t]
    if len(set(y_val)) == 0:
        raise ValueError("no face was found in any validation photo")

    on_progress("fitting", len(ordered), len(ordered))
    classifier = EmbeddingClassifier(params.head).fit(x_train, y_train, x_val, y_val)

    # Evaluate on every validation photo: one without a usable face counts as an error.
    predicted_by_key = {i.key: p.label for i, p in zip(
        [i for i, t in zip(embedded.items, is_train) if not t], classifier.predict(x_val))}
    truth = [i.label for i in val_items]
    predicted = [predicted_by_key.get(i.key, NO_FACE) for i in val_items]
    metrics = evaluate(truth, predicted, classifier.labels_)

    on_progress("publishing", len(ordered), len(ordered))
    version = registry.new_version_id()
    prefix = registry.version_prefix(model_name, version)
    report = {
        "dataset": {**describe(items), "skipped_people_with_one_photo": skipped_people,
                    "training_photos": len(train_items), "validation_photos": len(val_items),
                    "no_face": embedded.no_face, "several_faces": embedded.several_faces,
                    "errors": embedded.errors},
        "evaluation": metrics,
        "unknown_threshold": classifier.threshold_,
        "validation_unknown_rate": sum(p == UNKNOWN for p in predicted) / max(len(predicted), 1),
        "training_curves": classifier.history_,
        "timings_s": {"embedding": round(embed_seconds, 1), "total": round(time.perf_counter() - started, 1)},
    }
    files = {
        **classifier_files(classifier),
        "report.json": json.dumps(report, indent=2).encode(),
        "confusion_matrix.json": json.dumps(metrics["confusion_matrix"]).encode(),
        "confusion_matrix.png": confusion_matrix_png(metrics["confusion_matrix"]),
        "manifest.jsonl": manifest_jsonl(items),
        "validation.jsonl": manifest_jsonl(val_items),
    }
    summary = {k: metrics[k] for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "images")}
    record = {
        "model_type": "embedding",
        "embedder": faces.embedder_name,
        "code_version": CODE_VERSION,
        "dataset_manifest_hash": manifest_hash(items),
        "params": asdict(params),
        "metrics": summary,
        "people": len(classifier.labels_),
        "report_key": f"{prefix}/report.json",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    registry.publish_version(storage, model_name, version, files, record)
    registry.set_current(storage, model_name, version)
    return registry.get_version(storage, model_name, version)

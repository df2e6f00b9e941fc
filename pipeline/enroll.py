"""Enrolment: add or update people in a centroid model without retraining anyone else.

An enrolment version is measured where it changed: each enrolled photo is named against the whole
gallery with its person's centroid made from their other photos (leave one photo out), so no photo
is scored against a centroid it is part of. The figures of everyone else are the base's, carried
over as `inherited_metrics` with the version that measured them; they are not measured again.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from pipeline import registry
from pipeline.dataset import Item, manifest_hash, manifest_jsonl, read_manifest
from pipeline.evaluate import (
    INTERVAL_METHOD,
    NO_FACE,
    TOP_K,
    confusion_matrix_png,
    evaluate,
    top_k_hits,
    wilson_interval,
)
from pipeline.faces import FacePipeline
from pipeline.models import IdentityModel, load_model_files, model_files
from pipeline.report import explore, misclassified_png, render_html
from pipeline.storage import Storage
from pipeline.train import (
    CODE_VERSION,
    MISCLASSIFIED_SHOWN,
    SUMMARY_METRICS,
    ExtractedFaces,
    extract_faces,
    sample_faces,
)

AVERAGES = [f"{average}_{measure}" for average in ("macro", "weighted") for measure in ("precision", "recall", "f1")]
# Rounds of merge and publish lost to concurrent changes of the model before giving up.
ENROLL_ATTEMPTS = 5


def enroll_people(storage: Storage, pipeline: FacePipeline, items: list[Item], model_name: str,
                  on_progress: Callable[[str, int, int], None] = lambda stage, done, total: None,
                  min_quality: float = 0.0) -> dict:
    """Publish a new current version of a centroid model with the people in items added, or
    replaced by these photos if already enrolled, with a report (report.json, report.html) of the
    enrolled people measured leave-one-photo-out against the whole gallery. Returns the version
    record, with those figures as `metrics`, the base's figures as `inherited_metrics` (with their
    source version) and the photo counts (`photos`: total, missing, unreadable, no_face, used, low_quality).
    Faces whose quality score (pipeline.quality) is below min_quality are not enrolled: their photos are
    counted as low_quality (0, the default, enrols every face).

    The faces are extracted once. Then the people are merged into the current version and the
    result published and made current only if that version is still current (compare-and-swap on
    the pointer); if someone else changed the model meanwhile (another enrolment), the merge is done
    again on their version, so neither enrolment loses the other's people.

    on_progress(stage, done, total) is called after each batch of photos and once with stage
    "publishing" just before the first write to storage; it may raise to stop the enrolment, and
    after "publishing" it is not called again.
    """
    base_version, model = _centroid_model(storage, model_name)
    extracted = extract_faces(storage, pipeline, items,
                              on_progress=lambda done: on_progress("extracting faces", done, len(items)))
    extracted.check_mostly_readable()
    extracted = extracted.at_quality(min_quality)
    if not extracted.items:
        raise ValueError(f"no face was found at min_quality {min_quality} in any of the photos to enrol")

    for attempt in range(ENROLL_ATTEMPTS):
        if attempt:
            base_version, model = _centroid_model(storage, model_name)
        version, files, record = _merged_version(storage, pipeline, model_name, base_version, model, items,
                                                 extracted)
        if attempt == 0:
            on_progress("publishing", len(items), len(items))  # the last moment a cancel may stop it
        published = registry.publish_version(storage, model_name, version, files, record)
        try:
            registry.set_current(storage, model_name, version, expected=base_version)
            return published
        except registry.PointerMoved:
            continue  # another change won: merge again on top of it (this version stays, never current)
    raise registry.PointerMoved(f"model {model_name} changed {ENROLL_ATTEMPTS} times while enrolling; try again")


def _centroid_model(storage: Storage, model_name: str) -> tuple[str, IdentityModel]:
    """The current version of model_name and its model, which must be a centroid model."""
    version = registry.resolve_version(storage, model_name)
    model = load_model_files(storage, registry.version_prefix(model_name, version))
    if model.model_type != "centroid":
        raise ValueError(f"enrolment needs a centroid model; {model_name} version {version} "
                         f"is a {model.model_type} model")
    return version, model


def _merged_version(storage: Storage, pipeline: FacePipeline, model_name: str, base_version: str,
                    model: IdentityModel, items: list[Item],
                    extracted: ExtractedFaces) -> tuple[str, dict[str, bytes], dict]:
    """A new version's id, files and record: base_version's model with the people of items enrolled
    (their faces extracted)."""
    people = model.enroll(extracted.faces)
    base_prefix = registry.version_prefix(model_name, base_version)
    # The new version's dataset: the base's photos of everyone else, plus the enrolled photos.
    base_items = read_manifest(storage, f"{base_prefix}/manifest.jsonl")
    dataset = [item for item in base_items if item.label not in people] + extracted.items
    # What it was fitted on: the base's training photos of everyone else (all its photos, for a base
    # written before training photos were recorded), plus the enrolled photos.
    fitted_key = f"{base_prefix}/training.jsonl"
    base_fitted = read_manifest(storage, fitted_key) if storage.exists(fitted_key) else base_items
    fitted = [item for item in base_fitted if item.label not in people] + extracted.items
    base = registry.get_version(storage, model_name, base_version)
    version = registry.new_version_id()
    prefix = registry.version_prefix(model_name, version)
    evaluation, misclassified = leave_one_out(model, items, extracted)
    inherited = _inherited_metrics(storage, model_name, base_version, base)
    report = {
        "model": {"name": model_name, "type": model.model_type, "version": version},
        "evaluated_on": f"the {evaluation['images']} photos of the {len(evaluation['per_person'])} enrolled people "
                        f"with two photos or more, each named against the whole gallery of {len(model.labels_)} "
                        "people with its own person's centroid made from their other photos (leave one photo out)",
        "enrolled": people, "base_version": base_version,
        "people_not_evaluated": sorted(set(people) - {p["person"] for p in evaluation["per_person"]}),
        "evaluation": evaluation, "inherited_metrics": inherited, "unknown_threshold": model.threshold_,
        "photos": extracted.photo_counts(), "params": base["params"],
    }
    dataset_stats, figures = explore(items, extracted.no_face, extracted.several_faces, extracted.errors,
                                     sample_faces(extracted))
    report["dataset"] = dataset_stats
    if evaluation["images"]:
        figures["confusion_matrix"] = confusion_matrix_png(evaluation["confusion_matrix"])
    if misclassified:
        figures["misclassified"] = misclassified_png(misclassified[:MISCLASSIFIED_SHOWN])
    files = {**model_files(model), "manifest.jsonl": manifest_jsonl(dataset), "training.jsonl": manifest_jsonl(fitted),
             "report.json": json.dumps(report, indent=2).encode(), "report.html": render_html(report, figures).encode(),
             **{f"figures/{name}.png": png for name, png in figures.items()}}
    if storage.exists(f"{base_prefix}/validation.jsonl"):  # the threshold kept was tuned on these
        files["validation.jsonl"] = storage.get(f"{base_prefix}/validation.jsonl")
    metrics = {"evaluated_on": "leave-one-photo-out over the enrolled people's photos against the whole gallery",
               **{k: evaluation[k] for k in SUMMARY_METRICS}, "people_not_evaluated": report["people_not_evaluated"]}
    record = {
        "model_type": model.model_type, "embedder": pipeline.embedder_name, "code_version": CODE_VERSION,
        "dataset_manifest_hash": manifest_hash(dataset), "params": base["params"],
        "metrics": metrics, "inherited_metrics": inherited, "people": len(model.labels_),
        "base_version": base_version, "enrolled": people, "photos": report["photos"],
        "report_key": f"{prefix}/report.json", "report_html_key": f"{prefix}/report.html",
    }
    return version, files, record


def leave_one_out(model: IdentityModel, items: list[Item],
                  extracted: ExtractedFaces) -> tuple[dict, list[tuple[np.ndarray, str, str]]]:
    """evaluate()'s figures of the enrolled people with two photos or more, each photo named against
    the whole gallery with its person's centroid made from their other photos; a photo of theirs with
    no face found counts as an error. Per-person figures, macro averages and the confusion matrix's
    rows cover the evaluated people only; top-5 ranks each photo among the whole gallery. Also the
    misclassified faces (chip, truth, answer)."""
    faces = extracted.faces
    scores = model.leave_one_out_scores(faces)
    measurable = ~np.isnan(scores).any(axis=1)
    people = sorted({label for label, keep in zip(faces.labels, measurable) if keep})
    found = [item for item, keep in zip(extracted.items, measurable) if keep]
    predictions = model.predictions(scores[measurable], scores[measurable])
    no_face = set(extracted.no_face)
    faceless = [item for item in items if item.key in no_face and item.label in people]
    answered = {item.key: p.label for item, p in zip(found, predictions)}
    items = found + faceless
    if not items:  # nobody enrolled with two photos or more: nothing to measure
        return {"images": 0, "accuracy": None, "accuracy_interval": None, "top5_accuracy": None,
                "top5_accuracy_interval": None, "interval_method": INTERVAL_METHOD,
                **dict.fromkeys(AVERAGES), "rejected_as_unknown_or_no_face": 0, "per_person": [],
                "confusion_matrix": {"rows": [], "columns": [], "counts": []}}, []
    truth = [item.label for item in items]
    metrics = evaluate(truth, [answered.get(item.key, NO_FACE) for item in items], people)
    gallery_scores = np.vstack([scores[measurable], np.full((len(faceless), len(model.labels_)), np.nan)])
    hits = top_k_hits(truth, model.labels_, gallery_scores, TOP_K)
    metrics.update(top5_accuracy=hits / max(len(items), 1), top5_accuracy_interval=wilson_interval(hits, len(items)))
    chips = faces.chips[measurable]
    wrong = [(chip, item.label, p.label) for chip, item, p in zip(chips, found, predictions) if p.label != item.label]
    return metrics, wrong


def _inherited_metrics(storage: Storage, model_name: str, base_version: str, base: dict) -> dict:
    """The figures of the people this enrolment did not touch: those of the last trained version
    before it, with that version's id. Not measured again: enrolling someone can only take answers
    away from the others, which their figures do not show."""
    if "inherited_metrics" in base:
        return base["inherited_metrics"]
    source, record = base_version, base
    while "enrolled" in record:  # an enrolment written before inherited figures were marked: its base's
        source = record["base_version"]
        record = registry.get_version(storage, model_name, source)
    return {"source_version": source, "metrics": record["metrics"],
            "note": f"measured by version {source} on its own photos of the people it was trained on, before "
                    "any later enrolment; not measured again for this version"}

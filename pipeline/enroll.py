"""Enrolment: add or update people in a centroid model without retraining anyone else."""

from __future__ import annotations

import json
from collections.abc import Callable

from pipeline import registry
from pipeline.dataset import Item, manifest_hash, manifest_jsonl, read_manifest
from pipeline.faces import FacePipeline
from pipeline.models import IdentityModel, load_model_files, model_files
from pipeline.storage import Storage
from pipeline.train import CODE_VERSION, ExtractedFaces, extract_faces

# Rounds of merge and publish lost to concurrent changes of the model before giving up.
ENROLL_ATTEMPTS = 5


def enroll_people(storage: Storage, pipeline: FacePipeline, items: list[Item], model_name: str,
                  on_progress: Callable[[str, int, int], None] = lambda stage, done, total: None) -> dict:
    """Publish a new current version of a centroid model with the people in items added, or
    replaced by these photos if already enrolled. Returns the version record, with the photo
    counts (`photos`: total, missing, unreadable, no_face, used).

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
    if not extracted.items:
        raise ValueError("no face was found in any of the photos to enrol")

    for attempt in range(ENROLL_ATTEMPTS):
        if attempt:
            base_version, model = _centroid_model(storage, model_name)
        version, files, record = _merged_version(storage, pipeline, model_name, base_version, model, extracted)
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
                    model: IdentityModel, extracted: ExtractedFaces) -> tuple[str, dict[str, bytes], dict]:
    """A new version's id, files and record: base_version's model with the extracted people enrolled."""
    people = model.enroll(extracted.faces)
    base_prefix = registry.version_prefix(model_name, base_version)
    # The new version's dataset: the base's photos of everyone else, plus the enrolled photos.
    base_items = read_manifest(storage, f"{base_prefix}/manifest.jsonl")
    dataset = [item for item in base_items if item.label not in people] + extracted.items
    base = registry.get_version(storage, model_name, base_version)
    version = registry.new_version_id()
    photos = extracted.photo_counts()
    report = {"enrolled": people, "base_version": base_version, "photos": photos,
              "no_face": extracted.no_face, "several_faces": extracted.several_faces, "errors": extracted.errors}
    files = {**model_files(model), "manifest.jsonl": manifest_jsonl(dataset),
             "report.json": json.dumps(report, indent=2).encode()}
    record = {
        "model_type": model.model_type, "embedder": pipeline.embedder_name, "code_version": CODE_VERSION,
        "dataset_manifest_hash": manifest_hash(dataset), "params": base["params"],
        "metrics": base["metrics"], "people": len(model.labels_), "base_version": base_version,
        "enrolled": people, "photos": photos,
        "report_key": f"{registry.version_prefix(model_name, version)}/report.json",
    }
    return version, files, record

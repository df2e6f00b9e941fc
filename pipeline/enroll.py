"""Enrolment: add or update people in a centroid model without retraining anyone else."""

from __future__ import annotations

import json
from collections.abc import Callable

from pipeline import registry
from pipeline.dataset import Item, manifest_hash, manifest_jsonl, read_manifest
from pipeline.faces import FacePipeline
from pipeline.models import load_model_files, model_files
from pipeline.storage import Storage
from pipeline.train import CODE_VERSION, extract_faces


def enroll_people(storage: Storage, pipeline: FacePipeline, items: list[Item], model_name: str,
                  on_progress: Callable[[int, int], None] = lambda done, total: None) -> dict:
    """Publish a new current version of a centroid model with the people in items added, or
    replaced by these photos if already enrolled. Returns the version record."""
    base_version = registry.resolve_version(storage, model_name)
    base_prefix = registry.version_prefix(model_name, base_version)
    model = load_model_files(storage, base_prefix)
    if model.model_type != "centroid":
        raise ValueError(f"enrolment needs a centroid model; {model_name} version {base_version} "
                         f"is a {model.model_type} model")
    extracted = extract_faces(storage, pipeline, items, on_progress=lambda done: on_progress(done, len(items)))
    if not extracted.items:
        raise ValueError("no face was found in any of the photos to enrol")
    people = model.enroll(extracted.faces)

    # The new version's dataset: the base's photos of everyone else, plus the enrolled photos.
    base_items = read_manifest(storage, f"{base_prefix}/manifest.jsonl")
    dataset = [item for item in base_items if item.label not in people] + extracted.items
    base = registry.get_version(storage, model_name, base_version)
    version = registry.new_version_id()
    report = {"enrolled": people, "base_version": base_version, "photos": len(items),
              "no_face": extracted.no_face, "several_faces": extracted.several_faces, "errors": extracted.errors}
    files = {**model_files(model), "manifest.jsonl": manifest_jsonl(dataset),
             "report.json": json.dumps(report, indent=2).encode()}
    record = {
        "model_type": model.model_type, "embedder": pipeline.embedder_name, "code_version": CODE_VERSION,
        "dataset_manifest_hash": manifest_hash(dataset), "params": base["params"],
        "metrics": base["metrics"], "people": len(model.labels_), "base_version": base_version,
        "enrolled": people, "report_key": f"{registry.version_prefix(model_name, version)}/report.json",
    }
    published = registry.publish_version(storage, model_name, version, files, record)
    registry.set_current(storage, model_name, version)
    return published
